"""A wild type written in the config as the sequence itself, however long: never taken for a file name."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lyra.campaign.manifest import input_records
from lyra.data.variants import read_wild_type, wild_type_is_path

BIN = Path(sys.executable).parent  # the venv's `lyra` sits next to its python
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _protein(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "M" + "".join(rng.choice(AMINO) for _ in range(n - 1))


@pytest.mark.parametrize("value, is_path", [
    ("MKTAYIAK", False),
    (" mkta yiak\n", False),  # wrapped and lower case: still the sequence
    (_protein(600), False),  # longer than a file name may be (255 bytes)
    ("wt.fasta", True),
    ("data/wt.fa", True),
    ("~/wt", True),
    ("package://lyra/resources/wt.fasta", True),
    ("wt_2", True),  # not letters only: a file name
    ("", False),
])
def test_wild_type_is_path_decides_from_the_text(value, is_path):
    assert wild_type_is_path(value) is is_path


def test_long_inline_sequence_is_read_without_touching_the_filesystem(tmp_path):
    wt = _protein(600)
    assert read_wild_type(wt, base_dir=tmp_path) == wt
    with pytest.raises(ValueError, match="not found.*letters only"):  # a mistyped long sequence: one line
        read_wild_type(wt + "*", base_dir=tmp_path)
    records = input_records({"data": {"path": str(tmp_path / "m.csv"), "wild_type": wt}})
    assert next(r for r in records if r["role"] == "wild_type")["inline"] is True


def _lyra(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "lyra"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_accepts_a_600_residue_inline_wild_type(tmp_path):
    wt = _protein(600, seed=1)
    rng = random.Random(2)
    rows = ["mutant,fitness", "WT,1.0"]
    for pos in range(2, 42):
        mt = rng.choice([a for a in AMINO if a != wt[pos - 1]])
        rows.append(f"{wt[pos - 1]}{pos}{mt},{rng.random():.3f}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "campaign": "long_wt",
        "data": {"path": "m.csv", "mutations_column": "mutant", "wild_type": wt, "target_column": "fitness"},
    }))

    check = _lyra("check-config", "--config", "c.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "Traceback" not in check.stderr

    pre = _lyra("preprocess", "--config", "c.yaml", "--out", "out/dataset.parquet", "--report", "out/report.md", cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    assert "Traceback" not in pre.stderr
    assert "- wild type: 600 residues" in (tmp_path / "out" / "report.md").read_text()
