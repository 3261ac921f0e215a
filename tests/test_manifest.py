"""manifest.json: input checksums, resolved config, versions, git state, seeds, device, stage times."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from lyra.campaign.config import load_config
from lyra.campaign.manifest import benchmark_times, git_state, stage_totals, write_manifest

WT = "MKTAYIAKQR"
REQUIRED = {"campaign", "created", "hostname", "inputs", "outputs", "config", "packages", "git", "seeds", "device",
            "stage_wall_time_s", "job_wall_time_s"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def campaign(tmp_path, monkeypatch) -> tuple[Path, dict, Path]:
    monkeypatch.chdir(tmp_path)  # config paths are relative to the working directory
    (tmp_path / "measurements.csv").write_text("mutant,fitness\nWT,1.0\nK2A,0.5\nT3V,1.5\n")
    (tmp_path / "wt.fasta").write_text(f">wt\n{WT}\n")
    (tmp_path / "rounds" / "1").mkdir(parents=True)
    (tmp_path / "rounds" / "1" / "measurements.csv").write_text("mutant,fitness\nK2A:T3V,2.0\n")
    (tmp_path / "library.txt").write_text("K2A\nT3V\nK2A:T3V\n")
    (tmp_path / "family.a2m").write_text(f">wt\n{WT}\n>homolog\nMKTAYLAKQR\n")
    cfg = tmp_path / "campaign.yaml"
    cfg.write_text(
        "campaign: toy\nseed: 7\n"
        "data: {path: measurements.csv, mutations_column: mutant, wild_type: wt.fasta, target_column: fitness}\n"
        "split: {seed: 3}\n"
        "train: {seeds: 2}\n"
        "rounds: {dir: rounds}\n"
        "library: {kind: file, path: library.txt}\n"
        "prior: {msa: family.a2m}\n"
    )
    config = load_config(cfg)
    root = tmp_path / "results" / "toy"
    (root / "benchmarks" / "train").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (root / "benchmarks" / "preprocess.tsv").write_text(header + "1.5\t0:00:01\t100\t1\t1\t1\t0\t0\t0\t1\n")
    (root / "benchmarks" / "train" / "seed0.tsv").write_text(header + "10.25\t0:00:10\t100\t1\t1\t1\t0\t0\t0\t1\n")
    (root / "benchmarks" / "train" / "seed1.tsv").write_text(header + "12.0\t0:00:12\t100\t1\t1\t1\t0\t0\t0\t1\n"
                                                             + "14.0\t0:00:14\t100\t1\t1\t1\t0\t0\t0\t1\n")
    (root / "ranking.csv").write_text("rank,variant_id\n1,K2A:T3V\n")
    return root, config, cfg


def test_manifest_hashes_every_input(campaign, tmp_path):
    root, config, cfg = campaign
    out = root / "manifest.json"
    write_manifest(root, config, out, config_files=[cfg])
    m = json.loads(out.read_text())
    assert REQUIRED <= set(m)
    by_role = {r["role"]: r for r in m["inputs"]}
    assert by_role["measurements"]["sha256"] == _sha(tmp_path / "measurements.csv")
    assert by_role["measurements"]["path"] == str((tmp_path / "measurements.csv").resolve())
    assert by_role["wild_type"]["sha256"] == _sha(tmp_path / "wt.fasta")
    assert by_role["round 1"]["sha256"] == _sha(tmp_path / "rounds" / "1" / "measurements.csv")
    assert by_role["library path"]["sha256"] == _sha(tmp_path / "library.txt")
    assert by_role["prior msa"]["sha256"] == _sha(tmp_path / "family.a2m")
    assert by_role["config"]["sha256"] == _sha(cfg)
    outputs = {r["role"]: r for r in m["outputs"]}
    assert outputs["ranking.csv"]["sha256"] == _sha(root / "ranking.csv")
    assert outputs["models/metrics.json"]["missing"] is True and outputs["models/metrics.json"]["sha256"] is None


def test_manifest_config_versions_seeds_device_times(campaign):
    root, config, cfg = campaign
    m = write_manifest(root, config, root / "manifest.json", stage_times={"report": 2.0})
    assert m["config"]["data"]["target_column"] == "fitness" and "_base_dir" not in m["config"]
    assert m["config"]["train"]["max_epochs"] == 100  # defaults filled in: the resolved config
    assert m["campaign"] == "toy"
    for pkg in ("python", "lyra", "torch", "numpy", "pandas", "pyarrow", "optuna"):
        assert m["packages"][pkg], pkg
    assert m["seeds"]["campaign"] == 7 and m["seeds"]["split"] == 3
    assert m["seeds"]["train_members"] == [7000, 7001]  # lyra.campaign.stages.training_seed
    assert m["device"]["type"] in ("cpu", "cuda")
    assert m["job_wall_time_s"] == {"preprocess": 1.5, "train/seed0": 10.25, "train/seed1": 13.0}
    assert m["stage_wall_time_s"] == {"preprocess": 1.5, "train": 23.25, "report": 2.0}


def test_stage_totals():
    assert stage_totals({"train/seed0": 1.0, "train/seed1": 2.5, "rank": 3.0}) == {"train": 3.5, "rank": 3.0}


def test_benchmark_times_skips_foreign_files(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    (tmp_path / "y.tsv").write_text("s\n4.0\n")
    assert benchmark_times(tmp_path) == {"y": 4.0}
    assert benchmark_times(tmp_path / "absent") == {}


def test_missing_input_is_recorded_not_fatal(campaign, tmp_path):
    root, config, _ = campaign
    (tmp_path / "library.txt").unlink()
    m = write_manifest(root, config, root / "manifest.json")
    lib = next(r for r in m["inputs"] if r["role"] == "library path")
    assert lib["sha256"] is None and lib["missing"] is True


def test_inline_wild_type(campaign):
    root, config, _ = campaign
    config = {**config, "data": {**config["data"], "wild_type": WT}}
    m = write_manifest(root, config, root / "manifest.json")
    wt = next(r for r in m["inputs"] if r["role"] == "wild_type")
    assert wt["inline"] is True and wt["sha256"] == hashlib.sha256(WT.encode()).hexdigest()


def test_git_state(tmp_path):
    assert git_state(tmp_path) is None  # not a checkout
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                        "--allow-empty", "-m", "x"], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True)
    head = head.stdout.strip()
    state = git_state(tmp_path)
    assert state["commit"] == head and state["dirty"] is False
    (tmp_path / "new.py").write_text("x = 1\n")
    assert git_state(tmp_path)["dirty"] is True
