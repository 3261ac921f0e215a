"""lyra.learn.evaluate.learning_warnings: a model that has not learned is flagged, one that has is not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lyra.learn import metrics as M
from lyra.learn.evaluate import has_learned, learning_warnings


def split(y, pred, task="regression", target="fitness") -> dict:
    """One split of metrics.json, as lyra.learn.evaluate.evaluate_ensemble builds it."""
    scores = M.classification_metrics(y, pred) if task == "classification" else M.regression_metrics(y, pred)
    return {"n": len(y), "ensemble": scores, "baseline": {target: M.prediction_baseline(y, pred, task)}}


def metrics(valid, test=None, task="regression", target="fitness") -> dict:
    out = {"task": task, "targets": [target], "valid": valid}
    if test is not None:
        out["test"] = test
    return out


def through_json(m: dict) -> dict:
    """NaN is written as null (lyra.learn.evaluate.write_metrics), so the checks must read None too."""
    return json.loads(json.dumps(m).replace("NaN", "null"))


@pytest.fixture
def y():
    return np.random.default_rng(0).normal(loc=3.0, scale=2.0, size=60)


def test_good_model_is_not_flagged(y):
    pred = y + np.random.default_rng(1).normal(scale=1.0, size=y.size)  # Spearman ~0.9
    m = metrics(split(y, pred), split(y[::-1], pred[::-1]))
    assert learning_warnings(m) == [] and has_learned(m)


def test_weak_but_real_ranking_is_not_flagged(y):
    """Predictions shrunk and shifted (MSE worse than the mean's) but ranked well: usable for picks."""
    pred = 0.2 * (y + np.random.default_rng(1).normal(scale=1.0, size=y.size)) - 5.0
    assert learning_warnings(metrics(split(y, pred))) == []


@pytest.mark.parametrize("constant", [0.0, 3.0])
def test_constant_predictions_are_flagged(y, constant):
    pred = np.full_like(y, constant)
    m = through_json(metrics(split(y, pred), split(y, pred + 1e-4 * np.arange(y.size))))
    warnings = learning_warnings(m)
    assert len(warnings) == 1 and not has_learned(m)
    assert warnings[0].startswith("fitness: predictions collapsed to a near-constant")
    assert " on valid (0.000), test (0.00" in warnings[0]
    assert "train.lr" in warnings[0] and "\n" not in warnings[0]


def test_nearly_constant_but_correlated_predictions_are_flagged(y):
    """Perfect ranking at 1 % of the target's spread is still a collapsed model."""
    pred = y.mean() + 0.01 * (y - y.mean())
    assert learning_warnings(metrics(split(y, pred))) != []
    ok = y.mean() + 0.1 * (y - y.mean())  # twice the threshold: a shrunk model, not a constant
    assert learning_warnings(metrics(split(y, ok))) == []


def test_noise_predictions_are_no_better_than_the_mean(y):
    pred = np.random.default_rng(5).normal(loc=3.0, scale=2.0, size=y.size)  # unrelated to y
    warnings = learning_warnings(metrics(split(y, pred)))
    assert len(warnings) == 1
    assert warnings[0].startswith("fitness: the model is no better than predicting the mean on valid (R² ")
    assert "chance reaches ±0.13" in warnings[0]  # 1 / sqrt(59)


def test_small_split_is_not_judged_on_noise(y):
    """Eight rows of unrelated predictions: too few to call the model untrained, and it says so."""
    pred = np.random.default_rng(5).normal(loc=3.0, scale=2.0, size=8)
    m = metrics(split(y[:8], pred), split(y[8:], y[8:] + 0.1))
    warnings = learning_warnings(m)
    assert len(warnings) == 1 and "too few measured variants" in warnings[0] and "valid 8" in warnings[0]
    assert has_learned(m)
    # a collapse is still visible on a few rows
    assert "collapsed" in learning_warnings(metrics(split(y[:8], np.zeros(8))))[0]


def test_splits_and_targets_without_rows_are_skipped(y):
    assert learning_warnings({"task": "regression", "targets": ["fitness"]}) == []
    assert learning_warnings(metrics(split(y, y), test=None) | {"test": None}) == []
    unmeasured = np.full(10, np.nan)
    assert learning_warnings(metrics(split(unmeasured, np.zeros(10)))) == []
    constant_target = np.full(20, 1.5)
    assert learning_warnings(metrics(split(constant_target, np.zeros(20)))) == []


def test_several_targets_are_checked_each():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 2))
    pred = np.stack([y[:, 0] + 0.3 * rng.normal(size=40), np.zeros(40)], axis=1)
    per_target = {t: M.regression_metrics(y[:, j], pred[:, j]) for j, t in enumerate(["a", "b"])}
    valid = {"ensemble": {**per_target["a"], "per_target": per_target},
             "baseline": {t: M.prediction_baseline(y[:, j], pred[:, j]) for j, t in enumerate(["a", "b"])}}
    warnings = learning_warnings({"task": "regression", "targets": ["a", "b"], "valid": valid})
    assert len(warnings) == 1 and warnings[0].startswith("b: predictions collapsed")


def test_classification():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=90, p=[0.6, 0.3, 0.1])
    good = np.eye(3)[labels] * 0.8 + 0.2 / 3  # right class most probable
    fine = metrics(split(labels, good, "classification", "label"), task="classification", target="label")
    assert learning_warnings(fine) == []
    majority = np.tile([0.7, 0.2, 0.1], (90, 1))  # always the most common class
    warnings = learning_warnings(metrics(split(labels, majority, "classification", "label"),
                                           task="classification", target="label"))
    assert len(warnings) == 1 and warnings[0].startswith("label: predictions collapsed to one class")
    shuffled = good[np.random.default_rng(1).permutation(90)]  # varied but unrelated: accuracy 0.44, MCC 0.04
    warnings = learning_warnings(metrics(split(labels, shuffled, "classification", "label"),
                                           task="classification", target="label"))
    assert len(warnings) == 1 and "no better than always predicting the most common class" in warnings[0]
