"""prepare_dataset / load_dataset on small synthetic tables: schema, metadata, aggregation, every split
method, every input format, campaign rounds, atomic output and speed."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lyra.data.config import DataConfig, SplitConfig
from lyra.data.dataset import Dataset, load_dataset, load_dataset_meta
from prepared import prepare
from lyra.data.readers import demo_data_path, read_table
from lyra.errors import ConfigError, DataError
from lyra.data.variants import apply_mutations, parse_mutations

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLI"  # 30 aa, positions 1..30
AA = "ACDEFGHIKLMNPQRSTVWY"


def library(n: int, seed: int = 0, max_k: int = 3) -> pd.DataFrame:
    """n distinct random variants of WT (plus WT first) with a smooth additive score."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(size=(len(WT), 20))
    rows, seen = [("WT", 0.0)], {""}
    while len(rows) < n:
        k = int(rng.integers(1, max_k + 1))
        pos = np.sort(rng.choice(len(WT), size=k, replace=False))
        muts = []
        for p in pos:
            mt = AA[int(rng.integers(20))]
            if mt != WT[p]:
                muts.append(f"{WT[p]}{p + 1}{mt}")
        key = ":".join(muts)
        if key in seen:
            continue
        seen.add(key)
        score = sum(effect[int(m[1:-1]) - 1, AA.index(m[-1])] for m in muts)
        rows.append((key or "WT", float(score)))
    return pd.DataFrame(rows, columns=["variant", "score"])


ALL_TRAIN = {"fractions": {"train": 1.0}, "valid_fraction": 0}  # every variant in train: no split to reason about


def data_cfg(path, **kw) -> dict:
    return {"path": str(path), "mutations_column": "variant", "wild_type": WT, "target_column": "score", **kw}


@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "measurements.csv"
    library(400).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------ output file


def test_schema_metadata_and_round_trip(table, tmp_path):
    out = prepare(data_cfg(table), {"method": "random", "seed": 3}, tmp_path / "data")
    assert out == tmp_path / "data" / "dataset.parquet"
    schema = pq.read_schema(out)
    assert schema.names == ["variant_id", "sequence", "mutations", "n_mutations", "score", "n_replicates", "split", "fold"]
    assert [str(t) for t in schema.types] == ["string", "string", "string", "int32", "double", "int32", "string", "int32"]
    meta = json.loads(schema.metadata[b"lyra"])
    assert meta["source_sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    assert meta["wild_type"] == WT and meta["alphabet"] == "protein" and meta["first_position"] == 1
    assert meta["targets"] == ["score"] and meta["task"] == "regression" and meta["classes"] is None
    assert meta["split_config"]["seed"] == 3 and meta["data_config"]["mutations_column"] == "variant"
    assert meta["counts"]["rows_read"] == 400 and meta["counts"]["variants"] == 400

    ds = load_dataset(out)
    assert isinstance(ds, Dataset) and ds.targets == ["score"] and ds.alphabet == "protein"
    f = ds.frame
    src = pd.read_csv(table)
    # every sequence is the wild type with the row's mutations applied; ids are canonical mutation strings
    for vid, seq, muts, n_mut in zip(f.variant_id, f.sequence, f.mutations, f.n_mutations):
        assert seq == apply_mutations(WT, parse_mutations(muts, WT))
        assert n_mut == len(parse_mutations(muts))
        assert vid == (muts or "WT")
    assert f.loc[f.variant_id == "WT", "mutations"].item() == ""
    np.testing.assert_allclose(np.sort(f.score), np.sort(src.score))
    assert sum(len(ds.split(s)) for s in ("train", "valid", "test")) == 400
    assert ds.target_array("train").shape == (len(ds.split("train")), 1)
    report = (tmp_path / "data" / "report.md").read_text()
    assert "| train | 320 | 80.0% |" in report and "## Mutation coverage per position" in report


def test_replicates_are_averaged_and_missing_targets_counted(tmp_path):
    path = tmp_path / "reps.tsv"
    path.write_text(
        "variant\tscore\n"
        "WT\t1.0\n"
        "K2A\t0.5\n"
        "K2A\t0.7\n"
        "A4G;K2A\t0.1\n"  # the same variant as K2A:A4G, written differently
        "K2A:A4G\t0.3\n"
        "Y5F\tNaN\n"
        "k2a\t0.9\n"  # lower case K2A
    )
    prepare(data_cfg(path), {"method": "random", "fractions": {"train": 1.0}, "valid_fraction": 0}, tmp_path / "o")
    ds = load_dataset(tmp_path / "o" / "dataset.parquet")
    f = ds.frame.set_index("variant_id")
    assert f.loc["K2A", "score"] == pytest.approx(0.7) and f.loc["K2A", "n_replicates"] == 3
    assert f.loc["K2A:A4G", "score"] == pytest.approx(0.2) and f.loc["K2A:A4G", "n_replicates"] == 2
    assert "Y5F" not in f.index and len(f) == 3
    assert ds.meta["counts"]["replicate_rows_merged"] == 3
    assert ds.meta["counts"]["rows_dropped_missing_target"] == 1
    report = (tmp_path / "o" / "report.md").read_text()
    assert "| replicate rows merged into an earlier row (same sequence) | 3 |" in report

    prepare(data_cfg(path, aggregate="median"), ALL_TRAIN, tmp_path / "m")
    assert load_dataset(tmp_path / "m" / "dataset.parquet").frame.set_index("variant_id").loc["K2A", "score"] == pytest.approx(0.7)
    with pytest.raises(DataError, match=r"row 4: the same sequence appears on an earlier row"):
        prepare(data_cfg(path, aggregate="error"), None, tmp_path / "e")


def test_multiple_targets_and_counts(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text("variant,a,b,reads\nWT,1,10,100\nK2A,2,,50\nT3S,3,30,5\nT3S,5,50,7\nY5F,4,40,2\n")
    cfg = data_cfg(path, target_column=["a", "b"], count_column="reads", min_count=3)
    prepare(cfg, ALL_TRAIN, tmp_path / "o")
    ds = load_dataset(tmp_path / "o" / "dataset.parquet")
    f = ds.frame.set_index("variant_id")
    assert ds.targets == ["a", "b"] and list(f.index) == ["WT", "T3S"]
    assert f.loc["T3S", ["a", "b"]].tolist() == [4.0, 40.0] and f.loc["T3S", "count"] == 12
    assert ds.meta["counts"]["missing_target"] == {"a": 0, "b": 1}
    assert ds.meta["counts"]["rows_dropped_below_min_count"] == 1
    assert ds.target_array().shape == (2, 2)


def test_classification(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text("variant,label\nWT,binder\nK2A,binder\nT3S,non-binder\nY5F,\nI6V,non-binder\n")
    prepare(data_cfg(path, target_column="label", task="classification"),
                    ALL_TRAIN, tmp_path / "o")
    ds = load_dataset(tmp_path / "o" / "dataset.parquet")
    assert ds.classes == ["binder", "non-binder"]
    assert pq.read_schema(tmp_path / "o" / "dataset.parquet").field("label").type == pa.string()
    assert ds.target_array().tolist() == [0, 0, 1, 1]
    assert "| non-binder | 2 | 0 | 0 |" in (tmp_path / "o" / "report.md").read_text()


def test_dna_and_rna_measurements(tmp_path):
    dna = tmp_path / "dna.csv"
    dna.write_text("variant,score\nWT,0\nT2G,1\nG3C;C5A,2\n")
    ds = load_dataset(prepare(data_cfg(dna, wild_type="ATGGCTAAA", alphabet="dna"), ALL_TRAIN, tmp_path / "d"))
    assert ds.alphabet == "dna"
    assert dict(zip(ds.frame.variant_id, ds.frame.sequence)) == {
        "WT": "ATGGCTAAA", "T2G": "AGGGCTAAA", "G3C:C5A": "ATCGATAAA"}
    rna = tmp_path / "rna.csv"
    rna.write_text("sequence,score\naugGCU,0\nAUGGCA,1\nACGGCU,2\n")
    cfg = {"path": str(rna), "sequence_column": "sequence", "alphabet": "rna", "target_column": "score"}
    ds = load_dataset(prepare(cfg, ALL_TRAIN, tmp_path / "r"))
    assert ds.alphabet == "rna" and sorted(ds.frame.sequence) == ["ACGGCU", "AUGGCA", "AUGGCU"]
    rna.write_text("sequence,score\nAUGGCU,0\nATGGCA,1\n")  # T is DNA, not RNA
    with pytest.raises(DataError, match=r"rna\.csv, row 3: .*'T' at position 2 is not in the rna alphabet"):
        prepare(cfg, ALL_TRAIN, tmp_path / "r2")
    assert not (tmp_path / "r2").exists()


def test_first_position_offset_end_to_end(tmp_path):
    """Mutations numbered from 126 (a domain cut out of a longer protein): sequences, ids, report, errors."""
    path = tmp_path / "m.csv"
    path.write_text("variant,score\nWT,0\nK127A,1\nT128S:Y130F,2\nI131V,3\n")
    f = load_dataset(prepare(data_cfg(path, first_position=126), ALL_TRAIN, tmp_path / "o")).frame
    assert dict(zip(f.variant_id, f.sequence)) == {
        "WT": WT, "K127A": "MA" + WT[2:], "T128S:Y130F": "MKSAF" + WT[5:], "I131V": WT[:5] + "V" + WT[6:]}
    assert "| 130 | Y | 1 | 0 | 0 | F |" in (tmp_path / "o" / "report.md").read_text()
    path.write_text("variant,score\nK127A,1\nM1A,2\n")  # 1-based numbering by mistake
    with pytest.raises(DataError, match=r"m\.csv, row 3: .*position 1 is outside the wild type \(positions 126\.\.155"):
        prepare(data_cfg(path, first_position=126), None, tmp_path / "o2")


def test_unequal_lengths_allowed_when_asked(tmp_path):
    path = tmp_path / "seqs.csv"
    path.write_text(f"sequence,score\n{WT},1\n{WT[:-2]},2\nAC{WT[2:]},3\n")
    cfg = {"path": str(path), "sequence_column": "sequence", "wild_type": WT, "target_column": "score"}
    with pytest.raises(DataError, match="row 3: sequence length 28 differs"):
        prepare(cfg, None, tmp_path / "o")
    prepare({**cfg, "equal_length": False}, ALL_TRAIN, tmp_path / "o")
    f = load_dataset(tmp_path / "o" / "dataset.parquet").frame
    assert f.variant_id.tolist() == ["WT", "seq2", "M1A:K2C"]
    assert f.mutations.isna().tolist() == [False, True, False]
    assert f.n_mutations.isna().tolist() == [False, True, False]


# ------------------------------------------------------------------------------------------ formats


def test_formats_agree(tmp_path):
    lib = library(60)
    lib["sequence"] = [apply_mutations(WT, parse_mutations(v, WT)) for v in lib.variant]
    lib.to_csv(tmp_path / "t.csv", index=False)
    with gzip.open(tmp_path / "t.tsv.gz", "wt") as fh:
        lib.to_csv(fh, sep="\t", index=False)
    lib.to_parquet(tmp_path / "t.parquet")
    with open(tmp_path / "t.fasta", "w") as fh:
        for i, row in lib.iterrows():
            fh.write(f">v{i} fitness={row.score!r} note=x\n{row.sequence[:15]}\n{row.sequence[15:]}\n")
    frames = {}
    for name in ("t.csv", "t.tsv.gz", "t.parquet"):
        prepare(data_cfg(tmp_path / name), {"seed": 1}, tmp_path / name.replace(".", "_"))
        frames[name] = load_dataset(tmp_path / name.replace(".", "_") / "dataset.parquet").frame
    fasta_cfg = {"path": str(tmp_path / "t.fasta"), "wild_type": WT, "target_column": "score", "fasta_label_key": "fitness"}
    prepare(fasta_cfg, {"seed": 1}, tmp_path / "fa")
    fa = load_dataset(tmp_path / "fa" / "dataset.parquet").frame
    for f in frames.values():
        pd.testing.assert_frame_equal(f, frames["t.csv"])
    assert fa.variant_id.tolist() == [f"v{i}" for i in range(60)]  # FASTA: the record id is the variant id
    assert fa.sequence.tolist() == frames["t.csv"].sequence.tolist()
    np.testing.assert_array_equal(fa.score, frames["t.csv"].score)
    assert fa.split.tolist() == frames["t.csv"].split.tolist()


def test_read_table_line_numbers(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes("\ufeffa,b\n1,2\n\n3,4\n".encode())
    t = read_table(p)
    assert list(t.columns) == ["a", "b"] and t.index.tolist() == [2, 4]  # BOM dropped; blank line 3 skipped
    fa = tmp_path / "x.fa"
    fa.write_text(">r1 k=1\nAC\nDE\n>r2 k=2\nFG\n")
    t = read_table(fa)
    assert t.index.tolist() == [1, 4] and t.sequence.tolist() == ["ACDE", "FG"] and t.k.tolist() == ["1", "2"]


# ------------------------------------------------------------------------------------------ splits


def _prepare(table, tmp_path, split, name="o", **data_kw):
    prepare(data_cfg(table, **data_kw), split, tmp_path / name)
    return load_dataset(tmp_path / name / "dataset.parquet")


def test_random_split_is_seeded(table, tmp_path):
    a = _prepare(table, tmp_path, {"seed": 5}, "a").frame
    b = _prepare(table, tmp_path, {"seed": 5}, "b").frame
    c = _prepare(table, tmp_path, {"seed": 6}, "c").frame
    assert a.split.tolist() == b.split.tolist() != c.split.tolist()
    assert a.split.value_counts().to_dict() == {"train": 320, "valid": 40, "test": 40}
    assert (a.fold == -1).all()
    assert (tmp_path / "a" / "dataset.parquet").read_bytes() == (tmp_path / "b" / "dataset.parquet").read_bytes()


def test_kfold(table, tmp_path):
    folds = [_prepare(table, tmp_path, {"method": "kfold", "n_folds": 4, "test_fold": k}, f"k{k}").frame for k in range(4)]
    f0 = folds[0]
    assert sorted(f0.fold.value_counts().tolist()) == [100, 100, 100, 100]
    tests = [set(f.variant_id[f.split == "test"]) for f in folds]
    assert all(len(t) == 100 for t in tests)
    assert set().union(*tests) == set(f0.variant_id) and sum(map(len, tests)) == 400  # disjoint, covering
    assert (f0.split[f0.fold == 0] == "test").all()
    assert ((f0.split == "valid") == (f0.fold != 0) & (f0.split != "train")).all()
    assert (f0.split == "valid").sum() == 30  # 10% of the 300 training variants


def test_n_mutations(table, tmp_path):
    for k in (0, 1, 2):
        f = _prepare(table, tmp_path, {"method": "n_mutations", "max_train_mutations": k}, f"n{k}").frame
        assert (f.n_mutations[f.split != "test"] <= k).all() and (f.n_mutations[f.split == "test"] > k).all()
        n_train = int((f.n_mutations <= k).sum())
        assert (f.split == "valid").sum() == round(0.1 * n_train)


def test_threshold(table, tmp_path):
    f = _prepare(table, tmp_path, {"method": "threshold"}).frame
    assert (f.score[f.split != "test"] < 0.0).all() and (f.score[f.split == "test"] >= 0.0).all()  # WT score 0
    assert f.split[f.variant_id == "WT"].item() == "test"  # "below the wild type" excludes it
    g = _prepare(table, tmp_path, {"method": "threshold", "threshold": 1.5}, "t2").frame
    assert (g.score[g.split == "test"] >= 1.5).all() and (g.split == "test").sum() == (g.score >= 1.5).sum()


def test_positions_holds_out_positions(table, tmp_path):
    ds = _prepare(table, tmp_path, {"method": "positions", "test_positions": [2, 5, 9]})
    f = ds.frame
    pos = [{int(m[1:-1]) for m in v.split(":")} if v else set() for v in f.mutations]
    held = {2, 5, 9}
    for p, s in zip(pos, f.split):
        assert (p <= held and p) if s == "test" else not (p & held)
    n_mixed = sum(1 for p in library(400).variant if (q := {int(m[1:-1]) for m in p.split(":") if m != "WT"}) & held and q - held)
    assert ds.meta["counts"]["variants_dropped_mixed_positions"] == n_mixed > 0
    assert len(f) == 400 - n_mixed
    # random held-out positions: the same guarantee, seeded
    r = _prepare(table, tmp_path, {"method": "positions", "seed": 2}, "r")
    held = set(r.meta["split_info"]["test_positions"])
    assert len(held) == round(0.1 * 30)
    train_pos = {int(m[1:-1]) for v in r.frame.mutations[r.frame.split != "test"] if v for m in v.split(":")}
    assert not train_pos & held and (r.frame.split == "test").any()


def test_column_split_with_valid_column_and_exclude(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("variant,score,set,validation\nWT,0,train,\nK2A,1,train,True\nT3S,2,test,\nY5F,3,holdout,\nI6V,4,TRAIN,False\n")
    split = {"method": "column", "column": "set", "valid_column": "validation",
             "mapping": {"train": "train", "test": "test", "holdout": "exclude"}}
    ds = _prepare(path, tmp_path, split)
    assert dict(zip(ds.frame.variant_id, ds.frame.split)) == {"WT": "train", "K2A": "valid", "T3S": "test", "I6V": "train"}
    assert ds.meta["counts"]["rows_excluded_by_split"] == 1
    path.write_text("variant,score,set,validation\nWT,0,train,\nK2A,1,test,yes\n")
    with pytest.raises(DataError, match="row 3: .*marks a test row as validation"):
        _prepare(path, tmp_path, split, "bad")


def test_index_files(table, tmp_path):
    (tmp_path / "tr.txt").write_text("\n".join(map(str, range(0, 300))) + "\n")
    (tmp_path / "va.txt").write_text("\n".join(map(str, range(300, 340))))
    (tmp_path / "te.txt").write_text("\n".join(map(str, range(340, 390))))
    split = {"method": "index_files", "index_files": {"train": "tr.txt", "valid": "va.txt", "test": "te.txt"}}
    prepare(data_cfg(table), split, tmp_path / "o", base_dir=tmp_path)
    ds = load_dataset(tmp_path / "o" / "dataset.parquet")
    src = pd.read_csv(table)
    assert ds.frame.split.value_counts().to_dict() == {"train": 300, "test": 50, "valid": 40}
    assert ds.frame.variant_id[ds.frame.split == "test"].tolist() == src.variant[340:390].tolist()
    assert ds.meta["counts"]["rows_excluded_by_split"] == 10  # rows 390..399 are in no file
    (tmp_path / "te.txt").write_text("340\n5\n")
    with pytest.raises(DataError, match=r"te.txt, row 2: row index 5 is already listed for train"):
        prepare(data_cfg(table), split, tmp_path / "bad", base_dir=tmp_path)


def test_every_split_method_of_the_schema_has_one_function():
    from lyra.data.splits import METHODS
    from lyra.schema import section_schema

    assert list(METHODS) == section_schema("split")["properties"]["method"]["enum"]


def test_valid_always_comes_from_training(table, tmp_path):
    for split in ({"method": "n_mutations"}, {"method": "threshold"}, {"method": "kfold"}):
        f = _prepare(table, tmp_path, split, split["method"]).frame
        test_ids = set(f.variant_id[f.split == "test"])
        g = _prepare(table, tmp_path, {**split, "valid_fraction": 0.0}, split["method"] + "0").frame
        assert set(g.variant_id[g.split == "test"]) == test_ids  # valid changes nothing about test
        assert (g.split != "valid").all()


# ------------------------------------------------------------------------------------------ rounds, atomicity


def test_rounds_are_appended_to_training(table, tmp_path):
    base = _prepare(table, tmp_path, {"method": "random", "seed": 1}, "r0").frame
    round1 = tmp_path / "round1.csv"
    round1.write_text("variant,score\nK2A:T3S:Y5F:I6V,9.0\nWT,0.5\n")  # a new variant and a re-measured WT
    prepare(data_cfg(table), {"method": "random", "seed": 1}, tmp_path / "r1", rounds=[round1])
    ds = load_dataset(tmp_path / "r1" / "dataset.parquet")
    f = ds.frame.set_index("variant_id")
    assert f.loc["K2A:T3S:Y5F:I6V", "split"] == "train"
    assert f.loc["WT", "n_replicates"] == 2 and f.loc["WT", "score"] == pytest.approx(0.25)
    b = base.set_index("variant_id")
    assert (f.loc[b.index, "split"] == b.split).all()  # the data file's variants keep their split
    assert ds.meta["counts"]["variants_only_in_rounds"] == 1 and len(ds.meta["sources"]) == 2
    round1.write_text("variant,score\nK2A,oops\n")
    with pytest.raises(DataError, match=r"round1.csv, row 2: column 'score'"):
        prepare(data_cfg(table), None, tmp_path / "r2", rounds=[round1])


def test_max_mutations_keeps_the_low_order_variants_of_the_data_file_only(table, tmp_path):
    round1 = tmp_path / "round1.csv"
    round1.write_text("variant,score\nK2A:T3S:Y5F:I6V,9.0\n")  # 4 mutations: a round file is kept whole
    prepare(data_cfg(table, max_mutations=1), {"method": "random", "seed": 1}, tmp_path / "out",
                    rounds=[round1])
    ds = load_dataset(tmp_path / "out" / "dataset.parquet")
    full = pd.read_csv(table)
    n_low = sum(v == "WT" or len(parse_mutations(v, WT)) <= 1 for v in full["variant"])
    assert len(ds.frame) == n_low + 1 and "K2A:T3S:Y5F:I6V" in set(ds.frame.variant_id)
    assert ds.frame.loc[ds.frame.variant_id != "K2A:T3S:Y5F:I6V", "n_mutations"].max() == 1
    assert ds.meta["counts"]["variants_dropped_above_max_mutations"] == len(full) - n_low
    assert "more mutations than data.max_mutations" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ConfigError, match="data.wild_type: required with data.max_mutations"):
        DataConfig.from_dict({"path": str(table), "sequence_column": "s", "target_column": "score", "max_mutations": 2})
    with pytest.raises(ConfigError, match="'data.max_mutations': -1 is less than the minimum of 0"):
        DataConfig.from_dict(data_cfg(table, max_mutations=-1))


def test_failure_leaves_previous_outputs_untouched(table, tmp_path):
    out = tmp_path / "data"
    prepare(data_cfg(table), None, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("variant,score\nK2A,1\nQ99A,2\n")
    with pytest.raises(DataError, match="bad.csv, row 3"):
        prepare(data_cfg(bad), None, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, nothing replaced


# ------------------------------------------------------------------------------------------ configs, misc


def test_configs_reject_unknown_and_bad_keys():
    with pytest.raises(ConfigError, match="unknown config key 'data.sequence_colum' \\(did you mean 'data.sequence_column'"):
        DataConfig.from_dict({"path": "x.csv", "sequence_colum": "s"})
    for missing in ("path", "target_column"):
        with pytest.raises(ConfigError, match=f"config key 'data.{missing}' is required"):
            DataConfig.from_dict({k: v for k, v in {"path": "x.csv", "target_column": "y"}.items() if k != missing})
    with pytest.raises(ConfigError, match="config key 'data.target_column' is required"):
        DataConfig.from_dict({"path": "x.csv", "target_column": None})
    with pytest.raises(ConfigError, match="'split.n_folds': 1 is less than the minimum of 2"):
        SplitConfig.from_dict({"method": "kfold", "n_folds": 1})
    with pytest.raises(ConfigError, match="split.test_fold: must be in 0..4"):
        SplitConfig.from_dict({"method": "kfold", "test_fold": 5})
    with pytest.raises(ConfigError, match="split.column: required"):
        SplitConfig.from_dict({"method": "column"})
    with pytest.raises(ConfigError, match="split.index_files: required"):
        SplitConfig.from_dict({"method": "index_files"})
    with pytest.raises(ConfigError, match="config key 'split.index_files.test' is required"):
        SplitConfig.from_dict({"method": "index_files", "index_files": {"train": "tr.txt"}})
    with pytest.raises(ConfigError, match="'split.mapping.set1': 'training' is not one of"):
        SplitConfig.from_dict({"method": "column", "column": "set", "mapping": {"set1": "training"}})
    with pytest.raises(ConfigError, match="split.threshold: must be finite"):
        SplitConfig.from_dict({"method": "threshold", "threshold": float("inf")})
    with pytest.raises(ConfigError, match="data.wild_type: required"):
        DataConfig.from_dict({"path": "x.csv", "mutations_column": "v", "target_column": "y"})
    with pytest.raises(ConfigError, match="'data.first_position': '1' is not of type 'integer'"):
        DataConfig.from_dict({"path": "x.csv", "target_column": "y", "first_position": "1"})
    for clash in ("split", ["y", "count"]):
        with pytest.raises(ConfigError, match="'data.target_column.*should not be valid"):
            DataConfig.from_dict({"path": "x.csv", "target_column": clash})
    with pytest.raises(ConfigError, match="'data.target_column': \\['y', 'y'\\] has non-unique elements"):
        DataConfig.from_dict({"path": "x.csv", "target_column": ["y", "y"]})
    with pytest.raises(ConfigError, match="data.target_column: classification takes one class column"):
        DataConfig.from_dict({"path": "x.csv", "target_column": ["a", "b"], "task": "classification"})
    assert SplitConfig.from_dict({"fractions": {"train": 0.9, "test": 0.1}}).fractions == {"train": 0.9, "valid": 0.0, "test": 0.1}
    assert DataConfig.from_dict({"path": "x", "target_column": ["a", "b"]}).targets == ["a", "b"]


@pytest.mark.parametrize("load", [load_dataset, load_dataset_meta])
def test_load_dataset_rejects_foreign_parquet(tmp_path, load):
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(DataError, match="x.parquet.*not a lyra dataset"):
        load(tmp_path / "x.parquet")
    with pytest.raises(DataError, match="missing.parquet.*not found"):
        load(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_text("variant,fitness\n")
    with pytest.raises(DataError, match="bad.parquet.*cannot read as Parquet"):
        load(tmp_path / "bad.parquet")


def test_load_dataset_meta_is_the_datasets_meta(table, tmp_path):
    out = prepare(data_cfg(table), {"method": "random", "seed": 3}, tmp_path / "data")
    assert load_dataset_meta(out) == load_dataset(out).meta


def test_demo_data_path():
    import yaml

    from lyra.data.readers import DEMO_DATA

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    assert config["data"]["path"] == DEMO_DATA
    path = demo_data_path()
    assert path.name == "cr6261_h1_mean.csv" and path.is_file()
    assert len(pd.read_csv(path)) == 2048


def test_150k_rows_preprocess_in_seconds(tmp_path):
    # every quadruple combination at 4 positions (GB1-like) plus replicates: 160,000 rows
    positions = [2, 5, 9, 17]
    combos = itertools.product(AA, repeat=4)
    variants = [":".join(f"{WT[p - 1]}{p}{a}" for p, a in zip(positions, c) if a != WT[p - 1]) or "WT" for c in combos]
    rng = np.random.default_rng(0)
    pd.DataFrame({"variant": variants, "score": rng.normal(size=len(variants))}).to_csv(tmp_path / "big.csv", index=False)
    t0 = time.perf_counter()
    prepare(data_cfg(tmp_path / "big.csv"), {"method": "n_mutations", "max_train_mutations": 2}, tmp_path / "o")
    elapsed = time.perf_counter() - t0
    ds = load_dataset(tmp_path / "o" / "dataset.parquet")
    assert len(ds.frame) == 160_000
    assert (ds.frame.split != "test").sum() == 1 + 4 * 19 + 6 * 19**2
    assert elapsed < 20, f"160k rows took {elapsed:.1f} s"
