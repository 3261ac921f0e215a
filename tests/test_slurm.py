"""The SLURM profiles, and the campaign end to end on a real one-node SLURM cluster.

The fast tests check the shipped profiles against the workflow with dry runs (no cluster needed).
The slow test runs .ci/slurm-e2e.sh: it brings up ../shared/slurm/slurm-localhost.sh (root only),
runs the shrunk demo locally and through SLURM, compares the outputs and tears the cluster down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER_SCRIPT = ROOT.parent / "shared" / "slurm" / "slurm-localhost.sh"
GPU_RULES = {"tune_worker", "train", "score_shard"}
CPU_RULES = {"preprocess", "tune_collect", "evaluate", "gather_scores", "rank", "report"}
CI_CONFIGS = ["config/config.yaml", "tests/configs/slurm_ci.yaml"]


def env_with_venv() -> dict:
    """SLURM jobs and rule shells inherit PATH: the venv running the tests must come first."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def dry_run_resources(profile: str, target: str = "all", configfiles: tuple = ()) -> dict[str, list[dict[str, str]]]:
    """rule -> the `resources:` of each of its jobs, from `snakemake --profile <profile> -n` at the root."""
    proc = subprocess.run(
        [str(BIN / "snakemake"), target, "--profile", profile, "-n", "--configfile", *CI_CONFIGS, *configfiles,
         "--config", "campaign=slurm_dry_run"],
        cwd=ROOT, capture_output=True, text=True, env=env_with_venv(), timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", text, re.M | re.S):
        res = re.search(r"^\s+resources: (.*)$", m[2], re.M)
        values = dict(kv.split("=", 1) for kv in res[1].split(", ")) if res else {}
        jobs.setdefault(m[1], []).append(values)
    return jobs


def test_profile_name_slurm_resolves_to_the_shipped_profile_from_the_repo_root(monkeypatch):
    from snakemake.cli import get_profile_dir

    monkeypatch.chdir(ROOT)
    profile_dir, config_file = get_profile_dir("slurm")
    assert config_file.resolve() == (ROOT / "profiles" / "slurm" / "config.yaml").resolve()
    assert (ROOT / "slurm").is_symlink() and os.readlink(ROOT / "slurm") == "profiles/slurm"


@pytest.mark.parametrize("profile", ["profiles/slurm/config.yaml", "profiles/ci-slurm/config.yaml"])
def test_every_profile_key_is_commented(profile):
    """Each top-level key has a comment on its line or right above it (issue 6: 'every key commented')."""
    lines = (ROOT / profile).read_text().splitlines()
    keys = yaml.safe_load((ROOT / profile).read_text())
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z][\w-]*):", line)
        if m:
            assert m[1] in keys
            assert "#" in line or (i > 0 and lines[i - 1].lstrip().startswith("#")), f"{profile}: {m[1]} has no comment"


def test_site_profile_gives_the_gpu_rules_one_gpu_and_the_rest_none():
    jobs = dry_run_resources("slurm")
    assert GPU_RULES | CPU_RULES <= set(jobs), sorted(jobs)
    for rule in GPU_RULES:
        assert all(j.get("gpu") == "1" for j in jobs[rule]), (rule, jobs[rule])
    for rule in CPU_RULES:
        assert all("gpu" not in j and int(j["mem_mb"]) <= 4000 for j in jobs[rule]), (rule, jobs[rule])
    assert jobs["train"][0]["mem_mb"] == "8000" and jobs["train"][0]["runtime"] == "240"
    # Every rule the profile names exists in the workflow (a renamed rule would silently lose its resources).
    for profile in ("slurm", "ci-slurm"):
        named = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())["set-resources"]
        assert set(named) <= workflow_rules(), set(named) - workflow_rules()


def workflow_rules() -> set[str]:
    proc = subprocess.run([str(BIN / "snakemake"), "--list-rules", "--configfile", *CI_CONFIGS], cwd=ROOT,
                          capture_output=True, text=True, env=env_with_venv(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(proc.stdout.split())


def test_the_simulation_places_lyra_runs_on_gpus_and_baselines_on_cpus(tmp_path):
    (tmp_path / "one_run.yaml").write_text("simulate: {runs: 1}\n")
    jobs = dry_run_resources("profiles/ci-slurm", target="simulate", configfiles=(str(tmp_path / "one_run.yaml"),))
    assert len(jobs["simulate_lyra"]) == 1 and len(jobs["simulate_baseline"]) == 2  # lyra; random, ridge
    assert all(j.get("gpu") == "1" and j.get("slurm_partition") == "gpu" for j in jobs["simulate_lyra"])
    assert all("gpu" not in j and j.get("slurm_partition") == "debug" for j in jobs["simulate_baseline"])


def test_ci_profile_puts_gpu_rules_on_the_gpu_partition():
    jobs = dry_run_resources("profiles/ci-slurm")
    for rule in GPU_RULES:
        assert all(j.get("gpu") == "1" and j.get("slurm_partition") == "gpu" for j in jobs[rule]), jobs[rule]
    for rule in CPU_RULES:
        assert all("gpu" not in j and j.get("slurm_partition") == "debug" for j in jobs[rule]), jobs[rule]


@pytest.mark.slow
def skip_without_a_test_cluster() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test cluster's daemons run as root")
    if not CLUSTER_SCRIPT.is_file():
        pytest.skip(f"{CLUSTER_SCRIPT} is missing")


@pytest.mark.slurm
def test_campaign_on_a_real_slurm_cluster_equals_the_local_run(tmp_path):
    skip_without_a_test_cluster()
    env = {**env_with_venv(), "SLURM_E2E_OUT": str(tmp_path), "SLURM_E2E_TIMEOUT": "1500"}
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-e2e.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    assert "tearing the cluster down" in proc.stdout

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and not summary["problems"], summary["problems"]
    jobs = summary["checks"]["jobs"]
    ran = {j["rule"] for j in jobs}
    assert ran == GPU_RULES | CPU_RULES, ran
    assert sum(j["rule"] == "train" for j in jobs) == 2  # train.seeds in tests/configs/slurm_ci.yaml
    assert all(j["state"] == "COMPLETED" for j in jobs)
    assert all(j["partition"] == "gpu" and "gpu" in j["tres"] for j in jobs if j["rule"] in GPU_RULES)
    # Checked here too, independently of the harness: the ranking the lab gets is the same file.
    local, remote = ROOT / "results" / "slurm_ci_local", ROOT / "results" / "slurm_ci_slurm"
    assert (local / "ranking.csv").read_bytes() == (remote / "ranking.csv").read_bytes()
    assert len((remote / "ranking.csv").read_text().splitlines()) == 1 + 24  # header + rank.top_n
    # The cluster is down: no slurmctld answers any more.
    down = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert "UP" not in down.stdout


@pytest.mark.slurm
def test_a_failed_jobs_reason_reaches_the_console_through_slurm(tmp_path):
    """A bad row only the preprocess job sees, on a SLURM node: snakemake's console shows its one line."""
    import fcntl

    from own_campaigns import synthetic_campaign, write_config

    skip_without_a_test_cluster()
    config = synthetic_campaign(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["library"] = {"positions": "1-40"}  # large enough that no job-free look at the rows happens first
    write_config(config, cfg)
    with open(tmp_path / "rounds" / "1" / "measurements.csv", "a") as f:
        f.write("B7Q,1.0\n")
    # the cluster is machine-wide: wait for .ci/slurm-e2e.sh (its lock) rather than tear down its cluster
    with open("/tmp/lyra-slurm-e2e.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "up"], check=True, capture_output=True, timeout=300)
        try:
            proc = subprocess.run(
                [str(BIN / "snakemake"), "results/my_enzyme/data/dataset.parquet", "--snakefile", str(ROOT / "Snakefile"),
                 "--profile", str(ROOT / "profiles" / "ci-slurm"), "--configfile", str(config)],
                cwd=tmp_path, capture_output=True, text=True, env=env_with_venv(), timeout=600)
        finally:
            subprocess.run(["bash", str(CLUSTER_SCRIPT), "down"], capture_output=True, timeout=120)
    assert proc.returncode != 0
    assert "SLURM run ID" in proc.stdout + proc.stderr  # it did go through SLURM
    lines = [line for line in proc.stderr.splitlines() if "logs/preprocess.log: error:" in line]
    assert len(lines) == 1 and "rounds/1/measurements.csv, row 22" in lines[0], proc.stderr[-3000:]


@pytest.mark.slurm
def test_retrospective_campaign_through_slurm_equals_the_local_run(tmp_path):
    """`snakemake simulate` with the CI profile: Lyra runs on the GPU partition, baselines on the CPU
    one, and every run's rounds are those of the same simulation run locally."""
    import fcntl

    import pandas as pd

    from own_campaigns import SIM_TINY, SIM_WT, landscape_file

    skip_without_a_test_cluster()
    data = landscape_file(tmp_path)
    config = {"campaign": "sim", "data": {"path": str(data), "mutations_column": "mutant", "wild_type": SIM_WT,
                                          "target_column": "fitness"},
              "split": {"method": "random", "fractions": {"train": 1.0}}, **SIM_TINY,
              "simulate": {"initial": {"size": 8}, "rounds": 2, "batch_size": 4, "runs": 1}}
    runs = {}
    for where, profile in (("local", []), ("slurm", ["--profile", str(ROOT / "profiles" / "ci-slurm")])):
        folder = tmp_path / where
        folder.mkdir()
        (folder / "sim.yaml").write_text(yaml.safe_dump(config))
        command = [str(BIN / "snakemake"), "simulate", "--snakefile", str(ROOT / "Snakefile"), *profile,
                   "--configfile", "sim.yaml", *([] if profile else ["--cores", "2"])]
        if where == "local":
            proc = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env_with_venv(), timeout=900)
        else:
            with open("/tmp/lyra-slurm-e2e.lock", "w") as lock:  # the cluster is machine-wide
                fcntl.flock(lock, fcntl.LOCK_EX)
                subprocess.run(["bash", str(CLUSTER_SCRIPT), "up"], check=True, capture_output=True, timeout=300)
                try:
                    proc = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env_with_venv(),
                                          timeout=900)
                finally:
                    subprocess.run(["bash", str(CLUSTER_SCRIPT), "down"], capture_output=True, timeout=120)
            assert "SLURM run ID" in proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[where] = pd.read_parquet(folder / "results" / "sim" / "simulation" / "runs.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(runs["local"], runs["slurm"])
    assert sorted(runs["slurm"]["strategy"].unique()) == ["lyra", "random", "ridge"]
