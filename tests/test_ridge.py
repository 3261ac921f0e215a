"""lyra.learn.ridge: the one-hot encoding, the closed form against scikit-learn's Ridge, alpha chosen by
cross-validation against the same cross-validation done here by hand, recovery of an additive landscape,
chunked prediction and the errors on bad input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.model_selection import KFold, LeaveOneOut  # noqa: E402

from lyra.data.alphabet import DNA, PROTEIN, InvalidSequenceError  # noqa: E402
from lyra.errors import DataError  # noqa: E402
from lyra.learn.metrics import spearman  # noqa: E402
from lyra.learn.ridge import DEFAULT_ALPHAS, RidgeModel, fit_ridge, one_hot_sparse  # noqa: E402

AA = np.array(list(PROTEIN.letters))


def dense(seqs, length, alphabet=PROTEIN):
    """The reference one-hot: the alphabet's own encoding, flattened (n, length * C)."""
    tokens = alphabet.encode_batch(list(seqs), length=length)[0]
    return alphabet.one_hot(tokens, dtype=torch.float64).reshape(len(seqs), -1).numpy()


def additive_landscape(rng, n, length=12, sites=(2, 5, 7, 10), noise=0.3):
    """n random variants of one wild type at `sites`, fitness = sum of per-site effects + Gaussian noise."""
    wt = rng.integers(0, 20, length)  # (L,)
    effects = rng.normal(size=(len(sites), 20))  # (S, 20)
    tokens = np.repeat(wt[None], n, axis=0)  # (n, L)
    tokens[:, list(sites)] = rng.integers(0, 20, (n, len(sites)))
    clean = effects[np.arange(len(sites)), tokens[:, list(sites)]].sum(axis=1)  # (n,)
    return ["".join(AA[t]) for t in tokens], clean + rng.normal(scale=noise, size=n), clean


def ragged_with_ambiguous(rng, n, lo=6, hi=10, letters="ACDEFGHIKLX"):
    return ["".join(rng.choice(list(letters), int(rng.integers(lo, hi)))) for _ in range(n)]


def test_one_hot_sparse_is_the_alphabets_one_hot():
    rng = np.random.default_rng(0)
    seqs = ragged_with_ambiguous(rng, 50) + ["", "X", "ACDEFGHIK"]  # padding, an empty and an all-ambiguous row
    X = one_hot_sparse(seqs, PROTEIN, 9)
    assert X.shape == (53, 9 * 20)
    assert np.array_equal(X.toarray(), dense(seqs, 9))
    assert np.array_equal(one_hot_sparse(["ACGN", "TT"], DNA, 4).toarray(), dense(["ACGN", "TT"], 4, DNA))
    with pytest.raises(InvalidSequenceError, match=r"'Z' at position 3"):
        one_hot_sparse(["ACD", "AAZ"], PROTEIN, 3)
    with pytest.raises(InvalidSequenceError, match="length 4 > padded length 3"):
        one_hot_sparse(["ACD", "ACDE"], PROTEIN, 3)
    with pytest.raises(InvalidSequenceError, match="position 2"):
        one_hot_sparse(["Aé"], PROTEIN, 3)


@pytest.mark.parametrize("n", [300, 40], ids=["primal (n > d)", "dual (n < d)"])
def test_closed_form_matches_sklearn_ridge(n):
    """A one-value grid is a fixed alpha: the fitted weights, intercept and predictions are sklearn's
    Ridge(alpha) on the dense one-hot (intercept unpenalised, no scaling), to rounding."""
    rng = np.random.default_rng(n)
    seqs = ragged_with_ambiguous(rng, n + 25)  # d = 9 * 20 = 180 features
    y = rng.normal(size=n + 25)
    train, test = seqs[:n], seqs[n:]
    model = fit_ridge(train, y[:n], alphas=[0.7])
    length = max(map(len, train))
    reference = Ridge(alpha=0.7, solver="cholesky").fit(dense(train, length), y[:n])
    assert model.alpha == 0.7 and model.selection == "fixed" and model.length == length
    assert model.coef.shape == (length * 20,)
    assert np.allclose(model.coef, reference.coef_, rtol=0, atol=1e-9)
    assert model.intercept == pytest.approx(reference.intercept_, abs=1e-9)
    shorter = [s for s in test if len(s) < length]
    assert shorter  # the test set exercises padding
    assert np.allclose(model.predict(test), reference.predict(dense(test, length)), rtol=0, atol=1e-9)


def cv_errors(X, y, grid, splitter):
    """Mean over the splitter's folds of each fold's mean squared error, per alpha, with dense sklearn Ridge."""
    out = []
    for alpha in grid:
        fold_mse = [np.mean((Ridge(alpha=alpha, solver="cholesky").fit(X[tr], y[tr]).predict(X[te]) - y[te]) ** 2)
                    for tr, te in splitter.split(X)]
        out.append(np.mean(fold_mse))
    return np.array(out)


def test_k_fold_alpha_is_the_cross_validation_minimum():
    """Alpha minimises the mean over the seeded folds of each fold's mean squared error. The landscape
    is one where the folds of seed 0 and seed 1 choose different alphas, and seed 0's choice is not the
    one the mean R^2 (sklearn's default score) would make, so neither the seed nor the score goes unseen."""
    rng = np.random.default_rng(102)
    seqs, y, _ = additive_landscape(rng, 120, noise=1.0)
    X, grid = dense(seqs, 12), np.asarray(DEFAULT_ALPHAS)
    chosen = {}
    for seed in (0, 1):
        errors = cv_errors(X, y, grid, KFold(5, shuffle=True, random_state=seed))
        best = int(np.argmin(errors))
        assert 0 < best < len(grid) - 1, errors  # inside the grid
        assert np.sort(errors)[1] - errors[best] > 1e-3 * errors[best], errors  # not a near tie
        model = fit_ridge(seqs, y, alphas=grid[::-1], cv=5, seed=seed)  # the grid's order does not matter
        assert model.selection == "5-fold"
        assert model.alpha == pytest.approx(grid[best], rel=1e-12), (seed, errors)
        again = fit_ridge(seqs, y, alphas=grid, cv=5, seed=seed)
        assert again.alpha == model.alpha and np.array_equal(again.coef, model.coef)  # deterministic
        chosen[seed] = best
    assert chosen[0] != chosen[1]
    r2 = [np.mean([1 - np.sum((Ridge(alpha=a).fit(X[tr], y[tr]).predict(X[te]) - y[te]) ** 2)
                   / np.sum((y[te] - y[te].mean()) ** 2) for tr, te in KFold(5, shuffle=True, random_state=0).split(X)])
          for a in grid]
    assert int(np.argmax(r2)) != chosen[0]


def test_equal_cv_errors_choose_the_smallest_alpha():
    seqs = ["ACD", "ACE", "AGF", "ACF", "KCD", "ACH", "ACI", "LCD", "ACK", "MCL", "ACM", "ACN"]
    for cv in (5, 3):  # leave-one-out (12 < 2 * 5 rows) and 3-fold
        model = fit_ridge(seqs, np.full(12, 2.5), alphas=[10.0, 0.1, 1.0], cv=cv)  # every alpha predicts 2.5
        assert model.alpha == 0.1, cv
        assert np.allclose(model.predict(["ACD", "WWW"]), 2.5)


def test_few_rows_fall_back_to_leave_one_out():
    rng = np.random.default_rng(5)
    seqs, y, _ = additive_landscape(rng, 9, noise=0.5)  # 9 < 2 * 5 folds
    grid = np.asarray(DEFAULT_ALPHAS)
    errors = cv_errors(dense(seqs, 12), y, grid, LeaveOneOut())
    best = int(np.argmin(errors))
    assert np.sort(errors)[1] - errors[best] > 1e-4 * errors[best], errors
    model = fit_ridge(seqs, y, alphas=grid, cv=5)
    assert model.selection == "leave-one-out"
    assert model.alpha == pytest.approx(grid[best], rel=1e-12)
    assert fit_ridge(seqs, y, alphas=grid, cv=4).selection == "4-fold"  # 9 >= 2 * 4


def test_recovers_an_additive_landscape():
    rng = np.random.default_rng(11)
    seqs, y, clean = additive_landscape(rng, 1300, noise=0.5)
    model = fit_ridge(seqs[:300], y[:300])
    assert isinstance(model, RidgeModel)
    held_out = model.predict(seqs[300:])
    assert held_out.shape == (1000,)
    assert spearman(clean[300:], held_out) > 0.9
    assert spearman(y[300:], held_out) > 0.85  # against the noisy measurements too


def test_chunked_prediction_equals_unchunked():
    rng = np.random.default_rng(3)
    seqs, y, _ = additive_landscape(rng, 60)
    model = fit_ridge(seqs, y)
    queries = ragged_with_ambiguous(rng, 103, lo=1, hi=13)  # up to the fitted length 12, some shorter
    whole = one_hot_sparse(queries, PROTEIN, 12) @ model.coef + model.intercept  # (103,)
    for chunk_size in (1, 7, 103, 10_000):
        assert np.array_equal(model.predict(queries, chunk_size=chunk_size), whole), chunk_size
    assert np.array_equal(model.predict(iter(queries), chunk_size=10), whole)  # a one-pass iterable
    assert model.predict([]).shape == (0,)
    with pytest.raises(DataError, match=r"sequence 10 has length 13, longer than the 12"):
        model.predict(queries[:9] + ["A" * 13], chunk_size=4)  # named by its place in the input, not the chunk


def test_prediction_memory_is_bounded_by_the_chunk():
    rng = np.random.default_rng(4)
    seqs, y, _ = additive_landscape(rng, 40, length=56, sites=(38, 39, 40, 53))
    model = fit_ridge(seqs, y)
    landscape = (seqs[i % 40] for i in range(40_000))
    tracemalloc.start()
    try:
        pred = model.predict(landscape, chunk_size=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pred.shape == (40_000,)
    # one 1000-row chunk needs a few MB; encoding all 40,000 rows at once would take well over 50 MB
    assert peak < 20e6, peak


@pytest.mark.parametrize("seqs, y, match", [
    ([], [], "no sequences"),
    (["ACD", "ACE", "ACF"], [1.0, np.nan, 2.0], r"1 missing or infinite values \(first: row 2"),
    (["ACD", "ACE", "ACF"], [1.0, np.inf, 2.0], "missing or infinite"),
    (["ACD", "ACE", "ACF"], [1.0, 2.0], "3 sequences but 2 values of y"),
    (["ACD", "ACE"], [[1.0], [2.0]], r"one target of shape \(n,\), got shape \(2, 1\)"),
    (["ACD"], [1.0], "at least 2 rows"),
    (["", ""], [1.0, 2.0], "every sequence is empty"),
    (["ACD", 5], [1.0, 2.0], "sequence 2 is int, not a string"),
    (["ACD", "ACE"], ["a", "b"], "y is not numeric"),
])
def test_bad_input_raises_one_clear_error(seqs, y, match):
    with pytest.raises(DataError, match=match) as info:
        fit_ridge(seqs, y)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"alphas": []}, "alphas"), ({"alphas": [1.0, 0.0]}, "alphas"), ({"alphas": [np.nan]}, "alphas"),
    ({"cv": 1}, "cv"), ({"cv": 2.5}, "cv"), ({"alphabet": "klingon"}, "unknown alphabet"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_ridge(["ACD", "ACE", "ACF"], [1.0, 2.0, 3.0], **kwargs)


def test_unknown_letter_names_the_sequence_and_character():
    with pytest.raises(InvalidSequenceError, match="'B' at position 3"):
        fit_ridge(["ACD", "ACB"], [1.0, 2.0])
