"""End to end: the demo campaign, shrunk, through Snakemake and through `lyra run`, for two rounds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_config(tmp: Path, campaign: str = "tiny") -> Path:
    """The demo config with tiny models and few epochs; paths made absolute."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["campaign"] = campaign
    cfg["data"]["wild_type"] = str(ROOT / "resources" / "cr6261_wt.fasta")
    cfg["data"]["wild_type_dna"] = str(ROOT / "resources" / "cr6261_wt_dna.fasta")
    cfg["model"].update(d_model=16, d_state=8)
    cfg["train"].update(seeds=2, max_epochs=3, patience=2, batch_size=128)
    cfg["tune"].update(n_trials=2, n_workers=2, max_epochs=2, search_space={"d_model": 16, "d_state": 8, "n_pgc": {"type": "int", "low": 1, "high": 2}, "n_s4d": 1})
    cfg["library"].update(n_shards=2)
    cfg["rank"].update(top_n=12)
    # absolute, so that no run reads the rounds of a demo run in the repository
    cfg["rounds"]["dir"] = str(tmp / "rounds" / "cr6261_demo")
    path = tmp / f"{campaign}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", "--nolock", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.mark.slow
def test_demo_campaign_end_to_end(tmp_path):
    config = tiny_config(tmp_path)
    snakemake(tmp_path, config)
    out = tmp_path / "results" / "tiny"
    for rel in ["data/dataset.parquet", "data/report.md", "tune/best.json", "tune/trials.tsv", "models/seed0.pt",
                "models/seed1.pt", "models/metrics.json", "models/ridge.npz", "library/scores.parquet", "ranking.csv",
                "ranking.fasta"]:
        assert (out / rel).is_file(), rel
    assert "ridge" in pd.read_parquet(out / "library" / "scores.parquet", columns=["ridge"])  # scored beside Lyra
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) == 12 and list(ranking["rank"]) == list(range(1, 13))
    assert (ranking["model"] == "lyra").all()  # rank.model's default
    assert ranking["reason"].str.len().min() > 0
    assert (out / "ranking.fasta").read_text().count(">") == 12
    assert (out / "ranking_dna.fasta").read_text().count(">") == 12 and "measured_fitness" in ranking
    plate = pd.read_csv(out / "plate.csv")
    assert plate.loc[plate["content"] == "control", "well"].tolist() == ["G12", "H12"]  # the demo's WT controls
    for rel in ["logs/preprocess.log", "logs/train/seed0.log", "logs/rank.log"]:
        assert (out / rel).is_file(), rel

    # Nothing to redo on rerun; a ranking-only change reruns ranking only.
    dry = snakemake(tmp_path, config, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    cfg = yaml.safe_load(config.read_text())
    cfg["rank"]["top_n"] = 10
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    dry = snakemake(tmp_path, config, "-n")
    text = dry.stdout + dry.stderr
    assert "rule rank:" in text or "rank " in text
    for rule in ("train", "preprocess", "score_shard", "tune_worker"):
        assert f"rule {rule}:" not in text, f"{rule} should not rerun when only rank.top_n changed"

    # The same config through `lyra run` (no Snakemake) gives a byte-identical ranking.
    cfg["rank"]["top_n"] = 12
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    other = tmp_path / "other"
    proc = subprocess.run([str(BIN / "lyra"), "run", "--config", str(config), "--results", str(other)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("ranking.csv", "plate.csv", "ranking_dna.fasta"):
        assert (other / "tiny" / name).read_bytes() == (out / name).read_bytes(), name

    # Round 2: the (simulated) lab measures the 12 picks; the next run trains on them, offers others.
    proc = subprocess.run([str(BIN / "lyra"), "simulate-round", "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    round1 = tmp_path / "rounds" / "cr6261_demo" / "1"
    assert (round1 / "ranking.csv").read_bytes() == (out / "ranking.csv").read_bytes()
    measured = pd.read_csv(round1 / "measurements.csv")
    assert len(measured) == 12 and list(measured.columns) == ["mutant", "fitness"]
    before = pd.read_parquet(out / "data" / "dataset.parquet", columns=["variant_id"])
    snakemake(tmp_path, config)
    after = pd.read_parquet(out / "data" / "dataset.parquet", columns=["variant_id", "split"])
    assert len(after) == len(before) + 12
    assert set(measured["mutant"]) <= set(after.loc[after["split"] == "train", "variant_id"])
    second = pd.read_csv(out / "ranking.csv")
    assert len(second) == 12 and not set(second["variant_id"]) & set(ranking["variant_id"])
    best = yaml.safe_load((out / "tune" / "best.json").read_text())
    assert best["n_trials"] == 2  # a new study for the new data, not the finished one of round 1


def test_cli_reports_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("campaign: x\ndata: {path: m.csv, target_column: y}\ntrain: {max_epoch: 3}\n")
    proc = subprocess.run([str(BIN / "lyra"), "check-config", "--config", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.max_epoch" in lines[0] and "Traceback" not in proc.stderr


def test_cli_reports_bad_row_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "m.csv").write_text("variant,score\nWT,0\nK2A,1.5\nA5G,0.3\n")  # position 5 is Y
    (tmp_path / "c.yaml").write_text(
        "campaign: x\ndata: {path: m.csv, mutations_column: variant, target_column: score,\n"
        "       wild_type: MKTAYIAKQRQISFVKSHFSRQLEERLGLI}\n")
    proc = subprocess.run([str(BIN / "lyra"), "preprocess", "--config", "c.yaml", "--out", "out/dataset.parquet"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "m.csv, row 4:" in lines[0] and "the wild type has Y at position 5, not A" in lines[0]
    assert not (tmp_path / "out").exists()


def test_snakemake_lint_is_clean():
    if shutil.which("snakemake", path=str(BIN)) is None:
        pytest.skip("snakemake not installed")
    proc = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
