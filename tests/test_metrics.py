"""lyra.learn.metrics against scipy / scikit-learn (a test-only dependency) and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import linear_model
from sklearn import metrics as sk

from lyra.learn import metrics as M


@pytest.fixture
def reg():
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    pred = y + rng.normal(scale=0.8, size=500)
    pred[:50] = np.round(pred[:50])  # ties in the predictions
    return y, pred


def test_correlations_match_scipy(reg):
    y, pred = reg
    assert M.spearman(y, pred) == pytest.approx(stats.spearmanr(y, pred).statistic, abs=1e-12)
    assert M.pearson(y, pred) == pytest.approx(stats.pearsonr(y, pred).statistic, abs=1e-12)
    assert M.mse(y, pred) == pytest.approx(np.mean((y - pred) ** 2))
    assert M.spearman(y, y) == pytest.approx(1.0)
    assert M.spearman(y, -y) == pytest.approx(-1.0)


def test_undefined_correlation_is_nan():
    assert math.isnan(M.spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(M.pearson([1.0], [2.0]))


def test_ndcg_by_hand():
    y = np.array([3.0, 1.0, 2.0, 0.0])  # relevance = y - min = y
    pred = np.array([0.1, 0.9, 0.5, 0.0])  # ranks items 1, 2, 0, 3
    dcg = 1 / np.log2(2) + 2 / np.log2(3) + 3 / np.log2(4) + 0
    ideal = 3 / np.log2(2) + 2 / np.log2(3) + 1 / np.log2(4)
    assert M.ndcg(y, pred) == pytest.approx(dcg / ideal)
    assert M.ndcg(y, y) == pytest.approx(1.0)
    assert M.ndcg_at_k(y, pred, 1) == pytest.approx(1 / 3)  # top item has relevance 1 of the best 3
    assert M.ndcg(y - 10, pred) == pytest.approx(M.ndcg(y, pred))  # min-shifted: offsets do not matter


def test_ndcg_matches_sklearn(reg):
    y, pred = reg
    pred = pred + np.arange(pred.size) * 1e-9  # sklearn averages over tied predictions; avoid ties
    rel = y - y.min()
    assert M.ndcg(y, pred) == pytest.approx(sk.ndcg_score(rel[None], pred[None]), rel=1e-9)
    assert M.ndcg_at_k(y, pred, 20) == pytest.approx(sk.ndcg_score(rel[None], pred[None], k=20), rel=1e-9)


def test_classification_matches_sklearn():
    rng = np.random.default_rng(1)
    # binary
    y = rng.integers(0, 2, 300)
    p1 = np.clip(0.3 * y + rng.uniform(size=300) * 0.7, 0, 1)
    p1[:30] = 0.5  # ties
    probs = np.stack([1 - p1, p1], 1)
    assert M.auroc(y, probs) == pytest.approx(sk.roc_auc_score(y, p1), abs=1e-12)
    assert M.auroc(y, p1) == pytest.approx(sk.roc_auc_score(y, p1), abs=1e-12)
    assert M.accuracy(y, probs) == pytest.approx(sk.accuracy_score(y, probs.argmax(1)))
    assert M.mcc(y, probs) == pytest.approx(sk.matthews_corrcoef(y, probs.argmax(1)), abs=1e-12)
    # three classes, one-vs-rest macro AUROC
    y3 = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 1.5 * np.eye(3)[y3]
    p3 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert M.auroc(y3, p3) == pytest.approx(sk.roc_auc_score(y3, p3, multi_class="ovr"), abs=1e-12)
    assert M.mcc(y3, p3) == pytest.approx(sk.matthews_corrcoef(y3, p3.argmax(1)), abs=1e-12)
    assert M.accuracy(y3, p3) == pytest.approx(np.mean(p3.argmax(1) == y3))


def test_degenerate_classification():
    assert math.isnan(M.auroc([1, 1, 1], [0.2, 0.5, 0.9]))  # one class only
    assert M.mcc([0, 1, 0], [0, 0, 0], n_classes=2) == 0.0  # constant prediction: sklearn's 0


def test_regression_metrics_drop_missing_targets():
    y = np.array([1.0, np.nan, 3.0, 2.0])
    p = np.array([1.0, 100.0, 3.0, 2.0])
    out = M.regression_metrics(y, p)
    assert out["mse"] == 0.0 and out["spearman"] == pytest.approx(1.0)
    assert M.higher_is_better("spearman") and not M.higher_is_better("mse")


def test_ridge_baseline_matches_sklearn():
    """lyra.learn.ridge (the baseline of every benchmark table) is sklearn's Ridge on one-hot inputs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lyra.learn.ridge import ridge_fit_predict
    from lyra.data.alphabet import PROTEIN

    rng = np.random.default_rng(2)
    letters = np.array(list("ACDEFGHIKLX"))  # X: ambiguous, uniform over the 20 channels
    seqs = ["".join(rng.choice(letters, int(rng.integers(6, 9)))) for _ in range(80)]  # ragged: zero padding
    y = rng.normal(size=(80, 2))
    train, test = seqs[:60], seqs[60:]
    pred = ridge_fit_predict(train, y[:60], test, alphabet="protein", alpha=0.7)

    def dense(s):
        return PROTEIN.one_hot(PROTEIN.encode_batch(s, length=8)[0], dtype=torch.float64).reshape(len(s), -1).numpy()

    expected = linear_model.Ridge(alpha=0.7).fit(dense(train), y[:60]).predict(dense(test))
    assert pred.shape == (20, 2)
    assert np.allclose(pred, expected, atol=1e-8)
    single = ridge_fit_predict(train, y[:60, 0], test, alpha=0.7)
    assert single.shape == (20,) and np.allclose(single, expected[:, 0], atol=1e-8)
