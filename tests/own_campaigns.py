"""Campaign configs written from scratch, as a user would, for data the demo knows nothing about.

`synthetic_campaign` makes a protein and its measurements (none of it from ../shared): a 40-residue
wild type in a FASTA file, singles and doubles with additive effects, nonsense variants to drop, index
files for the split, a library named by a spec file, an alignment for the prior and one measured
round. Every file a stage reads is there, so a test can change each one and see what reruns.

`assert_only_user_and_defaults` is the check that nothing else (the demo config above all) reached a
campaign: every value in results/<campaign>/config/ is the user's or the schema's default.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AMINO = "ACDEFGHIKLMNPQRSTVWY"

# Small and fast: every stage runs, each for seconds.
TINY = {
    "model": {"d_model": 8, "d_state": 4},
    "train": {"seeds": 1, "max_epochs": 3, "patience": 2, "batch_size": 64},
}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def synthetic_campaign(tmp: Path, seed: int = 7) -> Path:
    """Write the campaign's files under `tmp`; return its config file (paths relative to `tmp`)."""
    rng = np.random.default_rng(seed)
    wt = "".join(rng.choice(list(AMINO), 40))
    (tmp / "wt.fasta").write_text(f">my_protein synthetic wild type\n{wt}\n")
    effect = rng.normal(0, 1, (40, 20))  # additive effect of each residue at each site

    def fitness(muts):
        return float(sum(effect[p - 1, AMINO.index(a)] for _, p, a in muts) + rng.normal(0, 0.1))

    def text(muts):
        return ":".join(f"{w}{p}{a}" for w, p, a in muts)

    def mutation(p):
        return (wt[p - 1], p, rng.choice([a for a in AMINO if a != wt[p - 1]]))

    variants = {}
    for p in range(1, 41):  # four singles per site
        for _ in range(4):
            m = [mutation(p)]
            variants[text(m)] = fitness(m)
    while len(variants) < 400:  # and doubles
        p, q = sorted(rng.choice(np.arange(1, 41), 2, replace=False))
        m = [mutation(p), mutation(q)]
        variants[text(m)] = fitness(m)
    rows = [("WT", 0.0), *variants.items(), (f"{wt[4]}5*", -3.0), (f"{wt[9]}10*", -3.1)]
    pd.DataFrame(rows, columns=["variant", "activity"]).to_csv(tmp / "measurements.csv", index=False)

    # split by index files: 0-based data rows
    order = rng.permutation(len(rows))
    (tmp / "splits").mkdir()
    for name, part in (("train", order[:300]), ("valid", order[300:350]), ("test", order[350:])):
        (tmp / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in sorted(part)))

    # one measured round, and a library of unmeasured doubles named by a spec file
    (tmp / "rounds" / "1").mkdir(parents=True)
    extra = {}
    while len(extra) < 80:
        p, q = sorted(rng.choice(np.arange(1, 41), 2, replace=False))
        m = [mutation(p), mutation(q)]
        if text(m) not in variants:
            extra[text(m)] = fitness(m)
    items = list(extra.items())
    pd.DataFrame(items[:20], columns=["variant", "activity"]).to_csv(tmp / "rounds" / "1" / "measurements.csv",
                                                                  index=False)
    pd.DataFrame({"mutations": [v for v, _ in items[20:]]}).to_csv(tmp / "candidates.csv", index=False)
    (tmp / "designs.yaml").write_text("description: doubles proposed by the lab\nkind: file\npath: candidates.csv\n")

    # an alignment of homologs: the wild type, then copies with 20% of sites changed
    records = [f">my_protein\n{wt}"]
    for k in range(30):
        seq = [a if rng.random() > 0.2 else rng.choice(list(AMINO)) for a in wt]
        records.append(f">homolog{k}\n{''.join(seq)}")
    (tmp / "family.a2m").write_text("\n".join(records) + "\n")

    config = {
        "campaign": "my_enzyme",
        "data": {"path": "measurements.csv", "mutations_column": "variant", "wild_type": "wt.fasta",
                 "target_column": "activity", "drop_variants": ["nonsense"]},
        "split": {"method": "index_files",
                  "index_files": {s: f"splits/{s}.txt" for s in ("train", "valid", "test")}},
        "library": {"spec": "designs.yaml", "n_shards": 1},
        "prior": {"msa": "family.a2m", "sign": "positive"},
        "rounds": {"dir": "rounds"},
        "rank": {"top_n": 8},
        "tune": {"n_trials": 1, "n_workers": 1, "max_epochs": 2, "patience": 1},
        **TINY,
    }
    return write_config(tmp / "my_enzyme.yaml", config)


# --- running it --------------------------------------------------------------------------------------


def snakemake(workdir: Path, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`snakemake ... --configfile <config>` in `workdir`, as a user runs it (the Snakefile of this repo)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", "--nolock", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def lyra(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "lyra"), *args], cwd=workdir, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"lyra {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


# Stages by the rule names of a dry run and the job names of `lyra run`.
RULE_STAGE = {"preprocess": "preprocess", "tune_worker": "tune", "tune_collect": "tune", "train": "train",
              "evaluate": "evaluate", "score_shard": "score", "gather_scores": "gather", "rank": "rank",
              "report": "report"}


def planned_stages(dry_run_output: str) -> set[str]:
    """The stages a `snakemake -n` would run (from its job-stats table)."""
    stats = dry_run_output.split("Job stats:", 1)[1].split("total", 1)[0] if "Job stats:" in dry_run_output else ""
    rules = {line.split()[0] for line in stats.splitlines()[3:] if line.strip()}
    return {RULE_STAGE[r] for r in rules if r in RULE_STAGE}


def ran_stages(lyra_run_stderr: str) -> set[str]:
    """The stages a `lyra run` ran (its "<job> ..." log lines; "<job>: up to date" were skipped)."""
    out = set()
    for line in lyra_run_stderr.splitlines():
        if line.endswith(" ..."):
            job = line.split(": ", 1)[-1][: -len(" ...")]
            out.add(RULE_STAGE.get(job.split()[0], job.split()[0]))
    return out


# --- nothing but the user's file and the schema ----------------------------------------------------------


def _schema_default(schema: dict, path: list[str]):
    node = schema
    for key in path:
        node = node.get("properties", {}).get(key)
        if node is None:
            raise KeyError(".".join(path))
    if "default" not in node:
        raise KeyError(".".join(path))
    return node["default"]


def _leaves(node, path=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    else:
        yield list(path), node


def assert_only_user_and_defaults(campaign_dir: Path, user: dict) -> int:
    """Every value of the resolved per-stage configs is the user's or the schema's default; returns
    how many values were checked."""
    schema = yaml.safe_load((ROOT / "lyra" / "schema.yaml").read_text())
    checked = 0
    files = sorted((campaign_dir / "config").glob("*.yaml"))
    assert files, f"no resolved configs in {campaign_dir / 'config'}"
    for f in files:
        resolved = {k: v for k, v in yaml.safe_load(f.read_text()).items() if not k.startswith("_")}
        for path, value in _leaves(resolved):
            given, node = True, user
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    given = False
                    break
                node = node[key]
            if given and not (isinstance(node, dict) and node and not isinstance(value, dict)):
                assert value == node, f"{f.name}: {'.'.join(path)} = {value!r}, the user's file says {node!r}"
            else:
                # a section the user left out or only partly set: its default, key by key
                default = _default_for(schema, path)
                assert value == default, (f"{f.name}: {'.'.join(path)} = {value!r} is neither in the user's "
                                          f"file nor the schema's default ({default!r})")
            checked += 1
    return checked


def _default_for(schema: dict, path: list[str]):
    """The schema's default at `path`, or the value inside an enclosing section's default."""
    for cut in range(len(path), 0, -1):
        try:
            value = _schema_default(schema, path[:cut])
        except KeyError:
            continue
        for key in path[cut:]:
            value = value[key]
        return value
    raise KeyError(".".join(path))


# A complete landscape for retrospective campaigns (snakemake simulate): every variant measured.
SIM_WT = "MKTAYIAKQRQISFVKSHFSRQ"
SIM_SITES = {3: "TAVL", 7: "AGSP", 12: "ISTW"}  # 4 x 4 x 4 = 64 variants, every one measured
SIM_TINY = {"model": {"d_model": 8, "d_state": 4}, "train": {"seeds": 2, "max_epochs": 3, "patience": 2, "batch_size": 8}}


def landscape_file(tmp: Path) -> Path:
    """A complete additive landscape with one clear best variant (fitness 10.0)."""
    rows = []
    for letters in itertools.product(*SIM_SITES.values()):
        muts = [f"{SIM_WT[p - 1]}{p}{a}" for p, a in zip(SIM_SITES, letters) if a != SIM_WT[p - 1]]
        score = sum(i for a, choices in zip(letters, SIM_SITES.values()) for i, c in enumerate(choices) if c == a)
        rows.append({"mutant": ":".join(muts) or "WT", "fitness": 1.0 + score})
    frame = pd.DataFrame(rows)
    assert frame["fitness"].max() == 10.0 and (frame["fitness"] == 10.0).sum() == 1
    path = tmp / "landscape.csv"
    frame.to_csv(path, index=False)
    return path
