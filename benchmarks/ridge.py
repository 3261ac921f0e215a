"""One-hot ridge regression: the baseline every benchmark split is compared against.

X is the flattened one-hot encoding (position x letter; an ambiguous letter is uniform over the
letters, padding is all zeros), y is centred and the intercept is not penalised, which is what
`sklearn.linear_model.Ridge(alpha)` computes. Solved in closed form on the sparse one-hot matrix, so
GFP (37k x 4,740 features) needs only the d x d Gram matrix in memory.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg
import scipy.sparse

from lyra.data.alphabet import Alphabet, get_alphabet


def one_hot_sparse(seqs: Sequence[str], alphabet: Alphabet, length: int) -> scipy.sparse.csr_matrix:
    """Sequences -> sparse (n, length * C) one-hot, right-padded with zeros to `length`."""
    tokens, mask = alphabet.encode_batch(list(seqs), length=length)  # (n, L)
    C = alphabet.size
    rows, cols, vals = [], [], []
    n_rows, L = tokens.shape
    pos = np.broadcast_to(np.arange(L), tokens.shape)
    row = np.broadcast_to(np.arange(n_rows)[:, None], tokens.shape)
    letter = tokens < C  # plain letters: one entry each
    rows.append(row[letter]), cols.append(pos[letter] * C + tokens[letter]), vals.append(np.ones(letter.sum()))
    amb = tokens == alphabet.uniform_token  # ambiguous letters: 1/C on every channel
    if amb.any():
        r, p = row[amb], pos[amb]
        rows.append(np.repeat(r, C)), cols.append((p[:, None] * C + np.arange(C)).ravel())
        vals.append(np.full(r.size * C, 1.0 / C))
    return scipy.sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, L * C)
    )


def ridge_fit_predict(train_seqs: Sequence[str], train_y, test_seqs: Sequence[str],
                      alphabet: str | Alphabet = "protein", alpha: float = 1.0) -> np.ndarray:
    """Fit ridge on one-hot train sequences, predict the test sequences: (n_test,) or (n_test, T)."""
    ab = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
    y = np.asarray(train_y, dtype=np.float64)
    squeeze = y.ndim == 1
    y = y.reshape(len(train_seqs), -1)  # (n, T)
    length = max(max(map(len, train_seqs)), max(map(len, test_seqs), default=0))
    X = one_hot_sparse(train_seqs, ab, length)  # (n, d) sparse
    n = X.shape[0]
    x_mean = np.asarray(X.mean(axis=0)).ravel()  # (d,)
    y_mean = y.mean(axis=0)  # (T,)
    # centred normal equations: (X'X - n m m' + alpha I) w = X'(y - y_mean)
    gram = (X.T @ X).toarray() - n * np.outer(x_mean, x_mean)  # (d, d)
    gram[np.diag_indices_from(gram)] += alpha
    rhs = X.T @ (y - y_mean)  # (d, T)
    w = scipy.linalg.solve(gram, rhs, assume_a="pos")  # (d, T)
    X_test = one_hot_sparse(test_seqs, ab, length)
    pred = X_test @ w - x_mean @ w + y_mean  # (n_test, T)
    return pred[:, 0] if squeeze else pred
