"""The one-hot ridge baseline beside Lyra in a campaign: fitted on the ensemble's training rows by the
evaluate stage (metrics.json `baselines.ridge`, models/ridge.npz), scored over the library by the score
stage, and ranking by it (rank.model: ridge) or by whichever model predicts the validation split better
(rank.model: auto)."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lyra.campaign import settings, stages
from lyra.campaign.checks import check_campaign
from lyra.campaign.config import resolve_config
from lyra.campaign.layout import Layout
from lyra.campaign.run import run_campaign
from lyra.design.rank import RankConfig, rank_variants
from lyra.errors import ConfigError, DataError
from lyra.learn import metrics as M
from lyra.data.dataset import load_dataset
from lyra.learn.evaluate import MIN_ROWS_TO_JUDGE, auto_model, better_on_validation, evaluate_ensemble
from lyra.learn.ridge import DEFAULT_ALPHAS, fit_ridge, load_ridge, save_ridge
from lyra.report.report import model_comparison, summarise_scores

AMINO = "ACDEFGHIKLMNPQRSTVWY"
WT = "MKTAYIAKQRQISFVKSHFS"  # 20 residues, numbered from 1
SITES = {3: "TAVL", 7: "AGSP", 12: "ISTW", 16: "KDEF"}  # the wild type's residue first: 256 variants
SEED = 3  # the campaign seed: ridge's cross-validation folds derive from it


def _variant(letters) -> tuple[str, str]:
    """(mutation string, sequence) of one combination of the sites' letters."""
    muts = [f"{WT[p - 1]}{p}{a}" for p, a in zip(SITES, letters) if a != WT[p - 1]]
    seq = list(WT)
    for p, a in zip(SITES, letters):
        seq[p - 1] = a
    return ":".join(muts) or "WT", "".join(seq)


def _landscape(task: str) -> pd.DataFrame:
    """Every combination of the sites, fitness purely additive (ridge fits it exactly); classification:
    the fitness cut into three classes."""
    rng = np.random.default_rng(0)
    effect = {(p, a): float(rng.normal(0, 1)) for p, letters in SITES.items() for a in letters}
    rows = []
    for letters in itertools.product(*SITES.values()):
        mutations, _ = _variant(letters)
        rows.append({"variant": mutations, "fitness": sum(effect[p, a] for p, a in zip(SITES, letters))})
    frame = pd.DataFrame(rows)
    if task == "classification":
        frame["fitness"] = pd.qcut(frame["fitness"], 3, labels=["low", "mid", "high"]).astype(str)
    return frame


def _config(tmp: Path, task: str = "regression", **rank) -> dict:
    """A campaign measuring 120 of the 256 variants, its library the other 136; a 2-epoch, 1-member Lyra."""
    measured = _landscape(task).sample(120, random_state=1)
    measured.to_csv(tmp / "measured.csv", index=False)
    return resolve_config({
        "campaign": "additive", "seed": SEED,
        "data": {"path": str(tmp / "measured.csv"), "mutations_column": "variant", "wild_type": WT,
                 "target_column": "fitness", "task": task},
        "split": {"fractions": {"train": 0.6, "valid": 0.2, "test": 0.2}},
        "tune": {"enabled": False},
        "model": {"d_model": 8, "d_state": 4},
        "train": {"seeds": 1, "max_epochs": 2, "patience": 1, "batch_size": 64},
        "library": {"kind": "combinatorial", "positions": SITES, "n_shards": 1, "chunk_size": 16},
        "rank": {"top_n": 10, **rank},
    }, base_dir=tmp)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Layout:
    """The additive campaign run through every stage with rank.model: auto."""
    tmp = tmp_path_factory.mktemp("additive")
    config = _config(tmp, model="auto")
    run_campaign(config, results=tmp / "results")
    return Layout.of(config, tmp / "results")


def _config_of(campaign: Layout, **rank) -> dict:
    config = _config(campaign.root.parents[1], **rank)
    assert Layout.of(config, campaign.root.parent).root == campaign.root
    return config


def _one_hot(seqs) -> np.ndarray:
    """Dense one-hot (n, L * 20), position-major, built here independently of lyra.learn.ridge."""
    out = np.zeros((len(seqs), len(WT) * len(AMINO)))
    for i, s in enumerate(seqs):
        for p, a in enumerate(s):
            out[i, p * len(AMINO) + AMINO.index(a)] = 1.0
    return out


def _sequences_of(scores: pd.DataFrame) -> list[str]:
    seqs = []
    for muts in scores["mutations"].fillna(""):
        seq = list(WT)
        for m in filter(None, muts.split(":")):
            seq[int(m[1:-1]) - 1] = m[-1]
        seqs.append("".join(seq))
    return seqs


# --- metrics.json ----------------------------------------------------------------------------------------


def test_ridge_metrics_are_sklearns_ridge_at_the_chosen_alpha(campaign):
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import KFold

    metrics = json.loads(campaign.metrics.read_text())
    ridge = metrics["baselines"]["ridge"]
    frame = pd.read_parquet(campaign.dataset)
    train = frame[frame["split"] == "train"]
    X, y = _one_hot(train["sequence"]), train["fitness"].to_numpy()
    # alpha: 5 shuffled folds seeded by the campaign seed (sklearn's dense solver: equal up to near-ties)
    chosen = RidgeCV(alphas=DEFAULT_ALPHAS, cv=KFold(5, shuffle=True, random_state=SEED),
                     scoring="neg_mean_squared_error").fit(X, y).alpha_
    assert ridge["alpha"] == pytest.approx(chosen) and ridge["selection"] == "5-fold"
    assert ridge["n_train"] == len(train)
    reference = Ridge(alpha=ridge["alpha"]).fit(X, y)
    saved = load_ridge(campaign.ridge)
    for split in ("valid", "test"):
        rows = frame[frame["split"] == split]
        pred = reference.predict(_one_hot(rows["sequence"]))
        np.testing.assert_allclose(saved.predict(rows["sequence"]), pred, rtol=1e-8, atol=1e-8)
        expected = M.regression_metrics(rows["fitness"].to_numpy(), pred)
        assert set(ridge[split]) == set(metrics[split]["ensemble"])  # the ensemble's summary, key for key
        for key, value in expected.items():
            assert ridge[split][key] == pytest.approx(value, rel=1e-8, abs=1e-10), (split, key)
    assert ridge["valid"]["spearman"] > 0.95  # the landscape is additive: ridge fits it


def test_blend_metrics_are_the_ensemble_and_ridge_averaged(campaign):
    metrics = json.loads(campaign.metrics.read_text())
    ds = load_dataset(campaign.dataset)
    ridge = load_ridge(campaign.ridge)
    for split in ("valid", "test"):
        rows = ds.frame[ds.frame["split"] == split]
        lyra = evaluate_ensemble(metrics["checkpoints"], ds.frame, ds.meta, split)["predictions"][:, 0]  # (n,)
        expected = M.regression_metrics(rows["fitness"].to_numpy(), (lyra + ridge.predict(rows["sequence"])) / 2)
        for key, value in expected.items():
            assert metrics["blend"][split][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, key)
    assert "| Lyra and ridge averaged (rank.model: blend) |" in campaign.table("top_n").read_text()


def test_blend_weights_benchmark_spans_ridge_to_lyra(campaign, capsys):
    from benchmarks import blend_weights

    table = blend_weights.main(["--results", str(campaign.root)]).set_index("w_lyra")
    metrics = json.loads(campaign.metrics.read_text())
    for split in ("valid", "test"):  # the ends and the middle are ridge, Lyra and the blend of metrics.json
        assert table.loc[0.0, f"{split}_spearman"] == pytest.approx(metrics["baselines"]["ridge"][split]["spearman"])
        assert table.loc[1.0, f"{split}_spearman"] == pytest.approx(metrics[split]["ensemble"]["spearman"])
        assert table.loc[0.5, f"{split}_spearman"] == pytest.approx(metrics["blend"][split]["spearman"], abs=1e-6)
    best = table["valid_spearman"].idxmax()
    assert f"chosen on validation: Lyra weight {best:.1f}, test Spearman {table.loc[best, 'test_spearman']:.4f}" \
        in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"^blend_weights: .*models/metrics\.json: not found") as e:
        blend_weights.main(["--results", str(campaign.root / "nowhere")])  # no evaluate stage there
    assert "\n" not in str(e.value)


def test_classification_has_no_ridge_baseline_and_still_ranks(tmp_path, caplog):
    config = _config(tmp_path, task="classification", model="auto")
    with caplog.at_level(logging.INFO):
        run_campaign(config, results=tmp_path / "results")
    campaign = Layout.of(config, tmp_path / "results")
    metrics = json.loads(campaign.metrics.read_text())
    assert metrics["baselines"] == {"ridge": None} and metrics["blend"] is None and not campaign.ridge.exists()
    assert "no one-hot ridge baseline: the one-hot ridge baseline is a regression, and this campaign is a " \
           "classification" in caplog.text
    ranking = pd.read_csv(campaign.ranking)
    assert len(ranking) == 10 and (ranking["model"] == "lyra").all()  # auto: no baseline to prefer
    assert "ridge" not in pd.read_parquet(campaign.scores).columns
    with pytest.raises(ConfigError, match=r"^rank\.model: ridge, but .* has no one-hot ridge scores") as e:
        rank_variants(campaign.scores, RankConfig(model="ridge", top_n=10))
    assert "\n" not in str(e.value)


def test_ranking_a_classification_by_ridge_is_refused_before_any_job(tmp_path):
    for model in ("ridge", "blend"):
        config = _config(tmp_path, task="classification", model=model)
        with pytest.raises(ConfigError, match=rf"^rank\.model: {model}, but the one-hot ridge baseline is a regression"):
            check_campaign(config)
    check_campaign(_config(tmp_path, task="classification", model="auto"))  # auto falls back to Lyra


# --- scoring and ranking ---------------------------------------------------------------------------------


def test_the_library_is_scored_by_ridge_chunk_by_chunk(campaign):
    scores = pd.read_parquet(campaign.scores)
    assert len(scores) == 136 and "ridge" in scores  # 256 - 120 measured, in 9 chunks of 16
    expected = load_ridge(campaign.ridge).predict(_sequences_of(scores))
    np.testing.assert_allclose(scores["ridge"], expected.astype(np.float32), rtol=1e-6)


def test_rank_model_ridge_ranks_by_the_ridge_prediction(campaign, tmp_path):
    config = _config_of(campaign, model="ridge", strategy="ucb", kappa=2.0)
    csv = tmp_path / "ranking.csv"
    stages.rank(config, campaign.scores, csv, tmp_path / "ranking.fasta", dataset=campaign.dataset)
    ranking = pd.read_csv(csv)
    scores = pd.read_parquet(campaign.scores)
    predicted = load_ridge(campaign.ridge).predict(_sequences_of(scores)).astype(np.float32)  # (n,)
    top = np.argsort(-predicted, kind="stable")[:10]
    assert ranking["variant_id"].tolist() == scores["variant_id"].to_numpy()[top].tolist()
    np.testing.assert_allclose(ranking["mean"], predicted[top], rtol=1e-6)
    assert (ranking["std"] == 0).all() and (ranking["model"] == "ridge").all()
    assert ranking["reason"][0].startswith("one-hot ridge prediction")
    by_lyra = pd.read_csv(_rank(campaign, tmp_path / "lyra", model="lyra"))
    assert (by_lyra["model"] == "lyra").all() and by_lyra["variant_id"].tolist() != ranking["variant_id"].tolist()


def test_rank_model_blend_averages_each_member_with_ridge(campaign, tmp_path):
    ranking = pd.read_csv(_rank(campaign, tmp_path / "blend", model="blend", strategy="ucb", kappa=2.0))
    scores = pd.read_parquet(campaign.scores)
    ridge = load_ridge(campaign.ridge).predict(_sequences_of(scores)).astype(np.float32)  # (n,)
    mean = (scores["mean"].to_numpy(np.float64) + ridge) / 2  # (n,)
    std = scores["std"].to_numpy(np.float64) / 2  # (n,) the spread of members averaged with one model
    top = np.argsort(-(mean + 2.0 * std), kind="stable")[:10]
    assert ranking["variant_id"].tolist() == scores["variant_id"].to_numpy()[top].tolist()
    np.testing.assert_allclose(ranking["mean"], mean[top], atol=1e-6)  # ranking.csv keeps 6 decimals
    np.testing.assert_allclose(ranking["std"], std[top], atol=1e-6)
    assert (ranking["model"] == "blend").all()
    assert ranking["reason"][0].startswith("Lyra and ridge averaged, UCB ")
    assert "The picks below are ranked by the average of the Lyra ensemble and one-hot ridge (rank.model)." in \
        model_comparison(json.loads(campaign.metrics.read_text()), ranking)
    check_campaign(_config_of(campaign, model="blend"))  # a regression on one target: blend is allowed
    # the report's library figure shows what ranked: here the blend, every variant (136 < the sample)
    summary = summarise_scores(campaign.scores, model="blend")
    assert summary.n == 136 and summary.counts.sum() == 136
    np.testing.assert_allclose(summary.sample_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(summary.sample_std, std, rtol=1e-12)


@pytest.mark.parametrize("strategy", ["ucb", "thompson"])
def test_ridge_picks_take_ridges_best_first_then_the_ensembles(campaign, tmp_path, strategy):
    """rank.ridge_picks: 4 of 10 picks are ridge's top predictions, the other 6 are what the ensemble's
    ranking gives without them, each labelled with the model that chose it."""
    scores = pd.read_parquet(campaign.scores)
    ridge = scores["ridge"].to_numpy(np.float64)  # (n,)
    ranking = pd.read_csv(_rank(campaign, tmp_path / "hedge", ridge_picks=4, strategy=strategy, kappa=2.0))
    by_ridge = scores["variant_id"].to_numpy()[np.argsort(-ridge, kind="stable")[:4]].tolist()
    assert ranking["variant_id"].tolist()[:4] == by_ridge
    assert ranking["model"].tolist() == ["ridge"] * 4 + ["lyra"] * 6 and not ranking["variant_id"].duplicated().any()
    np.testing.assert_allclose(ranking["acquisition"][:4], np.sort(ridge)[::-1][:4], atol=1e-6)
    assert ranking["reason"][0].startswith("one-hot ridge prediction") and ranking["acquisition_rank"][:4].tolist() == [1, 2, 3, 4]
    alone = pd.read_csv(_rank(campaign, tmp_path / "alone", top_n=16, strategy=strategy, kappa=2.0))
    if strategy == "ucb":  # the ensemble's own order, without the variants ridge took
        rest = [v for v in alone["variant_id"] if v not in by_ridge][:6]
        assert ranking["variant_id"].tolist()[4:] == rest
        assert ranking["reason"][4].startswith("UCB ")
        assert "The first 4 picks below are one-hot ridge's best predictions (rank.ridge_picks), the others are " \
               "ranked by the Lyra ensemble (rank.model)." in model_comparison(json.loads(campaign.metrics.read_text()), ranking)
    else:
        assert ranking["reason"][4].startswith("Thompson draw 1: ")
    # the diversity rules hold across both models' picks
    capped = pd.read_csv(_rank(campaign, tmp_path / "capped", ridge_picks=4, strategy=strategy,
                               diversity={"max_per_mutation": 3}))
    counts = Counter(m for muts in capped["mutations"].fillna("") for m in filter(None, muts.split(":")))
    assert max(counts.values()) <= 3 and (capped["model"] == "ridge").sum() == 4
    check_campaign(_config_of(campaign, ridge_picks=4))


def test_the_checks_know_which_rankings_read_ridge():
    from lyra.campaign.settings import RANK_MODELS_READING_RIDGE
    from lyra.design.rank import MODEL_COLUMNS
    from lyra.design.scoring import RIDGE_COLUMN

    assert set(RANK_MODELS_READING_RIDGE) == {m for m, columns in MODEL_COLUMNS.items() if RIDGE_COLUMN in columns}


def test_ridge_picks_need_the_ridge_baseline(tmp_path, campaign):
    config = _config(tmp_path, task="classification", ridge_picks=8)
    with pytest.raises(ConfigError, match=r"^rank\.ridge_picks: 8, but the one-hot ridge baseline is a regression") as e:
        check_campaign(config)
    assert "\n" not in str(e.value)
    lyra_only = tmp_path / "lyra_only.parquet"  # scores of a campaign without the baseline
    pq.write_table(pq.read_table(campaign.scores).drop(["ridge"]), lyra_only)
    with pytest.raises(ConfigError, match=r"^rank\.ridge_picks: 2, but .* has no one-hot ridge scores"):
        rank_variants(lyra_only, RankConfig(top_n=4, ridge_picks=2))


def _rank(campaign: Layout, out: Path, **rank) -> Path:
    out.mkdir()
    stages.rank(_config_of(campaign, **rank), campaign.scores, out / "ranking.csv", out / "ranking.fasta",
                metrics=campaign.metrics)
    return out / "ranking.csv"


def test_auto_ranks_with_the_model_better_on_validation(campaign, tmp_path, caplog):
    metrics = json.loads(campaign.metrics.read_text())
    # additive landscape: ridge's near-perfect fit against a 2-epoch, 8-wide Lyra
    assert metrics["baselines"]["ridge"]["valid"]["spearman"] > metrics["valid"]["ensemble"]["spearman"] + 0.2
    ranking = pd.read_csv(campaign.ranking)  # the campaign's own, rank.model: auto
    assert (ranking["model"] == "ridge").all() and (ranking["std"] == 0).all()
    with caplog.at_level(logging.INFO, logger="lyra.design.rank"):
        again = pd.read_csv(_rank(campaign, tmp_path / "auto", model="auto"))
    assert again["variant_id"].tolist() == ranking["variant_id"].tolist()
    assert "rank.model: auto chose ridge: one-hot ridge predicts the validation variants better than the " \
           "Lyra ensemble (Spearman" in caplog.text
    top_n = campaign.table("top_n").read_text()
    assert "| one-hot ridge (alpha " in top_n and "| Lyra ensemble (1 model) |" in top_n
    assert "One-hot ridge predicts the validation variants better than the Lyra ensemble" in top_n
    assert "The picks below are ranked by one-hot ridge (rank.model)." in top_n


def _metrics(lyra: float, ridge: float | None, n: int = 30) -> dict:
    baseline = None if ridge is None else {"valid": {"spearman": ridge}, "test": {"spearman": ridge}}
    return {"valid": {"n": n, "ensemble": {"spearman": lyra}}, "baselines": {"ridge": baseline}}


def test_better_on_validation_rule():
    assert better_on_validation(_metrics(0.4, 0.6))[0] == "ridge"
    assert better_on_validation(_metrics(0.6, 0.4))[0] == "lyra"
    assert better_on_validation(_metrics(0.5, 0.5))[0] == "lyra"  # a tie keeps Lyra
    assert better_on_validation(_metrics(None, 0.1))[0] == "ridge"  # undefined (constant) Lyra ranks nothing
    model, why = better_on_validation(_metrics(0.1, 0.9, n=MIN_ROWS_TO_JUDGE - 1))
    assert model == "lyra" and f"has {MIN_ROWS_TO_JUDGE - 1} variants, too few" in why
    model, why = better_on_validation(_metrics(0.1, None))
    assert model == "lyra" and "no one-hot ridge baseline" in why
    assert better_on_validation({"baselines": {"ridge": {"valid": {"spearman": 0.9}}}})[0] == "lyra"  # no valid


def test_auto_takes_the_blend_only_when_it_validates_above_both():
    def with_blend(lyra, ridge, blend, n=30):
        return {**_metrics(lyra, ridge, n), "blend": {"valid": {"spearman": blend}}}

    model, why = auto_model(with_blend(0.53, 0.56, 0.60))
    assert model == "blend" and why == ("the Lyra ensemble averaged with one-hot ridge predicts the validation "
                                        "variants better than either (Spearman 0.60 vs 0.53 and 0.56 over 30 variants)")
    assert auto_model(with_blend(0.53, 0.56, 0.56))[0] == "ridge"  # a tie with the better one keeps it
    assert auto_model(with_blend(0.60, 0.40, 0.55))[0] == "lyra"
    assert auto_model(with_blend(None, 0.40, 0.45))[0] == "blend"  # NaN Lyra counts as no ranking
    assert auto_model(with_blend(0.1, 0.2, 0.9, n=MIN_ROWS_TO_JUDGE - 1))[0] == "lyra"  # too few to judge
    assert auto_model(_metrics(0.4, 0.6)) == better_on_validation(_metrics(0.4, 0.6))  # older metrics: no blend


def test_only_a_regression_on_one_target_has_a_ridge_baseline():
    assert settings.ridge_unavailable("regression", "fitness") is None
    assert settings.ridge_unavailable("regression", ["fitness"]) is None
    assert settings.ridge_unavailable("regression", ["kd", "expression"]) == \
        "the one-hot ridge baseline predicts one target, and this campaign has 2"
    assert "is a classification" in settings.ridge_unavailable("classification", "label")
    data = {"path": "x.csv", "target_column": ["kd", "expression"]}
    assert not settings.ridge_baseline(resolve_config({"campaign": "c", "data": data}))
    assert settings.ridge_baseline(resolve_config({"campaign": "c", "data": {**data, "target_column": "kd"}}))


def test_auto_without_metrics_and_a_bad_rank_model_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"rank\.model") as e:
        RankConfig.from_dict({"model": "best"})
    assert "\n" not in str(e.value) and "best" in str(e.value)
    with pytest.raises(ConfigError, match=r"rank\.model") as e:
        resolve_config({"campaign": "c", "data": {"path": "x.csv", "target_column": "y"}, "rank": {"model": "Ridge"}})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^rank\.model: auto compares the models on models/metrics\.json"):
        rank_variants(tmp_path / "scores.parquet", RankConfig(model="auto"))


# --- the model file --------------------------------------------------------------------------------------


def test_ridge_file_round_trip_and_longer_sequences(tmp_path):
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list(AMINO), 8)) for _ in range(40)]
    model = fit_ridge(seqs, rng.normal(size=40), "protein", seed=1)
    back = load_ridge(save_ridge(model, tmp_path / "r.npz"))
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]  # no temporary left behind
    np.testing.assert_array_equal(back.coef, model.coef)
    assert (back.intercept, back.alpha, back.length, back.alphabet, back.selection) == \
           (model.intercept, model.alpha, model.length, model.alphabet, model.selection)
    longer = back.with_length(10)
    np.testing.assert_array_equal(longer.predict([s + "AC" for s in seqs[:5]]), model.predict(seqs[:5]))
    with pytest.raises(DataError, match="longer than the 8"):
        model.predict([seqs[0] + "A"])
    # from tokens, as the library is scored: ambiguous letters and shorter (padded) sequences alike
    odd = ["ACDXFGHI", "KLM", "XXXXXXXX", "", seqs[0]]
    tokens, _ = model.alphabet.encode_batch(odd, length=8)  # (5, 8), padded with the pad token
    np.testing.assert_allclose(model.predict_tokens(tokens), model.predict(odd), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(longer.predict_tokens(tokens), model.predict(odd), rtol=1e-12, atol=1e-12)
    (tmp_path / "other.npz").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"other\.npz: cannot read as a ridge model"):
        load_ridge(tmp_path / "other.npz")
    with pytest.raises(DataError, match=r"missing\.npz: one-hot ridge model not found"):
        load_ridge(tmp_path / "missing.npz")
