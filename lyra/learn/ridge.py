"""One-hot ridge regression: the additive baseline of the benchmarks and the campaign simulator.

What it computes. Each sequence becomes the flattened one-hot vector x of length L * C (position x
letter, `one_hot_sparse`): a plain letter is a single 1, an ambiguous letter (protein X, nucleic N) is 1/C
on every channel of its position, and padding (a sequence shorter than L) is all zeros. The model is

    y ~ b + x . w,    w = argmin ||yc - Xc w||^2 + alpha ||w||^2,    b = mean(y) - mean(X) . w

with Xc, yc the column-centred X and y: the intercept b is not penalised, and X is not standardised
(every feature is already on the 0/1 one-hot scale, so one alpha fits them all). This is exactly what
`sklearn.linear_model.Ridge(alpha)` computes; `fit_ridge` solves it in closed form (a d x d system, or
the n x n dual when there are fewer rows than features), so the result does not depend on an
iterative solver's tolerance.

Why sparse. X has L nonzeros per row out of L * C columns (5% for proteins): GFP's 37k x 4,740 matrix
would take 1.4 GB dense but only the min(n, d)^2 normal-equation matrix is ever dense here, and
prediction streams the sequences through in chunks (`RidgeModel.predict`), so a whole combinatorial
landscape is scored in bounded memory.

Choosing alpha. `fit_ridge` picks alpha from a grid by K-fold cross-validation on the given rows
(`sklearn.linear_model.RidgeCV` with a shuffled, seeded `KFold`, scored by mean squared error), or by
leave-one-out (RidgeCV's exact generalised cross-validation) when there are fewer than 2 * K rows, and
then refits on all rows at that alpha. With sparse X and K folds, RidgeCV fits each fold with scikit-learn's
`sparse_cg` solver at its default tolerance (1e-4, not settable through RidgeCV): its fold errors agreed
with the exact ones to within 1e-4 relative in our checks, so only alphas whose CV errors tie about that
closely could swap. That solver also sets the cost: about 2 s for 384 GB1 variants (56 x 20 features), but
some 100 s for 20,000 rows of GFP's 237 x 20 (two CPU cores).

Keeping a fit. `save_ridge` writes a fitted model to one .npz file (atomically) and `load_ridge` reads it
back, exactly: the campaign fits the baseline once, beside the ensemble, and scores the library with it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse

from lyra.data.alphabet import Alphabet, get_alphabet
from lyra.errors import DataError
from lyra.io import atomic_path

DEFAULT_ALPHAS = tuple(float(a) for a in 10.0 ** np.linspace(-3, 3, 13))  # 1e-3 ... 1e3, half-decade steps
PREDICT_CHUNK = 16384  # sequences per chunk in RidgeModel.predict
# rank.model: blend predicts BLEND_LYRA_WEIGHT * Lyra + (1 - BLEND_LYRA_WEIGHT) * ridge, for each member
# (so the ensemble's spread scales by BLEND_LYRA_WEIGHT too): the two models on an equal footing
BLEND_LYRA_WEIGHT = 0.5


def blend(lyra: np.ndarray, ridge: np.ndarray, w_lyra: float = BLEND_LYRA_WEIGHT) -> np.ndarray:
    """A Lyra prediction (a member's, or the ensemble mean) mixed with ridge's: w * Lyra + (1 - w) * ridge."""
    return w_lyra * lyra + (1 - w_lyra) * ridge


def one_hot_sparse(seqs: Sequence[str], alphabet: Alphabet, length: int) -> scipy.sparse.csr_matrix:
    """Sequences -> sparse (n, length * C) one-hot, right-padded with zeros to `length`.

    A sequence longer than `length` raises `InvalidSequenceError` (nothing is truncated)."""
    tokens = alphabet.encode_batch(list(seqs), length=length)[0]  # (n, L)
    C = alphabet.size
    rows, cols, vals = [], [], []
    n_rows, L = tokens.shape
    pos = np.broadcast_to(np.arange(L), tokens.shape)  # (n, L)
    row = np.broadcast_to(np.arange(n_rows)[:, None], tokens.shape)  # (n, L)
    letter = tokens < C  # (n, L) plain letters: one entry each
    rows.append(row[letter]), cols.append(pos[letter] * C + tokens[letter]), vals.append(np.ones(letter.sum()))
    amb = tokens == alphabet.uniform_token  # (n, L) ambiguous letters: 1/C on every channel
    if amb.any():
        r, p = row[amb], pos[amb]
        rows.append(np.repeat(r, C)), cols.append((p[:, None] * C + np.arange(C)).ravel())
        vals.append(np.full(r.size * C, 1.0 / C))
    return scipy.sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, L * C)
    )


def _solve(X: scipy.sparse.csr_matrix, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge with an unpenalised intercept: X (n, d) sparse, y (n, T) -> w (d, T), b (T,)."""
    n, d = X.shape
    x_mean = np.asarray(X.mean(axis=0)).ravel()  # (d,)
    y_mean = y.mean(axis=0)  # (T,)
    yc = y - y_mean  # (n, T)
    if n < d:  # dual: (Xc Xc' + alpha I) a = yc, w = Xc' a
        Xm = X @ x_mean  # (n,)
        kernel = (X @ X.T).toarray() - Xm[:, None] - Xm[None, :] + x_mean @ x_mean  # (n, n)
        kernel[np.diag_indices_from(kernel)] += alpha
        a = scipy.linalg.solve(kernel, yc, assume_a="pos")  # (n, T)
        w = X.T @ a - np.outer(x_mean, a.sum(axis=0))  # (d, T)
    else:  # primal: (X'X - n m m' + alpha I) w = X'(y - y_mean)
        gram = (X.T @ X).toarray() - n * np.outer(x_mean, x_mean)  # (d, d)
        gram[np.diag_indices_from(gram)] += alpha
        w = scipy.linalg.solve(gram, X.T @ yc, assume_a="pos")  # (d, T)
    return w, y_mean - x_mean @ w  # (d, T), (T,)


def ridge_fit_predict(train_seqs: Sequence[str], train_y, test_seqs: Sequence[str],
                      alphabet: str | Alphabet = "protein", alpha: float = 1.0) -> np.ndarray:
    """Fit ridge at a fixed alpha on one-hot train sequences, predict the test sequences: (n_test,) or
    (n_test, T) for y (n,) or (n, T). Sequences are padded to the longest of both sets."""
    ab = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
    y = np.asarray(train_y, dtype=np.float64)
    squeeze = y.ndim == 1
    y = y.reshape(len(train_seqs), -1)  # (n, T)
    length = max(max(map(len, train_seqs)), max(map(len, test_seqs), default=0))
    w, b = _solve(one_hot_sparse(train_seqs, ab, length), y, alpha)  # (d, T), (T,)
    pred = one_hot_sparse(test_seqs, ab, length) @ w + b  # (n_test, T)
    return pred[:, 0] if squeeze else pred


@dataclass(frozen=True, eq=False)
class RidgeModel:
    """A fitted one-hot ridge model (`fit_ridge`): prediction = intercept + one_hot(sequence) . coef."""

    coef: np.ndarray  # (length * C,) weight of each position x letter, position-major
    intercept: float
    alpha: float  # the penalty used (chosen by cross-validation in fit_ridge)
    length: int  # the sequence length it was fitted on (the longest training sequence)
    alphabet: Alphabet
    selection: str  # how alpha was chosen: "5-fold", "leave-one-out" or "fixed" (a one-value grid)

    def predict(self, sequences: Iterable[str], chunk_size: int = PREDICT_CHUNK) -> np.ndarray:
        """Sequences -> predictions (n,), float64, in input order.

        The sequences are read and encoded `chunk_size` at a time (any iterable, a generator included),
        so memory stays bounded by the chunk whatever the number of sequences. Sequences of another
        length than `self.length` are handled exactly as `one_hot_sparse` does: a shorter one is
        right-padded with zeros (its missing positions contribute nothing), a longer one is an error
        (never truncated). An unknown character raises `InvalidSequenceError`."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        it = iter(sequences)
        out, start = [], 0
        while chunk := list(itertools.islice(it, chunk_size)):
            lengths = np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk))  # (chunk,)
            if (long := np.flatnonzero(lengths > self.length)).size:
                i = int(long[0])
                raise DataError(f"sequence {start + i + 1} has length {lengths[i]}, longer than the "
                                f"{self.length} the ridge model was fitted on")
            out.append(one_hot_sparse(chunk, self.alphabet, self.length) @ self.coef + self.intercept)  # (chunk,)
            start += len(chunk)
        return np.concatenate(out) if out else np.zeros(0)

    def predict_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Encoded sequences -> predictions (n,), float64: exactly `predict` of the sequences they encode,
        without decoding them (a library chunk scores some 30 times faster). tokens (n, L), L <= length:
        the alphabet's letters (0..C-1), its ambiguous token (1/C on each letter: the mean weight) and its
        pad token past a sequence's end (no weight)."""
        tokens = np.asarray(tokens)
        n, L = tokens.shape
        C = self.alphabet.size
        if L > self.length:
            raise DataError(f"tokens of length {L}, longer than the {self.length} the ridge model was fitted on")
        if n and (tokens.min() < 0 or tokens.max() > self.alphabet.pad_token):
            raise DataError(f"tokens outside the {self.alphabet.name} alphabet's 0..{self.alphabet.pad_token}")
        weights = self.coef.reshape(self.length, C)[:L]  # (L, C)
        table = np.concatenate([weights, weights.mean(axis=1, keepdims=True), np.zeros((L, 1))], axis=1)  # (L, C + 2)
        out = np.empty(n)
        step = max(1, (1 << 21) // max(L, 1))  # rows per block: the gathered weights stay near 16 MB
        for start in range(0, n, step):
            out[start:start + step] = table[np.arange(L), tokens[start:start + step]].sum(axis=1)  # (block,)
        return out + self.intercept

    def with_length(self, length: int) -> "RidgeModel":
        """The same model for sequences up to `length` long (no shorter than `self.length`): the positions
        beyond the fitted length get zero weights, which is what the fit itself gives them, as every
        training sequence is padding (zeros) there."""
        if length <= self.length:
            return self
        extra = np.zeros((length - self.length) * self.alphabet.size)  # ((length - L) * C,)
        return dataclasses.replace(self, coef=np.concatenate([self.coef, extra]), length=int(length))


def _check_alphas(alphas) -> np.ndarray:
    a = np.unique(np.asarray(alphas, dtype=np.float64).ravel())  # (k,) sorted, duplicates dropped
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"alphas must be one or more finite values > 0, got {alphas!r}")
    return a


def fit_ridge(sequences: Sequence[str], y, alphabet: str | Alphabet = "protein",
              alphas: Sequence[float] = DEFAULT_ALPHAS, cv: int = 5, seed: int = 0) -> RidgeModel:
    """Fit one-hot ridge regression with alpha chosen by cross-validation on these rows.

    sequences: n strings of the alphabet (shorter ones are zero-padded to the longest, which becomes
    the model's `length`); y: (n,) finite values, one target. alphas: the grid (sorted and deduplicated;
    among equal CV errors the smallest alpha wins). Alpha minimises the mean over `cv` shuffled folds
    (`KFold(cv, shuffle=True, random_state=seed)`) of each fold's mean squared error, or the leave-one-out
    squared error when n < 2 * cv; the model is then refitted on all n rows in closed form. A one-value
    grid is used as is, without cross-validation. Deterministic for a given seed."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    ab = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
    seqs = list(sequences)
    if not seqs:
        raise DataError("fit_ridge: no sequences to fit on")
    if not all(isinstance(s, str) for s in seqs):
        bad = next(i for i, s in enumerate(seqs) if not isinstance(s, str))
        raise DataError(f"fit_ridge: sequence {bad + 1} is {type(seqs[bad]).__name__}, not a string")
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"fit_ridge: y is not numeric ({e})") from None
    if y.ndim != 1:
        raise DataError(f"fit_ridge: y must be one target of shape (n,), got shape {y.shape}")
    if y.shape[0] != len(seqs):
        raise DataError(f"fit_ridge: {len(seqs)} sequences but {y.shape[0]} values of y")
    if not np.all(finite := np.isfinite(y)):
        bad = np.flatnonzero(~finite)
        raise DataError(f"fit_ridge: y has {bad.size} missing or infinite values (first: row {bad[0] + 1}, "
                        f"{y[bad[0]]}); drop those rows first")
    if len(seqs) < 2:
        raise DataError("fit_ridge: needs at least 2 rows to choose alpha")
    if not isinstance(cv, (int, np.integer)) or isinstance(cv, bool) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2, got {cv!r}")
    grid = _check_alphas(alphas)  # (k,)
    length = max(map(len, seqs))
    if length == 0:
        raise DataError("fit_ridge: every sequence is empty")

    X = one_hot_sparse(seqs, ab, length)  # (n, length * C) sparse
    n = X.shape[0]
    if grid.size == 1:
        alpha, selection = float(grid[0]), "fixed"
    else:
        if n >= 2 * cv:
            splitter, selection = KFold(n_splits=int(cv), shuffle=True, random_state=seed), f"{int(cv)}-fold"
        else:  # too few rows for K folds: exact leave-one-out (generalised cross-validation)
            splitter, selection = None, "leave-one-out"
        search = RidgeCV(alphas=grid, cv=splitter, scoring="neg_mean_squared_error").fit(X, y)
        alpha = float(search.alpha_)
    w, b = _solve(X, y[:, None], alpha)  # (d, 1), (1,)
    return RidgeModel(coef=w[:, 0], intercept=float(b[0]), alpha=alpha, length=length, alphabet=ab,
                      selection=selection)


# --- keeping a fitted model ------------------------------------------------------------------------------

_RIDGE_FILE_KIND = "lyra one-hot ridge"  # marks the .npz as save_ridge's


def save_ridge(model: RidgeModel, path: str | os.PathLike) -> Path:
    """Write `model` to `path` (.npz: coef, intercept, alpha, length, the alphabet's name and letters, and
    how alpha was chosen), atomically; `load_ridge` reads it back exactly."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        np.savez(f, kind=np.array(_RIDGE_FILE_KIND), coef=np.asarray(model.coef, dtype=np.float64),
                 intercept=np.float64(model.intercept), alpha=np.float64(model.alpha), length=np.int64(model.length),
                 alphabet=np.array(model.alphabet.name), letters=np.array(model.alphabet.letters),
                 selection=np.array(model.selection))
    return path


def load_ridge(path: str | os.PathLike) -> RidgeModel:
    """A model written by `save_ridge`; a missing, unreadable or foreign file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError("one-hot ridge model not found (`lyra evaluate` writes it)", str(path))
    try:
        with np.load(path, allow_pickle=False) as f:
            fields = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read as a ridge model (.npz): {' '.join(str(e).split())[:200]}", str(path)) from None
    if str(fields.get("kind", "")) != _RIDGE_FILE_KIND:
        raise DataError("not a one-hot ridge model written by lyra", str(path))
    try:
        alphabet = get_alphabet(str(fields["alphabet"]))
    except ValueError as e:
        raise DataError(str(e), str(path)) from None
    length, coef = int(fields["length"]), np.asarray(fields["coef"], dtype=np.float64)
    if str(fields["letters"]) != alphabet.letters or coef.shape != (length * alphabet.size,):
        raise DataError(f"ridge model does not match the {alphabet.name} alphabet's letters or its own length",
                        str(path))
    return RidgeModel(coef=coef, intercept=float(fields["intercept"]), alpha=float(fields["alpha"]),
                      length=length, alphabet=alphabet, selection=str(fields["selection"]))
