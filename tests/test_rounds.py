"""Campaign rounds: `lyra simulate-round` plays the lab on a complete landscape; the next run trains on
the measurements and no longer offers them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lyra.campaign import rounds, settings, stages
from lyra.cli import main
from lyra.campaign.config import load_config
from lyra.data.dataset import load_dataset
from lyra.errors import ConfigError
from lyra.design.library import LibraryConfig, iter_library, measured_sequences
from lyra.campaign.rounds import completed_rounds, simulate_round

WT = "MKTAYIAKQR"
SITES = {2: "KA", 3: "TV", 5: "YF", 7: "AG"}  # 16 combinations


def _landscape() -> pd.DataFrame:
    import itertools

    rows = []
    for combo in itertools.product(*SITES.values()):
        muts = [f"{WT[p - 1]}{p}{r}" for p, r in zip(SITES, combo) if r != WT[p - 1]]
        rows.append((";".join(muts) or "WT", 1.0 + len(muts) + 0.1 * sum(int(m[1:-1]) for m in muts)))
    return pd.DataFrame(rows, columns=["mutant", "fitness"])


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _landscape().to_csv("landscape.csv", index=False)
    Path("wt.fasta").write_text(f">wt\n{WT}\n")
    Path("campaign.yaml").write_text(
        "campaign: toy\n"
        "data: {path: landscape.csv, mutations_column: mutant, wild_type: wt.fasta, target_column: fitness,"
        " max_mutations: 1}\n"
        "library: {kind: combinatorial, positions: {2: KA, 3: TV, 5: YF, 7: AG}}\n"
        "rounds: {dir: rounds/toy}\n"
    )
    root = tmp_path / "results" / "toy"
    root.mkdir(parents=True)
    # what the rank stage wrote: two landscape variants, and one the landscape lacks (K2W)
    (root / "ranking.csv").write_text(
        "rank,variant_id,mutations,n_mutations,sequence,mean,std,acquisition,reason\n"
        "1,K2A:T3V,K2A:T3V,2,MAVAYIAKQR,5,0.1,5.1,x\n"
        "2,K2W,K2W,1,MWTAYIAKQR,4,0.1,4.1,x\n"
        "3,K2A:T3V:Y5F:A7G,K2A:T3V:Y5F:A7G,4,MAVAFIGKQR,3,0.1,3.1,x\n"
    )
    return load_config("campaign.yaml"), root


def test_simulated_round_measures_the_picks_and_the_next_run_uses_them(campaign, tmp_path):
    config, root = campaign
    assert rounds.round_files(config) == []  # the rounds folder does not exist yet: round 1 has no rounds
    out = simulate_round(config)
    assert out.samefile("rounds/toy/1/measurements.csv")
    measured = pd.read_csv(out)
    truth = _landscape().set_index("mutant")["fitness"]
    assert list(measured.columns) == ["mutant", "fitness"]
    assert list(measured["mutant"]) == ["K2A:T3V", "K2A:T3V:Y5F:A7G"]  # K2W is not in the landscape
    assert list(measured["fitness"]) == [truth["K2A;T3V"], truth["K2A;T3V;Y5F;A7G"]]
    assert (tmp_path / "rounds/toy/1/ranking.csv").read_bytes() == (root / "ranking.csv").read_bytes()
    with pytest.raises(ConfigError, match="round 1 is already recorded"):
        simulate_round(config, round_number=1)

    # the next run: the data file's singles (max_mutations 1) plus round 1, all in training
    assert [Path(p).name for p in rounds.round_files(config)] == ["measurements.csv"]
    dataset = stages.preprocess(config, tmp_path / "data" / "dataset.parquet")
    ds = load_dataset(dataset)
    assert len(ds.frame) == 5 + 2 and {"K2A:T3V", "K2A:T3V:Y5F:A7G"} <= set(ds.frame.variant_id)
    assert (ds.frame.set_index("variant_id").loc[["K2A:T3V", "K2A:T3V:Y5F:A7G"], "split"] == "train").all()
    # ... and the library no longer offers what is measured
    lib = LibraryConfig.from_dict(settings.library_section(config))
    offered = {m for chunk in iter_library(lib, WT, exclude=measured_sequences(dataset)) for m in chunk.mutations()}
    assert len(offered) == 16 - 7 and "K2A:T3V" not in offered

    assert simulate_round(config).parent.name == "2"  # the next call records the next round
    assert completed_rounds(tmp_path / "rounds" / "toy") == [1, 2]


def test_simulate_round_errors_name_the_problem(campaign, tmp_path, capsys):
    config, root = campaign
    Path("no_rounds.yaml").write_text(Path("campaign.yaml").read_text().replace("rounds: {dir: rounds/toy}\n", ""))
    assert main(["simulate-round", "--config", "no_rounds.yaml"]) == 2
    assert "rounds.dir: required" in capsys.readouterr().err
    (root / "ranking.csv").unlink()
    assert main(["simulate-round", "--config", "campaign.yaml"]) == 2
    assert "ranking.csv: no ranking yet" in capsys.readouterr().err
    assert not Path("rounds/toy/1").exists()


def test_lyra_run_notices_new_measurements(campaign, tmp_path):
    """`lyra run` remakes the dataset when a round file appears or a measurement file is edited."""
    import os

    from lyra.campaign.run import made_from_other_measurements, is_stale
    from lyra.campaign.checks import stage_inputs

    config, root = campaign
    dataset = stages.preprocess(config, root / "data" / "dataset.parquet")
    assert not made_from_other_measurements(config, dataset)
    assert not is_stale(stage_inputs(config)["preprocess"], [dataset])
    simulate_round(config)  # a new round file: another set of inputs
    assert made_from_other_measurements(config, dataset)
    dataset = stages.preprocess(config, root / "data" / "dataset.parquet")
    assert not made_from_other_measurements(config, dataset)
    assert not is_stale(stage_inputs(config)["preprocess"], [dataset])
    Path("landscape.csv").write_text(Path("landscape.csv").read_text().replace("WT,1.0", "WT,1.5"))  # data edited
    later = dataset.stat().st_mtime + 5
    os.utime("landscape.csv", (later, later))  # an edit made after the dataset, whatever the clock's resolution
    assert is_stale(stage_inputs(config)["preprocess"], [dataset])
