"""A user's own campaign, run the way a user runs it: `snakemake --configfile my.yaml` with a config
written from scratch, and `lyra run` on the same file. Nothing of the demo may reach it; every file a
stage reads reruns that stage when it changes, in both tools alike; errors reach the console."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from own_campaigns import (BIN, ROOT, assert_only_user_and_defaults, lyra, planned_stages, ran_stages, snakemake,
                           synthetic_campaign, write_config)

ALL = {"preprocess", "tune", "train", "evaluate", "score", "gather", "rank", "report"}
AFTER_TRAINING = {"score", "gather", "rank", "report"}


def _append(text: str):
    def change(path: Path) -> None:
        with open(path, "a") as f:
            f.write(text)
    return change


def _edit_config(**sections):
    def change(path: Path) -> None:
        cfg = yaml.safe_load(path.read_text())
        for section, values in sections.items():
            cfg[section] = {**cfg.get(section, {}), **values}
        write_config(path, cfg)
    return change


def _drop_last_line(path: Path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def _rename_wild_type(path: Path) -> None:
    path.write_text(path.read_text().replace(">my_protein", ">my_protein_v2"))


def _repeat_first_row(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[1]]))  # measured twice: averaged


# One table for both tools: what a change to each input reruns. Every change keeps the campaign valid.
# Snakemake compares small inputs by checksum, so a file saved again with the same text is no change.
CHANGES = [
    ("the measurements, saved again unchanged", "measurements.csv", _append(""), set()),
    ("the wild-type FASTA", "wt.fasta", _rename_wild_type, ALL),
    ("a split's index file", "splits/valid.txt", _append("\n"), ALL),
    ("a round's measurements", "rounds/1/measurements.csv", _repeat_first_row, ALL),
    ("the measurements", "measurements.csv", _repeat_first_row, ALL),
    ("the prior's alignment", "family.a2m", _append(">one_more\n" + "A" * 40 + "\n"), ALL - {"preprocess"}),
    ("the library spec", "designs.yaml", _append("# reviewed\n"), AFTER_TRAINING),
    ("the library file", "candidates.csv", _drop_last_line, AFTER_TRAINING),
    ("a comment in the config", "my_enzyme.yaml", _append("# ordered on Monday\n"), {"report"}),
    ("rank.top_n", "my_enzyme.yaml", _edit_config(rank={"top_n": 6}), {"rank", "report"}),
    ("model.d_state", "my_enzyme.yaml", _edit_config(model={"d_model": 8, "d_state": 6}), ALL - {"preprocess"}),
]


def _change(tmp: Path, rel: str, change) -> None:
    """Apply a change, dated now: after every output so far, before any output made from now on."""
    change(tmp / rel)
    os.utime(tmp / rel)


@pytest.mark.slow
def test_a_campaign_written_from_scratch_runs_through_snakemake_with_nothing_of_the_demo(tmp_path):
    config = synthetic_campaign(tmp_path)
    user = yaml.safe_load(config.read_text())
    proc = snakemake(tmp_path, config)
    out = tmp_path / "results" / "my_enzyme"
    for rel in ["data/dataset.parquet", "models/metrics.json", "ranking.csv", "ranking.fasta", "manifest.json",
                "report/top_n.md"]:
        assert (out / rel).is_file(), rel
    assert_only_user_and_defaults(out, user)
    assert "| rows dropped: nonsense variants (data.drop_variants) | 2 |" in (out / "data" / "report.md").read_text()
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) == 8
    candidates = set(pd.read_csv(tmp_path / "candidates.csv")["mutations"])
    assert set(ranking["mutations"]) <= candidates  # the user's library, not the demo's
    # the jobs' warnings reach the console, not only their logs: the search's (d_state 4 is outside
    # the default search space) and any the evaluation raised about an ensemble that has not learned
    assert "warning: tune.search_space.d_state: the config's value 4 is outside the search space" in proc.stderr
    for warning in json.loads((out / "models" / "metrics.json").read_text())["warnings"]:
        assert f"warning: {warning}" in proc.stderr

    dry = snakemake(tmp_path, config, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    original = config.read_text()
    for what, rel, change, expected in CHANGES:
        _change(tmp_path, rel, change)
        dry = snakemake(tmp_path, config, "-n")
        assert planned_stages(_console(dry)) == expected, f"after a change to {what}:\n{_console(dry)[-3000:]}"
        config.write_text(original)  # config edits are taken back; file edits stay
        snakemake(tmp_path, config, "--touch")  # as if that rerun had happened
        assert "Nothing to be done" in _console(snakemake(tmp_path, config, "-n")), what


# Each reruns every stage through the same path as the wild-type FASTA (a preprocess input): checked
# by the dry runs above, left out here to keep the retraining in this test short.
LYRA_RUN_SKIPS = {"a split's index file", "a round's measurements", "the measurements"}


@pytest.mark.slow
def test_lyra_run_reruns_exactly_what_snakemake_would(tmp_path):
    config = synthetic_campaign(tmp_path)
    first = lyra(tmp_path, "run", "--config", config.name)
    assert ran_stages(first.stderr) == ALL
    assert ran_stages(lyra(tmp_path, "run", "--config", config.name).stderr) == set()
    out = tmp_path / "results" / "my_enzyme"
    for what, rel, change, expected in CHANGES:
        if what in LYRA_RUN_SKIPS:
            continue
        models = {p: p.stat().st_mtime_ns for p in (out / "models").glob("seed*.pt")}
        _change(tmp_path, rel, change)
        run = lyra(tmp_path, "run", "--config", config.name)
        assert ran_stages(run.stderr) == expected, f"after a change to {what}:\n{run.stderr[-3000:]}"
        retrained = {p for p, t in models.items() if p.stat().st_mtime_ns != t}
        assert bool(retrained) == ("train" in expected), what
        if what == "rank.top_n":
            assert len(pd.read_csv(out / "ranking.csv")) == 6
    assert_only_user_and_defaults(out, yaml.safe_load(config.read_text()))


# --- each shared dataset in its own form, preprocess -> ranking -----------------------------------------

DATA = ROOT.parent / "shared" / "data"
TINY = {"model": {"d_model": 8, "d_state": 4}, "train": {"seeds": 1, "max_epochs": 2, "batch_size": 64},
        "tune": {"enabled": False}, "library": {"n_shards": 1}, "rank": {"top_n": 8}}


def _gb1(tmp: Path) -> dict:
    frame = pd.read_csv(DATA / "gb1_wu2016" / "gb1_4site_56aa_with_flip_splits.csv.gz")
    frame.sample(300, random_state=0)[["sequence_56aa", "Fitness"]].to_csv(tmp / "gb1.csv", index=False)
    return {"campaign": "gb1", "data": {"path": "gb1.csv", "sequence_column": "sequence_56aa",
                                        "target_column": "Fitness",
                                        "wild_type": "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"},
            "library": {"kind": "combinatorial", "positions": {39: "VAF", 40: "DW", 41: "GA", 54: "VA"}}}


def _gfp(tmp: Path) -> dict:
    frame = pd.read_csv(DATA / "gfp_sarkisyan2016" / "avgfp.tsv", sep="\t")
    frame.sample(400, random_state=0).to_csv(tmp / "gfp.tsv", sep="\t", index=False)
    return {"campaign": "gfp", "data": {"path": "gfp.tsv", "mutations_column": "variant", "first_position": 0,
                                        "wild_type": str(DATA / "gfp_sarkisyan2016" / "avgfp_wt.fasta"),
                                        "target_column": "score"},
            "library": {"positions": "10-12"}}


def _cdr3(tmp: Path) -> dict:
    frame = pd.read_csv(DATA / "relso_gifford" / "gifford_train_data.csv")
    frame.iloc[:400].to_csv(tmp / "cdr3.csv", index=False)
    frame.iloc[400:460][["CDR3"]].to_csv(tmp / "candidates.csv", index=False)
    return {"campaign": "cdr3", "data": {"path": "cdr3.csv", "sequence_column": "CDR3",
                                         "target_column": "enrichment", "padding": "J"},
            "library": {"kind": "file", "path": "candidates.csv"}}


def _cr6261(tmp: Path) -> dict:
    frame = pd.read_csv(DATA / "cr6261_phillips2021" / "cr6261_h1_mean.csv")
    frame.sample(300, random_state=0)[["mutant", "fitness"]].to_csv(tmp / "cr6261.csv", index=False)
    shutil.copy(ROOT / "resources" / "cr6261_wt.fasta", tmp / "heavy_chain.fasta")
    return {"campaign": "cr6261", "data": {"path": "cr6261.csv", "mutations_column": "mutant",
                                           "wild_type": "heavy_chain.fasta", "target_column": "fitness"},
            "library": {"kind": "combinatorial", "positions": {28: "TP", 30: "SR", 58: "AT", 59: "NK", 62: "QP"}}}


@pytest.mark.slow
@pytest.mark.parametrize("make", [_gb1, _gfp, _cdr3, _cr6261], ids=["gb1_sequences", "gfp_0_based",
                                                                    "cdr3_padded", "cr6261_fasta_wt"])
def test_minimal_config_per_dataset_runs_preprocess_to_ranking(tmp_path, make):
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not found")
    user = make(tmp_path)
    for section, values in TINY.items():
        user[section] = {**values, **user.get(section, {})}
    config = write_config(tmp_path / f"{user['campaign']}.yaml", user)
    out = tmp_path / "results" / user["campaign"]
    snakemake(tmp_path, config, str(out.relative_to(tmp_path) / "ranking.csv"))
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) == 8 and ranking["sequence"].str.fullmatch(r"[ACDEFGHIKLMNPQRSTVWY]+").all()
    assert_only_user_and_defaults(out, user)


# --- errors where the user looks --------------------------------------------------------------------------


def _console(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def test_config_errors_are_one_line_naming_the_users_file(tmp_path):
    (tmp_path / "m.csv").write_text("variant,2500\nWT,1\nA1G,2\n")
    bad = write_config(tmp_path / "mine.yaml", {"campaign": "c", "data": {
        "path": "m.csv", "mutations_column": "variant", "wild_type": "MKTAYIAK", "target_column": 2500}})
    proc = snakemake(tmp_path, bad, "-n", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in _console(proc) and "File \"" not in _console(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "mine.yaml" in errors[0] and "target_column: '2500'" in errors[0], proc.stderr

    missing = write_config(tmp_path / "mine.yaml", {"campaign": "c", "data": {
        "path": "m.csv", "mutations_column": "variant", "wild_type": "nowhere.fasta", "target_column": "2500"}})
    proc = snakemake(tmp_path, missing, "-n", check=False)
    assert proc.returncode != 0 and "Traceback" not in _console(proc)
    assert "nowhere.fasta" in proc.stderr


def test_a_failed_jobs_reason_is_on_the_console(tmp_path):
    """A bad row that only the preprocess job sees: its one line is printed by snakemake, not only logged."""
    config = synthetic_campaign(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["library"] = {"positions": "1-40"}  # 760 variants: no up-front look at the measurements
    with open(tmp_path / "rounds" / "1" / "measurements.csv", "a") as f:
        f.write("B7Q,1.0\n")  # no such residue
    write_config(config, cfg)
    proc = snakemake(tmp_path, config, "results/my_enzyme/data/dataset.parquet", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "logs/preprocess.log: error:" in line]
    assert len(lines) == 1 and "rounds/1/measurements.csv, row 22" in lines[0], proc.stderr[-3000:]


def test_a_library_with_nothing_left_to_rank_fails_before_any_job(tmp_path):
    config = synthetic_campaign(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    measured = pd.read_csv(tmp_path / "measurements.csv")["variant"]
    pd.DataFrame({"mutations": [v for v in measured if v != "WT" and "*" not in v][:50]}).to_csv(
        tmp_path / "candidates.csv", index=False)
    write_config(config, cfg)
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0 and "Traceback" not in _console(proc)
    assert "library: all 50 of its variants are measured already" in proc.stderr
    cfg["rank"]["top_n"] = 96
    cfg["library"] = {"positions": "1-3", "max_mutations": 1, "n_shards": 1}  # 57 singles, 12 measured
    write_config(config, cfg)
    proc = lyra(tmp_path, "check-config", "--config", config.name, check=False)
    assert proc.returncode == 2 and "fewer than rank.top_n = 96" in proc.stderr and "rank.allow_fewer" in proc.stderr


def test_the_slurm_profile_says_when_there_is_no_slurm(tmp_path):
    config = synthetic_campaign(tmp_path)
    # a PATH with what snakemake itself calls, and no SLURM even where a test cluster is installed
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("bash", "sh", "which", "ls", "cat"):
        if shutil.which(tool):
            (path / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": f"{path}{os.pathsep}{BIN}"}
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--profile",
                           str(ROOT / "profiles" / "slurm"), "--configfile", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "'sbatch' is not on PATH" in proc.stderr and "Traceback" not in _console(proc)


def test_a_stage_error_names_the_users_config_file(tmp_path, monkeypatch):
    """The rules pass results/<c>/config/<stage>.yaml; its errors name the file the user wrote."""
    from test_rank import random_scores

    from lyra.campaign.config import load_config, write_stage_config

    monkeypatch.chdir(tmp_path)
    config = synthetic_campaign(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["rank"] = {"top_n": 500}
    write_config(config, cfg)
    stage = tmp_path / "results" / "my_enzyme" / "config" / "rank.yaml"
    assert write_stage_config(load_config(config.name), "rank", stage)
    assert not write_stage_config(load_config(config.name), "rank", stage)  # same settings: left alone
    scores = random_scores(tmp_path, n=40, seed=0)
    proc = lyra(tmp_path, "rank", "--config", str(stage), "--scores", str(scores), "--csv", "r.csv",
                "--fasta", "r.fasta", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in errors if line.startswith("error: my_enzyme.yaml: ranking: 40 picks, fewer than")]
    assert len(errors) == 1
    assert not (tmp_path / "r.csv").exists()
