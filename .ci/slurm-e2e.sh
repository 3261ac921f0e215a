#!/usr/bin/env bash
# End-to-end check on a real SLURM cluster (issue 6).
#
# Runs the demo campaign, shrunk by tests/configs/slurm_ci.yaml, twice with the same seeds, side by side:
#   locally:          snakemake --cores 2                   -> results/slurm_ci_local/
#   through SLURM:    snakemake --profile profiles/ci-slurm -> results/slurm_ci_slurm/
# the latter on a one-node cluster brought up by ../shared/slurm/slurm-localhost.sh. Then it checks
# that every non-local job ran as a SLURM job (the GPU rules in the gpu partition with a GPU) and that
# the outputs are equal (the comparison's docstring below says what "equal" means for each file).
# The cluster is torn down on every exit path: success, failure, the global timeout, Ctrl-C, SIGTERM.
#
#   bash .ci/slurm-e2e.sh             # as root (the cluster's daemons); needs ../shared/slurm
#
# Environment:
#   SLURM_E2E_TIMEOUT   seconds for the whole script (default 1500); at the deadline the running
#                       snakemake gets SIGINT, which cancels its SLURM jobs (SIGTERM would wait).
#   SLURM_E2E_OUT       folder for the logs and summary.json (default results/slurm-e2e)
#   SLURM_LOCALHOST     the cluster script (default ../shared/slurm/slurm-localhost.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLUSTER=${SLURM_LOCALHOST:-$ROOT/../shared/slurm/slurm-localhost.sh}
OUT=${SLURM_E2E_OUT:-results/slurm-e2e}
DEADLINE=$((SECONDS + ${SLURM_E2E_TIMEOUT:-1500}))
CONFIGS=(config/config.yaml tests/configs/slurm_ci.yaml)  # the demo, then the shrink on top
LOCAL=slurm_ci_local    # campaign names: results/<name>/
REMOTE=slurm_ci_slurm

log() { echo "slurm-e2e [$(date +%T)] $*"; }
die() { echo "slurm-e2e: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it starts munged, slurmctld and slurmd)"
[ -f "$CLUSTER" ] || die "$CLUSTER not found"
# SLURM jobs inherit this environment: the project's venv must be first on PATH for `lyra`.
[ -x .venv/bin/snakemake ] && export PATH="$ROOT/.venv/bin:$PATH"
command -v snakemake >/dev/null && command -v lyra >/dev/null || die "snakemake and lyra must be on PATH"
mkdir -p "$OUT"

# One run per machine: the cluster and results/slurm_ci_* are machine-wide, and a second run (another
# CI session, a developer) would delete this one's results and tear down its cluster. So a second
# run waits here for the first. Children get the lock's descriptor closed (9>&-): a daemon started by
# `up` must not hold the lock after this script ends.
LOCK=/tmp/lyra-slurm-e2e.lock
exec 9>"$LOCK"
if ! flock -n 9; then
  log "another .ci/slurm-e2e.sh holds $LOCK; waiting for it"
  flock -w $((DEADLINE - SECONDS)) 9 || die "$LOCK still held at the global timeout"
fi

# --- teardown: always, whatever happened -------------------------------------------------------
declare -A PID T0 SECS  # per step: its `timeout` process, start (epoch seconds), duration
teardown() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PID[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "interrupted: SIGINT to the running steps (snakemake cancels its SLURM jobs)"
      kill -INT "$pid" 2>/dev/null || true  # `timeout` passes it on to snakemake
    fi
  done
  for pid in "${PID[@]}"; do
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  done
  if command -v squeue >/dev/null && scontrol ping >/dev/null 2>&1; then
    squeue -h -t all -o "%i %k %T" >"$OUT/jobs-at-exit.txt" 2>&1 || true
    # Whatever is still queued or running is ours (the cluster is this script's): cancel it, or
    # its job steps would outlive slurmd and keep writing into results/.
    local left
    left=$(squeue -h -t PD,R,CG -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${left// /}" ]; then
      log "cancelling leftover SLURM jobs: $left"
      # shellcheck disable=SC2086
      scancel $left || true
      for _ in $(seq 30); do [ -z "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ] && break; sleep 1; done
    fi
  fi
  log "tearing the cluster down"
  local daemons  # the pid files slurm-localhost.sh starts its daemons with
  daemons=$(cat /run/slurm/slurmctld.pid /run/slurm/slurmd.pid /run/munge/munged.pid 2>/dev/null || true)
  bash "$CLUSTER" down 9>&- || log "warning: cluster teardown reported an error"
  for pid in $daemons; do  # `down` only signals them; wait until they are gone (zombies count as gone)
    for _ in $(seq 30); do [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" =~ ^[^Z] ]] || break; sleep 1; done
  done
  log "exit $rc (total ${SECONDS}s)"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: run CMD in the background with the time left before the deadline, output to
# $OUT/NAME.log. `timeout -s INT` ends it at the deadline the way Ctrl-C would. In the background,
# a signal to this script is handled at once (bash defers traps while a foreground command runs).
start() {
  local name=$1; shift
  local left=$((DEADLINE - SECONDS))
  ((left > 0)) || die "global timeout reached before step $name"
  log "$name: $* (log: $OUT/$name.log, ${left}s left)"
  timeout -s INT -k 60 "$left" "$@" >"$OUT/$name.log" 2>&1 9>&- &
  PID[$name]=$!
  T0[$name]=$(date +%s)
}

# finish NAME: wait for the step; on failure show the end of its log and return its exit status.
finish() {
  local name=$1 rc=0
  wait "${PID[$name]}" || rc=$?
  unset "PID[$name]"
  SECS[$name]=$(($(stat -c %Y "$OUT/$name.log") - T0[$name]))  # its last output, not when we waited
  if ((rc != 0)); then
    log "$name: FAILED with exit $rc after ${SECS[$name]}s$( ((rc == 124)) && echo ' (global timeout)')"
    tail -n 40 "$OUT/$name.log" >&2
    return "$rc"
  fi
  log "$name: done in ${SECS[$name]}s"
}

show_failed_job_logs() {  # the rule log and SLURM log of each failed job ("Error in rule" blocks)
  local f
  for f in $(awk '/^Error in rule/ {e = 1} e && /^    log:/ {print; e = 0}' "$OUT/slurm.log" \
             | grep -oE "[^ ,]+\.log" | sort -u); do
    [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; } >&2
  done
}

rm -rf "results/$LOCAL" "results/$REMOTE" "$OUT"/*.log "$OUT/summary.json"

# 1. The reference run on this machine, and meanwhile the cluster and the same campaign through it.
#    They overlap on purpose: the SLURM run mostly waits (sbatch, squeue polls, job start-up), so
#    together they take little more than the SLURM run alone. Timing does not change any output:
#    both runs use the same seeds and thread counts.
start local snakemake --cores 2 --configfile "${CONFIGS[@]}" --config campaign=$LOCAL
start cluster_up bash "$CLUSTER" up
finish cluster_up
start slurm snakemake --profile profiles/ci-slurm --configfile "${CONFIGS[@]}" --config campaign=$REMOTE
finish slurm || { show_failed_job_logs; exit 1; }
finish local

# 2. which SLURM jobs ran: the run's job name is printed by the plugin; squeue keeps finished jobs
#    for an hour on this cluster (MinJobAge=3600).
RUN_ID=$(grep -oE "SLURM run ID: [A-Za-z0-9_-]+" "$OUT/slurm.log" | head -1 | cut -d' ' -f4)
[ -n "$RUN_ID" ] || die "no 'SLURM run ID' in $OUT/slurm.log: did the run use the slurm executor?"
squeue -h -t all -n "$RUN_ID" -O "JobID:12,Comment:80,Partition:12,State:14,tres-per-job:30,tres-per-node:30" \
  >"$OUT/jobs.txt"
log "SLURM jobs of run $RUN_ID:"; cat "$OUT/jobs.txt"

# 3. compare
t0=$SECONDS
python - "$OUT" "results/$LOCAL" "results/$REMOTE" \
  "{\"local\": ${SECS[local]}, \"cluster_up\": ${SECS[cluster_up]}, \"slurm\": ${SECS[slurm]}, \"elapsed_before_compare\": $SECONDS}" <<'PY'
"""Is the SLURM run the local run? What must be equal, and how:

- ranking.csv and ranking.fasta: byte for byte. They are what goes to the lab, and a CPU rerun of
  the same config must reproduce them exactly (issue 6); a job on a cluster node is such a rerun.
- dataset.parquet: the same table (schema, every value, row order) and the same `lyra` metadata.
  Not the bytes: the file also holds writer details that are not part of the contract.
- metrics.json and tune/best.json (the chosen parameters): the same keys and strings (the campaign
  name, the one intended difference, replaced by <campaign> in paths and study names); numbers within
  1e-9 relative. The runs use the same seeds, code and thread count (OMP_NUM_THREADS = threads: 2 in
  both), so the floats should agree to the last bit; the tolerance only forgives the printing of a
  float, while a real difference (another seed, split or model) moves metrics at 1e-3 or more.
  best.json's objective value is compared too: a trial's parameters and training seed depend on
  its number, not on which worker job ran it (lyra/tune.py). Wall times are left out.
- models/seed<k>.pt: every weight tensor exactly equal (the ensemble behind the ranking), and
  library/scores.parquet: every per-model score of every library variant exactly equal (its
  metadata names the checkpoint paths, which contain the campaign name, so only the table counts).
- every non-local rule ran as a COMPLETED SLURM job; the GPU rules in partition gpu with a GPU.
"""
import json
import math
import re
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

started = time.monotonic()
out, local, remote, secs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
GPU_RULES = {"tune_worker", "train", "score_shard"}
LOCAL_RULES = {"all", "stage_config"}
# Keys that describe the run, not its result: wall times, the tuning trial's own score (see above),
# and the Optuna study name, a hash of the tune config that includes the campaign name.
VOLATILE = {"study_name", "seconds", "wall_s", "duration_s", "started", "finished", "host"}
problems, checks = [], {}


def same_numbers(a, b, where):
    """Recursively equal; numbers within 1e-9 relative. Returns the largest absolute difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise AssertionError(f"{where}: keys differ: {sorted(a.keys() ^ b.keys())}")
        return max([same_numbers(a[k], b[k], f"{where}.{k}") for k in a if k not in VOLATILE], default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise AssertionError(f"{where}: lengths {len(a)} != {len(b)}")
        return max([same_numbers(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            raise AssertionError(f"{where}: {a!r} != {b!r}")
        return abs(a - b)
    if isinstance(a, str) and isinstance(b, str):
        a, b = (s.replace(local.name, "<campaign>").replace(remote.name, "<campaign>") for s in (a, b))
    if a != b:
        raise AssertionError(f"{where}: {a!r} != {b!r}")
    return 0.0


def check(name, fn):
    try:
        checks[name] = fn()
    except (AssertionError, OSError, KeyError, ValueError) as e:
        checks[name] = f"FAILED: {e}"
        problems.append(f"{name}: {e}")


def bytes_equal(rel):
    a, b = (local / rel).read_bytes(), (remote / rel).read_bytes()
    assert a == b, f"{rel} differs ({len(a)} vs {len(b)} bytes)"
    return "identical bytes"


def dataset():
    a, b = pq.read_table(local / "data/dataset.parquet"), pq.read_table(remote / "data/dataset.parquet")
    assert a.schema.remove_metadata() == b.schema.remove_metadata(), "schemas differ"
    assert a.num_rows == b.num_rows, f"{a.num_rows} vs {b.num_rows} rows"
    assert a.equals(b), "values differ"
    meta = lambda t: json.loads((t.schema.metadata or {}).get(b"lyra", b"{}"))
    same_numbers(meta(a), meta(b), "metadata")
    return f"same table ({a.num_rows} rows) and metadata"


def scores():
    a, b = pq.read_table(local / "library/scores.parquet"), pq.read_table(remote / "library/scores.parquet")
    assert a.equals(b), "the library's scores differ"
    return f"same scores for all {a.num_rows} library variants"


def json_numbers(rel):
    def run():
        diff = same_numbers(json.loads((local / rel).read_text()), json.loads((remote / rel).read_text()), rel)
        return f"equal (max |diff| {diff:.3g})"
    return run


def models():
    paths = sorted((local / "models").glob("seed*.pt"))
    assert paths, "no models"
    for p in paths:
        a = torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        b = torch.load(remote / "models" / p.name, map_location="cpu", weights_only=True)["state_dict"]
        assert a.keys() == b.keys(), f"{p.name}: parameter names differ"
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        assert not bad, f"{p.name}: tensors differ: {bad[:5]}"
    return f"{len(paths)} models, every tensor equal"


def slurm_jobs():
    """Each job row: id, comment rule_<rule>[_wildcards_...], partition, state, tres per job/node."""
    jobs = []
    for line in (out / "jobs.txt").read_text().splitlines():
        f = line.split()
        rule = re.sub(r"_wildcards_.*$", "", f[1]).removeprefix("rule_")
        jobs.append({"id": f[0], "rule": rule, "comment": f[1], "partition": f[2], "state": f[3],
                     "tres": " ".join(f[4:])})
    # the jobs the run scheduled: the "Job stats" table snakemake prints first
    text = (out / "slurm.log").read_text()
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    expected = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    expected = {r: n for r, n in expected.items() if r not in LOCAL_RULES}
    ran = {r: sum(1 for j in jobs if j["rule"] == r and j["state"] == "COMPLETED") for r in expected}
    assert ran == expected, f"completed SLURM jobs per rule {ran}, expected {expected}"
    for j in jobs:
        assert j["state"] == "COMPLETED", f"job {j['id']} ({j['comment']}) is {j['state']}"
        if j["rule"] in GPU_RULES:
            assert j["partition"] == "gpu" and "gpu" in j["tres"], f"GPU job {j['comment']}: {j}"
        else:
            assert j["partition"] == "debug" and "gpu" not in j["tres"], f"CPU job {j['comment']}: {j}"
    checks["jobs"] = jobs
    return f"{len(jobs)} SLURM jobs, all COMPLETED: {expected}"


check("slurm_jobs", slurm_jobs)
check("ranking.csv", lambda: bytes_equal("ranking.csv"))
check("ranking.fasta", lambda: bytes_equal("ranking.fasta"))
check("dataset.parquet", dataset)
check("scores.parquet", scores)
check("metrics.json", json_numbers("models/metrics.json"))
check("best.json", json_numbers("tune/best.json"))
check("models", models)
secs["compare"] = round(time.monotonic() - started, 1)
summary = {"ok": not problems, "problems": problems, "seconds": secs, "checks": checks}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
for name, result in checks.items():
    if name != "jobs":
        print(f"  {name}: {result}")
sys.exit(1 if problems else 0)
PY
log "compare: done in $((SECONDS - t0))s"
log "OK: the SLURM run equals the local run (summary: $OUT/summary.json)"
