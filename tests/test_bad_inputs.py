"""The bad-input corpus (tests/bad_inputs/cases.yaml): every malformed file is rejected with one line
naming the file and row (or the config key) and leaves no output behind; messy-but-fine files are
accepted with the transformation reported."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from prepared import prepare
from lyra.errors import ConfigError, DataError

HERE = Path(__file__).resolve().parent / "bad_inputs"
SPEC = yaml.safe_load((HERE / "cases.yaml").read_text())
CASES = SPEC["cases"]


def _case_id(case: dict) -> str:
    extra = "-".join(f"{k}" for k in {**case.get("data", {}), **case.get("split", {})})
    return case["file"] + (f"[{extra}]" if extra else "")


def _configs(case: dict) -> tuple[dict, dict]:
    data = copy.deepcopy(SPEC["base"]["data"])
    data.update(case.get("data", {}))
    data["path"] = case["file"]
    split = copy.deepcopy(SPEC["base"]["split"])
    split.update(case.get("split", {}))
    return data, split


def test_corpus_is_large_enough():
    assert len(CASES) >= 25
    rejected = [c for c in CASES if not c.get("accept")]
    assert len({c["file"] for c in rejected}) >= 25


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input(case, tmp_path):
    data, split = _configs(case)
    out = tmp_path / "out"
    if case.get("accept"):
        path = prepare(data, split, out, base_dir=HERE)
        report = (out / "report.md").read_text()
        for line in case.get("report", []):
            assert line in report, f"{line!r} not in report:\n{report}"
        assert path.exists()
        return

    with pytest.raises((DataError, ConfigError)) as info:
        prepare(data, split, out, base_dir=HERE)
    message = str(info.value)
    assert "\n" not in message, message
    assert case["error"] in message, message
    if "key" in case:
        assert case["key"] in message, message
    else:
        assert isinstance(info.value, DataError), message
        assert case.get("names", case["file"]) in message, message
    if "row" in case:
        assert f", row {case['row']}:" in message, message
    # no partial output: not even a temporary file
    assert not out.exists() or not any(out.iterdir())
