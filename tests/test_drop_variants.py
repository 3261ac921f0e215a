"""data.drop_variants: nonsense and synonymous rows of a DMS table are dropped and counted when the config
says so, and refused with one line naming the row and the key otherwise."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lyra.campaign.config import resolve_config
from lyra.data.config import DataConfig
from prepared import prepare
from lyra.errors import ConfigError, DataError

WT = "MAQKTAYIAKQRQISFVKSH"
TABLE = """mutant,score
WT,1.0
A2G,0.8
Q3*,0.0
K4R,0.9
A2G:Q3*,0.1
T5T,1.1
Q3*,0.05
A2G:T5T,0.7
"""


def _data(tmp_path, **extra) -> dict:
    (tmp_path / "dms.csv").write_text(TABLE)
    return {"path": "dms.csv", "mutations_column": "mutant", "wild_type": WT, "target_column": "score", **extra}


def test_nonsense_rows_are_refused_by_default_naming_row_and_key(tmp_path):
    with pytest.raises(DataError) as info:
        prepare(_data(tmp_path), {"method": "random"}, tmp_path / "out", base_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "dms.csv" in message and ", row 4:" in message  # header = row 1; Q3* is the third data row
    assert "data.drop_variants: [nonsense]" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nonsense_and_synonymous_rows_are_dropped_and_counted(tmp_path):
    out = tmp_path / "out"
    path = prepare(_data(tmp_path, drop_variants=["nonsense", "synonymous"]), {"method": "random"}, out,
                           base_dir=tmp_path)
    report = (out / "report.md").read_text()
    assert "| rows dropped: nonsense variants (data.drop_variants) | 3 |" in report  # Q3* twice, A2G:Q3*
    assert "| rows dropped: synonymous variants (data.drop_variants) | 1 |" in report  # T5T
    assert "| **variants written** | **3** |" in report  # WT, A2G (merged with A2G:T5T), K4R

    meta = json.loads(pq.ParquetFile(path).schema_arrow.metadata[b"lyra"])
    assert meta["counts"]["rows_dropped_nonsense"] == 3 and meta["counts"]["rows_dropped_synonymous"] == 1
    assert meta["data_config"]["drop_variants"] == ["nonsense", "synonymous"]
    frame = pq.read_table(path).to_pandas()
    assert "*" not in "".join(frame["sequence"])
    assert sorted(frame["variant_id"]) == ["A2G", "K4R", "WT"]
    wt_row = frame.loc[frame["variant_id"] == "WT"].iloc[0]
    assert wt_row["score"] == 1.0 and wt_row["n_replicates"] == 1  # T5T was dropped, not averaged in


def test_synonymous_rows_are_the_wild_type_unless_dropped(tmp_path):
    out = tmp_path / "out"
    path = prepare(_data(tmp_path, drop_variants=["nonsense"]), {"method": "random"}, out, base_dir=tmp_path)
    report = (out / "report.md").read_text()
    assert "| rows of synonymous mutations only, read as the wild type | 1 |" in report
    assert "synonymous variants (data.drop_variants)" not in report
    frame = pq.read_table(path).to_pandas()
    wt_row = frame.loc[frame["variant_id"] == "WT"].iloc[0]
    assert wt_row["n_replicates"] == 2 and wt_row["score"] == pytest.approx(1.05)


def test_nonsense_in_a_sequence_column_is_dropped(tmp_path):
    stop = WT[:4] + "*" + WT[5:]
    (tmp_path / "seqs.csv").write_text(f"sequence,score\n{WT},1.0\n{stop},0.0\n{WT[:1]}G{WT[2:]},0.5\n")
    data = {"path": "seqs.csv", "sequence_column": "sequence", "target_column": "score"}
    with pytest.raises(DataError, match=r"row 3:.*data.drop_variants: \[nonsense\]"):
        prepare(data, {"method": "random"}, tmp_path / "a", base_dir=tmp_path)
    path = prepare({**data, "drop_variants": ["nonsense"]}, {"method": "random"}, tmp_path / "b",
                           base_dir=tmp_path)
    assert pq.read_table(path).num_rows == 2
    assert "| rows dropped: nonsense variants (data.drop_variants) | 1 |" in (tmp_path / "b" / "report.md").read_text()


def test_row_numbers_stay_those_of_the_file_after_dropping(tmp_path):
    """Index files count the file's rows, dropped ones included; errors name the file's rows."""
    (tmp_path / "train.txt").write_text("0\n1\n7\n")  # 0-based data rows: WT, A2G, A2G:T5T
    (tmp_path / "test.txt").write_text("3\n")  # K4R, after two dropped rows
    split = {"method": "index_files", "index_files": {"train": "train.txt", "test": "test.txt"}, "valid_fraction": 0}
    path = prepare(_data(tmp_path, drop_variants=["nonsense", "synonymous"]), split, tmp_path / "out",
                           base_dir=tmp_path)
    frame = pq.read_table(path).to_pandas().set_index("variant_id")
    assert frame.loc["A2G", "split"] == "train" and frame.loc["K4R", "split"] == "test"
    assert frame.loc["A2G", "n_replicates"] == 2

    data = _data(tmp_path, drop_variants=["nonsense"])
    (tmp_path / "dms.csv").write_text(TABLE + "K4R,high\n")  # checked after the drop: still the file's row
    with pytest.raises(DataError, match=r"dms.csv, row 10: column 'score': target 'high' is not a number"):
        prepare(data, {"method": "random"}, tmp_path / "bad", base_dir=tmp_path)


def test_a_file_of_only_dropped_rows_is_one_line_error(tmp_path):
    (tmp_path / "stops.csv").write_text("mutant,score\nQ3*,0.0\nK4*,0.1\n")
    data = {"path": "stops.csv", "mutations_column": "mutant", "wild_type": WT, "target_column": "score",
            "drop_variants": ["nonsense"]}
    with pytest.raises(DataError, match=r"all 2 rows are variants that data.drop_variants drops \(nonsense\)"):
        prepare(data, {"method": "random"}, tmp_path / "out", base_dir=tmp_path)


def test_drop_variants_key_is_checked():
    base = {"campaign": "c", "data": {"path": "x.csv", "target_column": "y"}}
    assert resolve_config(base)["data"]["drop_variants"] == []
    with pytest.raises(ConfigError, match="data.drop_variants"):
        resolve_config({**base, "data": {**base["data"], "drop_variants": ["missense"]}})
    with pytest.raises(ConfigError, match=r"'data.drop_variants.0': 'missense' is not one of \['nonsense', 'synonymous'\]"):
        DataConfig(path="x.csv", target_column="y", drop_variants=["missense"])
    with pytest.raises(ConfigError, match="'synonymous' is recognised in data.mutations_column"):
        DataConfig(path="x.csv", target_column="y", sequence_column="s", drop_variants=["synonymous"])
    with pytest.raises(ConfigError, match="'data.drop_variants': .* has non-unique elements"):
        DataConfig(path="x.csv", target_column="y", sequence_column="s", drop_variants=["nonsense", "nonsense"])
