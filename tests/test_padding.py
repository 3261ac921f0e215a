"""data.padding: sequences padded to one width with a filler letter (the CDR3 files pad with J) are
stripped at both ends, in the training data and in a `file` design library alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from lyra.data.config import DataConfig
from lyra.data.dataset import load_dataset
from prepared import prepare
from lyra.errors import ConfigError, DataError
from lyra.design.library import LibraryConfig, iter_library, library_size
from lyra.design.scoring import score_shard

ALL_TRAIN = {"fractions": {"train": 1.0}, "valid_fraction": 0}
PADDED = [  # width 12, padded on the right and sometimes on the left
    ("JJAAYDYWFDYJ", 1.0),
    ("ARDSYDYYAJJJ", 0.5),
    ("JJJAIDHSSSYJ", -0.2),
    ("AAPASSDDYFDY", 0.1),
]


def write(path, rows, column="CDR3"):
    pd.DataFrame(rows, columns=[column, "enrichment"][: len(rows[0])]).to_csv(path, index=False)
    return path


def data(path, **kw) -> dict:
    return {"path": str(path), "sequence_column": "CDR3", "target_column": "enrichment", **kw}


def test_padded_table_is_stripped_at_both_ends(tmp_path):
    table = write(tmp_path / "cdr3.csv", PADDED)
    ds = load_dataset(prepare(data(table, padding="J"), ALL_TRAIN, tmp_path / "out"))
    assert ds.frame["sequence"].tolist() == ["AAYDYWFDY", "ARDSYDYYA", "AIDHSSSY", "AAPASSDDYFDY"]
    assert not ds.frame["sequence"].str.contains("J").any()
    assert ds.meta["data_config"]["padding"] == "J"


def test_padding_is_compared_after_uppercasing(tmp_path):
    table = write(tmp_path / "cdr3.csv", [("jjaaydywfdyj", 1.0), ("ARDSYDYYAJJJ", 0.5)])
    ds = load_dataset(prepare(data(table, padding="j"), ALL_TRAIN, tmp_path / "out"))
    assert ds.frame["sequence"].tolist() == ["AAYDYWFDY", "ARDSYDYYA"]


def test_padding_inside_a_sequence_is_a_one_line_error_with_the_row(tmp_path):
    table = write(tmp_path / "cdr3.csv", PADDED[:2] + [("JJAAIJHSSSYJ", 0.3)])
    with pytest.raises(DataError) as e:
        prepare(data(table, padding="J"), ALL_TRAIN, tmp_path / "out")
    message = str(e.value)
    assert "\n" not in message
    assert str(table) in message and "row 4" in message
    assert "padding letter 'J' (data.padding) at character 6" in message
    assert not (tmp_path / "out" / "dataset.parquet").exists()


def test_a_row_of_padding_only_is_an_error(tmp_path):
    table = write(tmp_path / "cdr3.csv", PADDED[:2] + [("JJJJJJJJJJJJ", 0.3)])
    with pytest.raises(DataError, match=r"row 4: column 'CDR3': the sequence is only padding"):
        prepare(data(table, padding="J"), ALL_TRAIN, tmp_path / "out")


def test_equal_length_checks_the_padded_width(tmp_path):
    table = write(tmp_path / "cdr3.csv", PADDED + [("AAYDYJJ", 0.0)])
    with pytest.raises(DataError, match=r"row 6: padded width 7 differs .* width 12 .*data.equal_length: false"):
        prepare(data(table, padding="J"), ALL_TRAIN, tmp_path / "out")
    ds = load_dataset(prepare(data(table, padding="J", equal_length=False), ALL_TRAIN, tmp_path / "out"))
    assert "AAYDY" in set(ds.frame["sequence"])


def test_without_the_key_the_error_hints_at_it(tmp_path):
    table = write(tmp_path / "cdr3.csv", PADDED)
    with pytest.raises(DataError) as e:
        prepare(data(table), ALL_TRAIN, tmp_path / "out")
    message = str(e.value)
    assert "row 2" in message and "character 'J' at position 1 is not in the protein alphabet" in message
    assert "set data.padding: J" in message


def test_no_hint_for_a_letter_inside_the_sequence(tmp_path):
    table = write(tmp_path / "cdr3.csv", [("AAYDJWFDYAAA", 1.0)])
    with pytest.raises(DataError) as e:
        prepare(data(table), ALL_TRAIN, tmp_path / "out")
    assert "data.padding" not in str(e.value)


@pytest.mark.parametrize("bad", ["A", "X", "JJ", " ", "*"])
def test_bad_padding_values(bad):
    with pytest.raises(ConfigError, match="data.padding"):
        DataConfig.from_dict({"path": "x.csv", "target_column": "y", "padding": bad})


def test_schema_accepts_the_key():
    from lyra.schema import load_schema

    padding = load_schema()["properties"]["data"]["properties"]["padding"]
    assert padding["default"] is None and "string" in padding["type"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised model: scoring only has to see the right tokens."""
    from lyra.model.lyra import Lyra, LyraConfig

    path = tmp_path_factory.mktemp("model") / "seed0.pt"
    torch.manual_seed(0)
    cfg = LyraConfig(d_model=8, d_state=4, dropout=0.0)
    torch.save({"model_config": cfg.to_dict(), "state_dict": Lyra.from_config(cfg).state_dict(),
                "alphabet": "protein", "targets": ["enrichment"], "task": "regression",
                "target_transform": {"kind": "standardize", "mean": [0.0], "std": [1.0]}, "seed": 0}, path)
    return path


def test_padded_file_library_streams_unpadded_sequences(tmp_path):
    lib_path = write(tmp_path / "candidates.csv", [(s,) for s, _ in PADDED])
    cfg = LibraryConfig(kind="file", path=str(lib_path))
    assert library_size(cfg, None, padding="J") == 4
    chunks = list(iter_library(cfg, None, padding="J", exclude=["AAPASSDDYFDY"]))
    seqs = [s for c in chunks for s in c.sequences()]
    assert seqs == ["AAYDYWFDY", "ARDSYDYYA", "AIDHSSSY"]
    assert chunks[0].mask is not None and chunks[0].mask.sum(axis=1).tolist() == [9, 9, 8]
    with pytest.raises(DataError, match="set data.padding: J"):
        library_size(cfg, None)


def test_padded_file_library_scores_without_a_wild_type(checkpoint, tmp_path):
    from lyra.learn.checkpoints import load_checkpoint, predict_sequences

    table = write(tmp_path / "cdr3.csv", PADDED[:2])
    measured = load_dataset(prepare(data(table, padding="J"), ALL_TRAIN, tmp_path / "ds"))
    lib_path = write(tmp_path / "candidates.csv", [(s,) for s, _ in PADDED])
    out = score_shard([checkpoint], LibraryConfig(kind="file", path=str(lib_path)), None, 1, "protein", 0, 1,
                      tmp_path / "scores.parquet", exclude=measured.frame["sequence"].tolist(), progress=False,
                      padding="J")
    df = pq.read_table(out).to_pandas()
    assert df["sequence"].tolist() == ["AIDHSSSY", "AAPASSDDYFDY"]  # the two measured ones excluded
    assert df["variant_id"].tolist() == ["seq4", "seq5"] and df["mutations"].isna().all()
    # the scores are the model's predictions on the unpadded sequences
    model, info = load_checkpoint(checkpoint)
    direct = predict_sequences(model, info, df["sequence"].tolist())[:, 0]
    np.testing.assert_allclose(df["score_0"], direct, rtol=1e-4, atol=1e-5)
