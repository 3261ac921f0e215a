"""Evaluation metrics, computed once over a whole split (never averaged over batches).

Regression: Spearman, Pearson, MSE, NDCG. Classification: accuracy, AUROC (binary, or one-vs-rest
macro), MCC. Each function takes 1-D arrays (classification scores may be (n, C) probabilities) and
returns a Python float; an undefined value (constant input, a single class) is NaN, not an error.
`prediction_baseline` gives what a model that learned nothing would score on the same rows (the checks
of `lyra.learn.evaluate.learning_warnings` compare against it).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

REGRESSION_METRICS = ("spearman", "pearson", "mse", "ndcg")
CLASSIFICATION_METRICS = ("accuracy", "auroc", "mcc")
LOWER_IS_BETTER = frozenset({"mse", "loss"})


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    return t, p


def pearson(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred)
    if t.size < 2:
        return math.nan
    t, p = t - t.mean(), p - p.mean()
    denom = math.sqrt(float(t @ t) * float(p @ p))
    return float(t @ p) / denom if denom > 0 else math.nan


def spearman(y_true, y_pred) -> float:
    """Pearson correlation of the average ranks (ties share their mean rank, as in scipy)."""
    t, p = _pair(y_true, y_pred)
    return pearson(rankdata(t), rankdata(p))


def mse(y_true, y_pred) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2)) if t.size else math.nan


def _dcg(relevance_in_rank_order: np.ndarray) -> float:
    discounts = 1.0 / np.log2(np.arange(2, relevance_in_rank_order.size + 2))  # 1/log2(rank + 1)
    return float(relevance_in_rank_order @ discounts)


def ndcg_at_k(y_true, y_pred, k: int | None = None) -> float:
    """DCG of the predicted ranking over the ideal DCG, for the top k (all when k is None).

    Relevance is the true value shifted so that its minimum is 0 (FLIP / ProteinGym style), so the
    measure rewards putting the fittest variants first. Ties in y_pred are broken by input order.
    """
    t, p = _pair(y_true, y_pred)
    if t.size == 0:
        return math.nan
    k = t.size if k is None else min(int(k), t.size)
    rel = t - t.min()  # (n,) >= 0
    ideal = _dcg(np.sort(rel)[::-1][:k])
    if ideal <= 0:
        return math.nan
    order = np.argsort(-p, kind="stable")[:k]
    return _dcg(rel[order]) / ideal


def ndcg(y_true, y_pred) -> float:
    """NDCG over the whole ranking."""
    return ndcg_at_k(y_true, y_pred, None)


def _labels_and_scores(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 1:  # binary: the score of class 1
        s = np.stack([1.0 - s, s], axis=1)
    if s.shape[0] != y.size:
        raise ValueError(f"y_true has {y.size} values but y_score has {s.shape[0]} rows")
    return y, s


def accuracy(y_true, y_score) -> float:
    """y_score: (n, C) probabilities or 1-D predicted labels."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(y_score)
    pred = s.argmax(1) if s.ndim == 2 else s.astype(np.int64).ravel()
    return float(np.mean(pred == y)) if y.size else math.nan


def _binary_auroc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos * n_neg), ties counted as one half via average ranks."""
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auroc(y_true, y_score) -> float:
    """Binary AUROC (y_score 1-D, or (n, 2) probabilities), else the macro mean of one-vs-rest AUROCs."""
    y, s = _labels_and_scores(y_true, y_score)
    if s.shape[1] == 2:
        return _binary_auroc(y == 1, s[:, 1])
    per_class = [_binary_auroc(y == c, s[:, c]) for c in range(s.shape[1])]
    per_class = [a for a in per_class if not math.isnan(a)]  # a class absent from the split has no AUROC
    return float(np.mean(per_class)) if per_class else math.nan


def mcc(y_true, y_score, n_classes: int | None = None) -> float:
    """Matthews correlation (multiclass: Gorodkin's R_K), from labels or (n, C) probabilities."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(y_score)
    pred = s.argmax(1) if s.ndim == 2 else s.astype(np.int64).ravel()
    k = n_classes or int(max(y.max(initial=0), pred.max(initial=0)) + 1)
    cm = np.zeros((k, k), dtype=np.float64)  # rows: true class, columns: predicted
    np.add.at(cm, (y, pred), 1.0)
    t, p = cm.sum(1), cm.sum(0)  # (k,) true and predicted counts
    n, c = cm.sum(), np.trace(cm)
    denom = math.sqrt((n * n - float(p @ p)) * (n * n - float(t @ t)))
    return float((c * n - float(t @ p)) / denom) if denom > 0 else 0.0  # sklearn's convention: 0


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """Rows where y_true is NaN are dropped (several targets need not all be measured)."""
    t, p = _pair(y_true, y_pred)
    keep = ~np.isnan(t)
    t, p = t[keep], p[keep]
    return {"spearman": spearman(t, p), "pearson": pearson(t, p), "mse": mse(t, p), "ndcg": ndcg(t, p)}


def classification_metrics(y_true, probs) -> dict[str, float]:
    probs = np.asarray(probs, dtype=np.float64)
    return {"accuracy": accuracy(y_true, probs), "auroc": auroc(y_true, probs),
            "mcc": mcc(y_true, probs, n_classes=probs.shape[1] if probs.ndim == 2 else None)}


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


# ----------------------------------------------------------------------------------------------------
# what a model that learned nothing scores


def prediction_baseline(y_true, y_pred, task: str = "regression") -> dict[str, float]:
    """What a model that learned nothing would score on one split and target, next to the prediction spread.

    Regression (1-D values, NaN = not measured): n, target_std, prediction_std (population std over the
    measured rows) and mean_mse, the MSE of predicting the split's own mean (its variance).
    Classification (labels and (n, C) probabilities): n, majority_accuracy (always predicting the split's
    most frequent class), n_classes (present in the split) and n_predicted_classes.
    """
    if task == "classification":
        y = np.asarray(y_true).astype(np.int64).ravel()
        s = np.asarray(y_pred)
        pred = s.argmax(1) if s.ndim == 2 else s.astype(np.int64).ravel()
        counts = np.bincount(y) if y.size else np.zeros(0, dtype=np.int64)
        return {"n": int(y.size), "majority_accuracy": float(counts.max() / y.size) if y.size else math.nan,
                "n_classes": int((counts > 0).sum()), "n_predicted_classes": int(np.unique(pred).size)}
    t, p = _pair(y_true, y_pred)
    keep = ~np.isnan(t)
    t, p = t[keep], p[keep]
    if t.size == 0:
        return {"n": 0, "target_std": math.nan, "prediction_std": math.nan, "mean_mse": math.nan}
    return {"n": int(t.size), "target_std": float(t.std()), "prediction_std": float(p.std()),
            "mean_mse": float(t.var())}
