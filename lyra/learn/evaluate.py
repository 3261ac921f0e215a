"""Ensemble evaluation and models/metrics.json, with the checks of whether the ensemble learned.

The ensemble's prediction is the mean of its members' predictions (classification: probabilities). The
metric functions themselves are in `lyra.learn.metrics`; here they are applied per split and per
target, next to what a model that learned nothing would score, and read back by `learning_warnings`.

Beside the ensemble, metrics.json holds a baseline fitted on the same training rows: one-hot ridge
regression (`lyra.learn.ridge`), scored on the same splits (`baselines.ridge`), so a campaign learns on
its own data whether Lyra beats an additive model; `better_on_validation` says which one does.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lyra.errors import ConfigError, DataError, LyraError
from lyra.io import write_json
from lyra.learn import metrics as M
from lyra.learn.checkpoints import load_checkpoint, predict_tokens
from lyra.learn.forward import encode_frame, target_values, task_info
from lyra.learn.ridge import RidgeModel, blend, fit_ridge, save_ridge

log = logging.getLogger("lyra.learn.evaluate")


def evaluate_ensemble(checkpoint_paths: Sequence[str | os.PathLike], frame: pd.DataFrame,
                      meta: Mapping[str, Any], split: str = "test", device: str | torch.device = "cpu",
                      batch_size: int = 4096) -> dict[str, Any]:
    """Metrics of the ensemble (mean of the members' predictions or probabilities) and of each member."""
    if not checkpoint_paths:
        raise ConfigError("evaluate: no checkpoints given")
    task, targets, classes = task_info(meta)
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise DataError(f"dataset has no rows with split == {split!r}")
    tokens, mask = encode_frame(rows, meta["alphabet"])
    y = target_values(rows, meta)
    preds, per_seed, curves = [], [], {}
    for path in checkpoint_paths:
        model, info = load_checkpoint(path, device)
        if list(info["targets"]) != targets or info["task"] != task:
            raise LyraError(f"{path}: checkpoint predicts {info['targets']} ({info['task']}), "
                            f"the dataset has {targets} ({task})")
        p = predict_tokens(model, info, tokens, mask, batch_size)
        preds.append(p)
        seed = int(info.get("seed", len(per_seed)))
        entry = {"seed": seed, "best_epoch": int(info.get("best_epoch", 0)), **_summary(task, targets, y, p)}
        if model.config.prior_length:  # how much this member leans on the evolutionary prior, per target
            entry["prior_beta"] = [float(b) for b in model.prior_weight().detach().cpu()]
        per_seed.append(entry)
        curves[seed] = info.get("history", [])
    ensemble = np.mean(preds, axis=0)
    return {"split": split, "n": int(len(rows)), "n_models": len(preds),
            "ensemble": _summary(task, targets, y, ensemble), "baseline": _baseline(task, targets, y, ensemble),
            "per_seed": per_seed, "learning_curves": curves, "predictions": ensemble}


def _summary(task: str, targets: list[str], y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    if task == "classification":
        return M.classification_metrics(y, pred)
    per_target = {t: M.regression_metrics(y[:, j], pred[:, j]) for j, t in enumerate(targets)}
    out: dict[str, Any] = dict(per_target[targets[0]])
    if len(targets) > 1:
        out["per_target"] = per_target
    return out


def _baseline(task: str, targets: list[str], y: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Per target: the prediction spread and what a constant predictor scores (see M.prediction_baseline)."""
    if task == "classification":
        return {targets[0]: M.prediction_baseline(y, pred, task)}
    return {t: M.prediction_baseline(y[:, j], pred[:, j], task) for j, t in enumerate(targets)}


def write_metrics(path: str | os.PathLike, checkpoints: Sequence[str | os.PathLike], frame: pd.DataFrame,
                  meta: Mapping[str, Any], device: str | torch.device = "cpu", ridge: str | os.PathLike | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """models/metrics.json: test and valid ensemble metrics with per-seed values, the learning curves, and
    whether the ensemble learned: "learned" (bool) and "warnings" (one line each, empty when all is well;
    see `learning_warnings`), each warning also logged.

    With `ridge` (a path; regression on one target only), also the one-hot ridge baseline: fitted on the
    training rows (alpha by 5-fold cross-validation seeded by `seed`), written to `ridge`
    (`lyra.learn.ridge.save_ridge`) and scored on both splits as `baselines.ridge` {valid, test, alpha,
    selection, n_train}, and the ensemble averaged with it (rank.model: blend) as `blend` {valid, test};
    both null when `ridge` is None. Which model predicts the validation split better is
    logged in one line (a warning when it is ridge)."""
    test = evaluate_ensemble(checkpoints, frame, meta, "test", device)
    valid = evaluate_ensemble(checkpoints, frame, meta, "valid", device)
    curves = {str(k): v for k, v in test.pop("learning_curves").items()}
    valid.pop("learning_curves")
    ensemble = {"test": test.pop("predictions"), "valid": valid.pop("predictions")}  # (n, T) each
    out = {"test": test, "valid": valid, "learning_curves": curves, "task": meta["task"],
           "targets": list(meta["targets"]), "checkpoints": [str(p) for p in checkpoints]}
    out["warnings"] = learning_warnings(out)
    out["learned"] = has_learned(out)
    for warning in out["warnings"]:
        log.warning("%s", warning)
    out["baselines"] = {"ridge": None}
    out["blend"] = None
    if ridge is not None:
        model = fit_ridge_baseline(frame, meta, seed)
        save_ridge(model, ridge)
        out["baselines"]["ridge"], out["blend"] = _ridge_metrics(model, frame, meta, ensemble)
        better, line = better_on_validation(_finite(out))
        (log.warning if better == "ridge" else log.info)("%s", line)
    write_json(path, _finite(out))
    return out


# ----------------------------------------------------------------------------------------------------
# the one-hot ridge baseline

RIDGE_CV_FOLDS = 5  # folds of the cross-validation that chooses ridge's alpha


def fit_ridge_baseline(frame: pd.DataFrame, meta: Mapping[str, Any], seed: int = 0) -> RidgeModel:
    """One-hot ridge on the dataset's training rows (the ensemble's), for sequences up to the dataset's
    longest, so the valid and test rows are never longer than the model. A regression on one target."""
    task, targets, _ = task_info(meta)
    if task != "regression" or len(targets) != 1:
        raise ConfigError(f"the one-hot ridge baseline is a regression on one target, not a {task} on "
                          f"{len(targets)} target(s)")
    rows = frame[frame["split"] == "train"]
    y = target_values(rows, meta)[:, 0]  # (n,)
    model = fit_ridge(rows["sequence"].tolist(), y, meta["alphabet"], cv=RIDGE_CV_FOLDS, seed=seed)
    return model.with_length(int(frame["sequence"].str.len().max()))


def _ridge_metrics(model: RidgeModel, frame: pd.DataFrame, meta: Mapping[str, Any],
                   ensemble: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(baselines.ridge, blend): ridge's metrics on each split (as the ensemble's, `_summary`), its alpha,
    how alpha was chosen and the number of training rows; and the metrics of the ensemble's predictions
    (`ensemble`: split -> (n, 1)) averaged with ridge's, what rank.model: blend ranks by."""
    task, targets, _ = task_info(meta)
    out: dict[str, Any] = {}
    mixed: dict[str, Any] = {}
    for split in ("valid", "test"):
        rows = frame[frame["split"] == split]
        y = target_values(rows, meta)  # (n, 1)
        pred = model.predict(rows["sequence"].tolist())[:, None]  # (n, 1)
        out[split] = _summary(task, targets, y, pred)
        mixed[split] = _summary(task, targets, y, blend(ensemble[split], pred))
    out.update(alpha=model.alpha, selection=model.selection, n_train=int((frame["split"] == "train").sum()))
    return out, mixed


def _validation_spearman(metrics: Mapping[str, Any]) -> tuple[dict[str, float], int] | str:
    """({"lyra": rho, "ridge": rho, and "blend": rho where metrics.json has it}, n) on the validation split,
    an undefined (NaN) Lyra or ridge Spearman counted as 0 (no ranking); or why the models cannot be told
    apart there: no ridge baseline, or fewer than MIN_ROWS_TO_JUDGE variants (or none). Spearman on so few
    is mostly noise, and cross-validating Lyra instead would mean training it again per fold."""
    ridge = (metrics.get("baselines") or {}).get("ridge")
    if not ridge:
        return "metrics.json has no one-hot ridge baseline (fitted for regression on one target only)"
    valid = metrics.get("valid") or {}
    n = int(valid.get("n") or 0)
    if n < MIN_ROWS_TO_JUDGE:
        return (f"the validation split has {n} variants, too few to tell Lyra and one-hot ridge apart "
                f"(needs {MIN_ROWS_TO_JUDGE}); Lyra by default")
    rho = {"lyra": _num((valid.get("ensemble") or {}).get("spearman")),
           "ridge": _num((ridge.get("valid") or {}).get("spearman"))}
    rho = {name: 0.0 if math.isnan(r) else r for name, r in rho.items()}
    blended = ((metrics.get("blend") or {}).get("valid") or {}).get("spearman")
    if blended is not None:
        rho["blend"] = float(blended)
    return rho, n


def better_on_validation(metrics: Mapping[str, Any]) -> tuple[str, str]:
    """("lyra" or "ridge", one line saying why): the model whose validation Spearman in `metrics`
    (models/metrics.json) is higher; ties go to Lyra. Lyra as well, with the reason, when the two cannot
    be told apart (`_validation_spearman`)."""
    judged = _validation_spearman(metrics)
    if isinstance(judged, str):
        return "lyra", judged
    rho, n = judged
    if rho["ridge"] > rho["lyra"]:
        return "ridge", (f"one-hot ridge predicts the validation variants better than the Lyra ensemble "
                         f"(Spearman {rho['ridge']:.2f} vs {rho['lyra']:.2f} over {n} variants)")
    return "lyra", (f"the Lyra ensemble predicts the validation variants at least as well as one-hot ridge "
                    f"(Spearman {rho['lyra']:.2f} vs {rho['ridge']:.2f} over {n} variants)")


def auto_model(metrics: Mapping[str, Any]) -> tuple[str, str]:
    """rank.model: auto's choice, ("lyra", "ridge" or "blend", why): `better_on_validation`'s, unless the
    Lyra ensemble averaged with ridge (metrics.json's `blend`) has a higher validation Spearman than both."""
    judged = _validation_spearman(metrics)
    if isinstance(judged, str):
        return "lyra", judged
    rho, n = judged
    if rho.get("blend", -math.inf) > max(rho["lyra"], rho["ridge"]):
        return "blend", (f"the Lyra ensemble averaged with one-hot ridge predicts the validation variants better "
                         f"than either (Spearman {rho['blend']:.2f} vs {rho['lyra']:.2f} and {rho['ridge']:.2f} "
                         f"over {n} variants)")
    return better_on_validation(metrics)


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A metrics.json written by `write_metrics`; missing or not JSON is a DataError naming the file."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError("not found (`lyra evaluate` writes it)", str(path)) from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read as JSON: {' '.join(str(e).split())[:200]}", str(path)) from None


def _finite(x: Any) -> Any:
    """NaN/inf -> None, so the file is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


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
    (models/metrics.json, or the dict `write_metrics` builds) shows no sign of having learned:

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
