"""Evaluation metrics, computed once over a whole split (never averaged over batches).

Regression: Spearman, Pearson, MSE, NDCG. Classification: accuracy, AUROC (binary, or one-vs-rest
macro), MCC. Each function takes 1-D arrays (classification scores may be (n, C) probabilities) and
returns a Python float; an undefined value (constant input, a single class) is NaN, not an error.

`learning_warnings` reads those metrics (models/metrics.json) and says, in plain words, when the model
shows no sign of having learned: predictions collapsed to a constant, or no better than a constant.
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
# has the model learned anything? Checks on the ensemble's predictions, stored in metrics.json

# A calibrated regressor's predictions spread by about |r| x the target std, so a prediction std under
# 5 % of the target std is what a model explaining under 0.25 % of the variance would show: in effect a
# constant, whose ranking rests on differences far below any real effect.
COLLAPSE_RATIO = 0.05
# Spreads can be compared on a few rows; an error or a correlation on fewer than this many is mostly
# noise, so the "no better than the mean" check is skipped (and says so) below it.
MIN_ROWS_TO_JUDGE = 10
_MIN_ROWS_FOR_SPREAD = 3


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


def _num(x) -> float:
    """A metrics.json number (None where it was NaN) as a float."""
    return math.nan if x is None else float(x)


def _scores(ensemble: dict, target: str, targets: list[str]) -> dict:
    """The ensemble metrics of one target (several targets keep theirs under 'per_target')."""
    per_target = ensemble.get("per_target") or {}
    if target in per_target:
        return per_target[target]
    return ensemble if not targets or target == targets[0] else {}


def _findings(metrics: dict) -> list[tuple[bool, str]]:
    """(is a learning failure, one-line message) for each problem, in target order."""
    task = metrics.get("task", "regression")
    splits = [(name, metrics[name]) for name in ("valid", "test") if metrics.get(name)]
    targets = list(metrics.get("targets") or [])
    for _, split in splits:  # files without 'targets' still name them in their baselines
        targets += [t for t in split.get("baseline") or {} if t not in targets]
    out: list[tuple[bool, str]] = []
    for target in targets:
        collapsed, no_better, too_few = [], [], []
        for name, split in splits:
            base = (split.get("baseline") or {}).get(target) or {}
            n = int(base.get("n") or 0)
            if n == 0:  # no measured rows in this split: nothing to judge
                continue
            scores = _scores(split.get("ensemble") or {}, target, targets)
            if task == "classification":
                c, b = _classification_checks(name, n, base, scores)
            else:
                c, b = _regression_checks(name, n, base, scores)
            collapsed += c
            no_better += b
            if not c and not b and n < MIN_ROWS_TO_JUDGE:
                too_few.append(f"{name} {n}")
        if collapsed:
            if task == "classification":
                what, extra = "one class for every variant", ""
            else:
                what = f"a near-constant (prediction std / target std below {COLLAPSE_RATIO:g})"
                extra = "; train.target_transform: rank_gauss if a few outliers dominate the target"
            out.append((True, f"{target}: predictions collapsed to {what} on {', '.join(collapsed)}: the model "
                              "has not learned to tell variants apart. Try another train.lr (lower if the loss "
                              "jumped, higher if it never fell), more train.max_epochs, less model.dropout or "
                              f"train.weight_decay{extra}."))
        if no_better:
            baseline = "always predicting the most common class" if task == "classification" else "predicting the mean"
            out.append((True, f"{target}: the model is no better than {baseline} on {'; '.join(no_better)}. "
                              "Check that the target is measured well and the split is sensible, then try "
                              "tuning (tune.enabled), more train.max_epochs or more training variants."))
        if too_few:
            out.append((False, f"{target}: too few measured variants to tell whether the model learned "
                               f"({', '.join(too_few)}; the check needs {MIN_ROWS_TO_JUDGE}): raise "
                               "split.fractions / split.valid_fraction if the campaign has the variants."))
    return out


def _regression_checks(name: str, n: int, base: dict, scores: dict) -> tuple[list[str], list[str]]:
    t_std, p_std = _num(base.get("target_std")), _num(base.get("prediction_std"))
    if n >= _MIN_ROWS_FOR_SPREAD and t_std > 0 and p_std < COLLAPSE_RATIO * t_std:
        return [f"{name} ({p_std / t_std:.3f})"], []  # a collapsed model is also no better than the mean
    mean_mse = _num(base.get("mean_mse"))
    if n < MIN_ROWS_TO_JUDGE or not mean_mse > 0:  # a constant target has no spread to learn
        return [], []
    r2 = 1.0 - _num(scores.get("mse")) / mean_mse
    rho = _num(scores.get("spearman"))
    rho = 0.0 if math.isnan(rho) else rho  # undefined (constant predictions): no ranking at all
    # 1/sqrt(n - 1) is the std of Spearman's rho between unrelated values: a rho below it on a model
    # whose error is also no better than the mean's shows no sign of a learned signal
    noise = 1.0 / math.sqrt(n - 1)
    if r2 <= 0 and rho < noise:
        return [], [f"{name} (R² {r2:.2f}, Spearman {rho:.2f} over {n} variants; chance reaches ±{noise:.2f})"]
    return [], []


def _classification_checks(name: str, n: int, base: dict, scores: dict) -> tuple[list[str], list[str]]:
    if n >= _MIN_ROWS_FOR_SPREAD and int(base.get("n_classes") or 0) > 1 and base.get("n_predicted_classes") == 1:
        return [name], []
    if n < MIN_ROWS_TO_JUDGE:
        return [], []
    acc, majority = _num(scores.get("accuracy")), _num(base.get("majority_accuracy"))
    m = _num(scores.get("mcc"))
    m = 0.0 if math.isnan(m) else m
    # as for Spearman, 1/sqrt(n) is the std of the MCC between unrelated labels; requiring both keeps a
    # class-balanced model that trades accuracy for the rare classes from being flagged
    noise = 1.0 / math.sqrt(n)
    if acc <= majority and m < noise:
        return [], [f"{name} (accuracy {acc:.2f} vs {majority:.2f}, MCC {m:.2f} over {n} variants; "
                    f"chance reaches ±{noise:.2f})"]
    return [], []


def learning_warnings(metrics: dict) -> list[str]:
    """One-line warnings, each saying what is wrong and what to try, when the ensemble in `metrics`
    (models/metrics.json, or the dict `lyra.learn.train.write_metrics` builds) shows no sign of having learned:

    - its predictions collapsed to a near-constant on the valid or test split (regression: prediction
      std below COLLAPSE_RATIO x the target std; classification: one class predicted for every row);
    - it is no better than a constant: regression R² <= 0 (MSE at or above the split's variance) and
      Spearman below the chance level 1/sqrt(n - 1); classification accuracy at or below the majority
      class and MCC below 1/sqrt(n). Judged only on splits with at least MIN_ROWS_TO_JUDGE measured rows;
      smaller ones get a warning that they are too small to tell.

    Splits or targets without measured rows are skipped. Empty when nothing is wrong.
    """
    return [text for _, text in _findings(metrics)]


def has_learned(metrics: dict) -> bool:
    """False when a check of `learning_warnings` found a failure (a split too small to judge is not one)."""
    return not any(failure for failure, _ in _findings(metrics))
