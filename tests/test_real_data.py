"""The data layer on public datasets: published split sizes are reproduced exactly.

The tests that read ../shared/data take the `data` fixture and skip where it is missing; the CR6261
landscape also ships in the `ewht` package, so its test always runs. Sizes below are from
/work/shared/data/README.md.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from lyra.data.dataset import load_dataset
from prepared import prepare
from lyra.data.readers import demo_data_path, read_table
from lyra.data.variants import apply_mutations, parse_mutations, read_wild_type

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

GB1_SITES = (39, 40, 41, 54)  # the four randomised sites of Wu et al. 2016, 1-based on the 56-aa domain
FLIP_SIZES = {  # split: (train incl. validation, test, validation)
    "one_vs_rest": (28, 8705, 3),
    "two_vs_rest": (424, 8309, 43),
    "three_vs_rest": (2990, 5743, 299),
    "low_vs_high": (5089, 3644, 509),
    "sampled": (6988, 1745, 699),
}


def gb1_four_site_to_mutations(variants: pd.Series, wild_type: str) -> list[str]:
    """Wu et al.'s 4-letter codes ('VDGV' = WT) -> mutation strings ('V39A:D40C'; '' for the wild type)."""
    return [
        ":".join(f"{wild_type[p - 1]}{p}{a}" for p, a in zip(GB1_SITES, code) if a != wild_type[p - 1])
        for code in variants
    ]


def counts(ds) -> dict:
    return ds.frame.split.value_counts().to_dict()


@pytest.fixture(scope="module")
def data() -> Path:
    """../shared/data, for the tests that read it (they skip where it is missing)."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not found")
    return DATA


@pytest.fixture(scope="module")
def flip_dir(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flip")
    with zipfile.ZipFile(data / "gb1_flip" / "splits.zip") as z:
        for name in FLIP_SIZES:
            (out / f"{name}.csv").write_bytes(z.read(f"splits/{name}.csv"))
    return out


def flip_data(flip_dir: Path, name: str) -> dict:
    return {"path": str(flip_dir / f"{name}.csv"), "sequence_column": "sequence", "target_column": "target",
            "wild_type": str(DATA / "gb1_flip" / "5LDE_1.fasta")}


def test_gb1_four_site(data, tmp_path):
    wt = read_wild_type(str(data / "gb1_wu2016" / "2GI9.fasta"))
    assert len(wt) == 56
    raw = read_table(data / "gb1_wu2016" / "Gb1Dataset.csv")  # UTF-8 with BOM
    assert list(raw.columns[:2]) == ["Variants", "HD"]
    table = pd.DataFrame({"mutations": gb1_four_site_to_mutations(raw.Variants, wt), "fitness": raw.Fitness.to_numpy(),
                          "variant": raw.Variants.to_numpy()})
    table.to_csv(tmp_path / "gb1.csv", index=False)
    prepare({"path": str(tmp_path / "gb1.csv"), "mutations_column": "mutations", "wild_type": wt,
                     "target_column": "fitness", "id_column": "variant"},
                    {"method": "n_mutations", "max_train_mutations": 2}, tmp_path / "out")
    ds = load_dataset(tmp_path / "out" / "dataset.parquet")
    f = ds.frame
    assert len(f) == 149_361 and ds.meta["counts"]["replicate_rows_merged"] == 0
    assert (f.sequence.str.len() == 56).all()
    assert f.n_mutations.tolist() == raw.HD.astype(int).tolist()
    assert f.loc[f.variant_id == "VDGV", "fitness"].item() == 1.0
    assert f.fitness.max() == pytest.approx(8.76, abs=0.01) and f.variant_id[f.fitness.idxmax()] == "FWAA"
    assert (f.fitness > 1.0).sum() == 3643
    # the sequences agree with the derived 56-aa table shipped beside it
    derived = pd.read_csv(data / "gb1_wu2016" / "gb1_4site_56aa_with_flip_splits.csv.gz", usecols=["Variants", "sequence_56aa"])
    assert dict(zip(f.variant_id, f.sequence)) == dict(zip(derived.Variants, derived.sequence_56aa))


@pytest.mark.parametrize("name", list(FLIP_SIZES))
def test_flip_gb1_column_split(flip_dir, tmp_path, name):
    split = {"method": "column", "column": "set", "valid_column": "validation"}
    prepare(flip_data(flip_dir, name), split, tmp_path)
    ds = load_dataset(tmp_path / "dataset.parquet")
    train, test, valid = FLIP_SIZES[name]
    assert counts(ds) == {"train": train - valid, "valid": valid, "test": test}
    assert len(ds.frame) == 8733 and (ds.frame.sequence.str.len() == 265).all()
    assert ds.frame.n_mutations.max() == 4  # only the four GB1 sites vary


def test_flip_gb1_fasta_headers(data, tmp_path):
    # FLIP's FASTA release: ">Sequence0 TARGET=1.0 SET=train VALIDATION=False"
    with zipfile.ZipFile(data / "gb1_flip" / "splits.zip") as z:
        (tmp_path / "sampled.fasta").write_bytes(z.read("splits/sampled.fasta"))
    cfg = {"path": str(tmp_path / "sampled.fasta"), "target_column": "fitness", "fasta_label_key": "TARGET"}
    prepare(cfg, {"method": "column", "column": "SET", "valid_column": "VALIDATION"}, tmp_path / "out")
    ds = load_dataset(tmp_path / "out" / "dataset.parquet")
    assert counts(ds) == {"train": 6988 - 699, "valid": 699, "test": 1745}
    assert ds.frame.variant_id.iloc[0] == "Sequence0" and ds.targets == ["fitness"]


@pytest.mark.parametrize("k, name", [(1, "one_vs_rest"), (2, "two_vs_rest"), (3, "three_vs_rest")])
def test_flip_n_vs_rest_from_n_mutations(flip_dir, tmp_path, k, name):
    prepare(flip_data(flip_dir, name), {"method": "n_mutations", "max_train_mutations": k}, tmp_path)
    ds = load_dataset(tmp_path / "dataset.parquet")
    flip = pd.read_csv(flip_dir / f"{name}.csv")
    mine = dict(zip(ds.frame.sequence, ds.frame.split.replace({"valid": "train"})))
    assert [mine[s] for s in flip.sequence] == flip.set.tolist()  # the same variants, not only the sizes
    train, test, _ = FLIP_SIZES[name]
    c = counts(ds)
    assert (c["train"] + c["valid"], c["test"]) == (train, test)
    assert c["valid"] == round(0.1 * train)


def test_flip_low_vs_high_from_threshold(flip_dir, tmp_path):
    # FLIP: "train = fitness below WT"; the WT itself (fitness 1.0) is a test variant
    prepare(flip_data(flip_dir, "low_vs_high"), {"method": "threshold"}, tmp_path)
    ds = load_dataset(tmp_path / "dataset.parquet")
    assert ds.meta["split_info"]["threshold"] == 1.0
    flip = pd.read_csv(flip_dir / "low_vs_high.csv")
    mine = dict(zip(ds.frame.sequence, ds.frame.split.replace({"valid": "train"})))
    assert [mine[s] for s in flip.sequence] == flip.set.tolist()
    c = counts(ds)
    assert (c["train"] + c["valid"], c["test"]) == (5089, 3644)


def test_gfp_metl_standard_split(data, tmp_path):
    gfp = data / "gfp_sarkisyan2016"
    (standard,) = (gfp / "metl_splits" / "standard").iterdir()
    split = {"method": "index_files",
             "index_files": {"train": str(standard / "train.txt"), "valid": str(standard / "val.txt"),
                             "test": str(standard / "test.txt")}}
    prepare({"path": str(gfp / "avgfp.tsv"), "mutations_column": "variant", "first_position": 0,
                     "wild_type": str(gfp / "avgfp_wt.fasta"), "target_column": "score"}, split, tmp_path)
    ds = load_dataset(tmp_path / "dataset.parquet")
    assert counts(ds) == {"train": 37_232, "valid": 4_655, "test": 4_655}
    assert ds.meta["counts"]["rows_excluded_by_split"] == 5_172  # METL's super-test rows, held out from all
    src = pd.read_csv(gfp / "avgfp.tsv", sep="\t")
    test_rows = [int(x) for x in (standard / "test.txt").read_text().split()]
    test = ds.split("test")
    assert set(test.variant_id) == {src.variant[i].replace(",", ":") for i in test_rows}
    f = ds.frame.set_index("variant_id")
    expected = src.set_index(src.variant.str.replace(",", ":"))
    assert (f.n_mutations == expected.num_mutations.loc[f.index].to_numpy()).all()
    assert (f.score.to_numpy() == expected.score.loc[f.index].to_numpy()).all()


def test_cr6261_round_trip(tmp_path):
    path = demo_data_path()  # the package's copy: needs nothing from ../shared
    src = pd.read_csv(path)
    wt = src.loc[src.mutant == "WT", "mutated_sequence"].item()
    for mutant, seq in zip(src.mutant, src.mutated_sequence):
        assert apply_mutations(wt, parse_mutations(mutant, wt)) == seq, mutant
    # prepare_dataset checks the same thing when given both columns, and keeps all 2^11 variants
    prepare({"path": str(path), "mutations_column": "mutant", "sequence_column": "mutated_sequence",
                     "wild_type": wt, "target_column": "fitness"}, {"method": "random"}, tmp_path)
    ds = load_dataset(tmp_path / "dataset.parquet")
    assert len(ds.frame) == 2048 and ds.frame.n_mutations.value_counts()[11] == 1
    assert ds.meta["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_data_is_the_published_cr6261_table(data):
    shared = data / "cr6261_phillips2021" / "cr6261_h1_mean.csv"
    assert hashlib.sha256(demo_data_path().read_bytes()).digest() == hashlib.sha256(shared.read_bytes()).digest()
