"""Retrospective campaigns (lyra.campaign.simulate): the bookkeeping on a landscape small enough to check
by hand, the same first plate for every strategy of a run, resuming a killed run, the summary's numbers,
and `snakemake simulate` end to end on a landscape written from scratch."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lyra.campaign.checks import stage_inputs
from lyra.campaign.config import resolve_config
from lyra.campaign.simulate import (Landscape, check_simulation, initial_plate, member_split, pick_ridge, rng_for,
                                    simulate_config, simulate_run, strategies, strategy_config, summarise)
from lyra.data.dataset import prepare_dataset
from lyra.errors import ConfigError
from own_campaigns import SIM_TINY as TINY
from own_campaigns import SIM_WT as WT
from own_campaigns import landscape_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
def campaign(tmp: Path, **simulate) -> dict:
    data = landscape_file(tmp)
    raw = {"campaign": "sim", "data": {"path": str(data), "mutations_column": "mutant", "wild_type": WT,
                                       "target_column": "fitness"},
           "split": {"method": "random", "fractions": {"train": 1.0}}, **TINY,
           "simulate": {"initial": {"size": 8}, "rounds": 3, "batch_size": 4, "runs": 2, **simulate}}
    return resolve_config(raw, base_dir=tmp)


@pytest.fixture
def sim(tmp_path):
    config = campaign(tmp_path, strategies={"random": {"model": "random"}, "lyra": {"model": "lyra"}})
    dataset = prepare_dataset(config["data"], config["split"], tmp_path / "landscape.parquet")
    from lyra.campaign.simulate import write_library

    library = write_library(dataset, tmp_path / "library.parquet")
    return config, dataset, library, tmp_path


def run(sim, strategy, number, name="out"):
    config, dataset, library, tmp = sim
    out, picks, work = tmp / name / f"{strategy}{number}.parquet", tmp / name / f"{strategy}{number}.csv", \
        tmp / name / "work" / f"{strategy}{number}"
    simulate_run(config, dataset, library, strategy, number, out, picks, work)
    return pd.read_parquet(out), pd.read_csv(picks), work


def test_every_strategy_of_a_run_starts_from_the_same_plate_and_never_measures_twice(sim):
    for number in (0, 1):
        tables = {s: run(sim, s, number) for s in ("random", "lyra")}
        first = {s: set(picks.loc[picks["round"] == 0, "variant_id"]) for s, (_, picks, _) in tables.items()}
        assert first["random"] == first["lyra"] and len(first["random"]) == 8
        for table, picks, _ in tables.values():
            assert not picks["sequence"].duplicated().any()
            assert picks.groupby("round").size().tolist() == [8, 4, 4, 4]
            assert table["screened"].tolist() == [8, 12, 16, 20]
            # the table agrees with the picks, recomputed by hand
            for r, row in table.iterrows():
                so_far = picks.loc[picks["round"] <= r, "fitness"]
                assert row["best"] == so_far.max()
                assert row["norm_best"] == pytest.approx(so_far.max() / 10.0)
                assert row["global_max_found"] == (so_far.max() == 10.0)
                assert row["batch_mean"] == pytest.approx(picks.loc[picks["round"] == r, "fitness"].mean())
    plates = [set(run(sim, "random", k, f"again{k}")[1].query("round == 0")["variant_id"]) for k in (0, 1)]
    assert plates[0] != plates[1]  # runs differ from each other


def test_a_killed_run_resumes_at_its_last_finished_round(sim):
    whole, picks, work = run(sim, "random", 0, "whole")
    config, dataset, library, tmp = sim
    # a run killed after round 1: rounds 0 and 1 are on disk, the rest is not
    killed = tmp / "killed" / "work"
    killed.mkdir(parents=True)
    for name in ("settings.json", "round0.csv", "round1.csv"):
        (killed / name).write_bytes((work / name).read_bytes())
    # the resumed run reads rounds 0 and 1 back (their recorded times too) and computes rounds 2 and 3
    resumed_out = tmp / "killed" / "run.parquet"
    simulate_run(config, dataset, library, "random", 0, resumed_out, tmp / "killed" / "picks.csv", killed)
    resumed = pd.read_parquet(resumed_out)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), whole.drop(columns="seconds"))
    assert resumed["seconds"].iloc[:2].tolist() == whole["seconds"].iloc[:2].tolist()


def test_a_run_whose_settings_changed_starts_over(sim, caplog):
    config, dataset, library, tmp = sim
    _, _, work = run(sim, "lyra", 0)
    (work / "round1.csv").write_text("variant_id,sequence,fitness,seconds\n")  # would be read back if kept
    changed = {**config, "train": {**config["train"], "max_epochs": config["train"]["max_epochs"] + 1}}
    simulate_run(changed, dataset, library, "lyra", 0, tmp / "c.parquet", tmp / "c.csv", work)
    assert "picked with other settings; the run starts over" in caplog.text
    assert pd.read_csv(tmp / "c.csv").groupby("round").size().tolist() == [8, 4, 4, 4]


def test_lyra_strategy_picks_unmeasured_variants_with_the_products_stages(sim):
    table, picks, work = run(sim, "lyra", 0)
    assert picks.groupby("round").size().tolist() == [8, 4, 4, 4]
    assert not picks["variant_id"].duplicated().any()
    assert not list(work.rglob("*.pt"))  # the round's models are not kept


def test_per_member_validation_holds_out_other_rows_for_each_member(sim):
    frame = pd.DataFrame({"sequence": [f"s{i}" for i in range(50)],
                          "split": ["train"] * 40 + ["valid"] * 10})
    held_out = [set(np.flatnonzero(member_split(frame, seed)["split"] == "valid")) for seed in range(5)]
    assert all(len(rows) == 10 for rows in held_out)  # as many as the shared split holds out
    assert len(set(map(frozenset, held_out))) == 5
    assert set().union(*held_out) - set(range(40, 50))  # rows of the shared train split are held out too
    assert (frame["split"] == "valid").sum() == 10  # the shared frame is not changed
    # a strategy with its own validation rows per member runs and measures only unmeasured variants
    config, dataset, library, tmp = sim
    config = {**config, "simulate": {**config["simulate"], "strategies": {
        "lyra_per_member": {"model": "lyra", "validation": "per_member"}}}}
    simulate_run(config, dataset, library, "lyra_per_member", 0, tmp / "p.parquet", tmp / "p.csv", tmp / "w")
    picks = pd.read_csv(tmp / "p.csv")
    assert picks.groupby("round").size().tolist() == [8, 4, 4, 4] and not picks["sequence"].duplicated().any()


def test_a_strategys_seed_name_sets_its_randomness(sim):
    """Renamed with seed: its old name, a strategy makes the same picks; the same settings under another
    seed name are another replicate on the same plates."""
    config, dataset, library, tmp = sim
    config = {**config, "simulate": {**config["simulate"], "strategies": {
        "random": {"model": "random"}, "random_renamed": {"model": "random", "seed": "random"},
        "random_b": {"model": "random", "seed": "random_b_replicate"},
        "lyra": {"model": "lyra"}, "lyra_renamed": {"model": "lyra", "seed": "lyra"}}}}
    picks = {}
    for strategy in ("random", "random_renamed", "random_b", "lyra", "lyra_renamed"):
        simulate_run(config, dataset, library, strategy, 0, tmp / f"{strategy}.parquet", tmp / f"{strategy}.csv",
                     tmp / "work" / strategy)
        picks[strategy] = pd.read_csv(tmp / f"{strategy}.csv")
    assert picks["random_renamed"].equals(picks["random"])
    assert picks["lyra_renamed"].equals(picks["lyra"])
    later = {s: set(p.loc[p["round"] > 0, "variant_id"]) for s, p in picks.items()}
    assert later["random_b"] != later["random"]
    assert picks["random_b"].query("round == 0").equals(picks["random"].query("round == 0"))  # same plate


def test_summary_numbers_by_hand():
    runs = pd.DataFrame({
        "strategy": ["a"] * 4 + ["b"] * 2, "run": [0, 0, 1, 1, 0, 0], "round": [0, 1, 0, 1, 0, 1],
        "screened": [2, 4, 2, 4, 2, 4], "best": [4.0, 8.0, 6.0, 10.0, 5.0, 5.0],
        "norm_best": [0.4, 0.8, 0.6, 1.0, 0.5, 0.5], "global_max_found": [False, False, False, True, False, False],
    })
    s = summarise(runs).set_index(["strategy", "screened"])
    assert s.loc[("a", 4), "runs"] == 2
    assert s.loc[("a", 4), "mean_max"] == pytest.approx(9.0)
    assert s.loc[("a", 4), "mean_norm_max"] == pytest.approx(0.9)
    assert s.loc[("a", 4), "sem"] == pytest.approx(math.sqrt(0.02) / math.sqrt(2))  # sd of 0.8, 1.0
    assert s.loc[("a", 4), "frac_global_max"] == pytest.approx(0.5)
    assert s.loc[("a", 2), "frac_global_max"] == 0.0
    assert math.isnan(s.loc[("b", 4), "sem"])  # one run: no standard error


def test_default_strategies_and_overrides(tmp_path):
    config = campaign(tmp_path)
    assert list(strategies(config)) == ["random", "ridge", "lyra"]
    config = campaign(tmp_path, strategies={"small": {"model": "lyra", "lyra": {"d_model": 4}, "train": {"seeds": 1},
                                                      "rank": {"strategy": "mean"}}})
    cfg = strategy_config(config, "small")
    assert cfg["model"]["d_model"] == 4 and cfg["model"]["d_state"] == 4  # the campaign's other keys stay
    assert cfg["train"]["seeds"] == 1 and cfg["rank"]["strategy"] == "mean"
    # a strategy's own alignment is a declared input of the simulation jobs, resolved like the campaign's
    config = campaign(tmp_path, strategies={"family": {"model": "lyra", "prior": {"msa": "family.a2m"}}})
    assert stage_inputs(config)["simulate"] == [str((tmp_path / "family.a2m").resolve())]


def _one_strategy_run(sim, caplog, name: str, settings: dict) -> tuple[dict, pd.DataFrame]:
    """Run 0 of the campaign with `name` as its only strategy: the config and every measured variant, after
    checking that each round picked its batch and no variant twice."""
    config, dataset, library, tmp = sim
    config = {**config, "simulate": {**config["simulate"], "strategies": {name: settings}}}
    check_simulation(config)
    with caplog.at_level("INFO", logger="lyra"):
        simulate_run(config, dataset, library, name, 0, tmp / f"{name}.parquet", tmp / f"{name}.csv", tmp / f"work_{name}")
    picks = pd.read_csv(tmp / f"{name}.csv")
    assert picks.groupby("round").size().tolist() == [8, 4, 4, 4] and not picks["sequence"].duplicated().any()
    return config, picks


def test_blend_strategy_averages_lyra_with_ridge_fitted_on_every_measured_variant(sim, caplog):
    config, picks = _one_strategy_run(sim, caplog, "lyra_blend", {"model": "lyra", "rank": {"model": "blend"}})
    tmp = sim[3]
    assert caplog.text.count("ranking by the average of the Lyra ensemble and one-hot ridge") == 3
    assert not list((tmp / "work_lyra_blend").rglob("*.npz"))  # the round's models are not kept
    for model in ("auto", "ridge"):  # neither ranks a Lyra strategy's picks: one line, before any job
        bad = {**config, "simulate": {**config["simulate"], "strategies": {
            "bad": {"model": "lyra", "rank": {"model": model}}}}}
        with pytest.raises(ConfigError, match=rf"^simulate\.strategies\.bad: rank\.model '{model}' cannot rank") as e:
            check_simulation(bad)
        assert "\n" not in str(e.value)


def test_ridge_picks_strategy_hedges_each_round_with_ridges_best(sim, caplog):
    config, picks = _one_strategy_run(sim, caplog, "lyra_hedge", {"model": "lyra", "rank": {"ridge_picks": 1}})
    dataset = sim[1]
    assert caplog.text.count("the first 1 picks by one-hot ridge (rank.ridge_picks)") == 3
    land = Landscape.load(dataset)  # round 1's first pick is ridge's best on the initial plate
    measured = np.zeros(len(land), dtype=bool)
    measured[land.indices(picks.loc[picks["round"] == 0, "sequence"].tolist())] = True
    seed = int(rng_for(simulate_config(config), 0, "lyra_hedge", 1).integers(2**31 - 1))
    assert land.sequence[pick_ridge(land, measured, 1, seed)[0]] in set(picks.loc[picks["round"] == 1, "sequence"])


@pytest.mark.parametrize("strategy, message", [
    ({"model": "lyra", "train": {"sedes": 2}}, "simulate.strategies.bad.train.sedes"),
    ({"model": "lyra", "lyra": {"d_state": 3}}, "simulate.strategies.bad.lyra.d_state"),
    ({"model": "forest"}, "simulate.strategies.bad.model"),
    ({"model": "lyra", "validation": "own"}, "simulate.strategies.bad.validation"),
    ({"model": "random", "seed": 3}, "simulate.strategies.bad.seed"),
])
def test_a_bad_strategy_is_one_line_naming_its_key(tmp_path, strategy, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as e:
        config = campaign(tmp_path, strategies={"bad": strategy})
        strategy_config(config, "bad")
    assert "\n" not in str(e.value)


def test_zero_shot_first_plate_is_drawn_from_the_top_of_the_prior(sim, tmp_path):
    """Homologs that keep the wild type's T3 and vary sites 7 and 12 freely: the prior's top 16 are the
    16 variants with T3, and a plate of 8 drawn from them differs between runs and repeats for a run."""
    from lyra.campaign.simulate import check_simulation

    config, dataset, _, _ = sim
    rng = np.random.default_rng(0)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    homologs = []
    for _ in range(60):
        s = list(WT)
        s[6], s[11] = letters[rng.integers(20)], letters[rng.integers(20)]
        homologs.append("".join(s))
    (tmp_path / "family.a2m").write_text("".join(f">s{k}\n{s}\n" for k, s in enumerate([WT, *homologs])))
    config = {**config, "prior": {**config.get("prior", {}), "msa": str(tmp_path / "family.a2m")},
              "simulate": {**config["simulate"], "initial": {"method": "zero_shot", "size": 8, "zero_shot_pool": 16}}}
    check_simulation(config)
    land = Landscape.load(dataset)
    plates = [initial_plate(config, land, k) for k in (0, 1, 0)]
    for rows in plates:
        assert len(rows) == 8 and all(seq[2] == "T" for seq in land.sequence[rows])
    assert not np.array_equal(plates[0], plates[1]) and np.array_equal(plates[0], plates[2])
    # without an alignment: one line naming the key, before any job
    with pytest.raises(ConfigError, match="simulate.initial.method: zero_shot"):
        check_simulation({**config, "prior": {**config["prior"], "msa": None}})


def test_first_plate_from_a_file_is_the_same_in_every_run(sim, tmp_path):
    config = sim[0]
    plate = tmp_path / "plate.csv"
    pd.DataFrame({"mutations": ["T3A", "T3V:I12S", "WT"]}).to_csv(plate, index=False)
    config = {**config, "simulate": {**config["simulate"], "initial": {"method": "file", "path": str(plate)}}}
    land = Landscape.load(sim[1])
    rows = [initial_plate(config, land, k) for k in (0, 1)]
    assert np.array_equal(rows[0], rows[1]) and len(rows[0]) == 3


@pytest.mark.slow
def test_snakemake_simulate_end_to_end(tmp_path):
    """`snakemake simulate --configfile` on a landscape written from scratch: every run's table, the
    summary with one row per strategy and budget, and the figure."""
    data = landscape_file(tmp_path)
    config = {"campaign": "sim", "data": {"path": str(data), "mutations_column": "mutant", "wild_type": WT,
                                          "target_column": "fitness"},
              "split": {"method": "random", "fractions": {"train": 1.0}}, **TINY,
              "simulate": {"initial": {"size": 8}, "rounds": 2, "batch_size": 4, "runs": 2}}
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([str(BIN / "snakemake"), "simulate", "-s", str(ROOT / "Snakefile"), "--configfile",
                           "sim.yaml", "--cores", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "results" / "sim" / "simulation"
    summary = pd.read_csv(root / "summary.csv")
    assert summary["strategy"].unique().tolist() == ["random", "ridge", "lyra"]
    assert summary["screened"].tolist() == [8, 12, 16] * 3 and (summary["runs"] == 2).all()
    runs = pd.read_parquet(root / "runs.parquet")
    assert len(runs) == 3 * 2 * 3
    assert (root / "summary.png").stat().st_size > 10_000
