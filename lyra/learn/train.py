"""Training one ensemble member: `TrainConfig` (the `train` section) and `train_model`.

One call of `train_model` trains one ensemble member (one seed) on the rows with split == 'train',
measures the validation split after every epoch, keeps a deep copy of the weights of the best
validation epoch (the test split is never looked at; a tie in the selection metric goes to the lower
validation loss), stops early when validation stops improving, and writes the best weights as a
checkpoint (`lyra.learn.checkpoints`). With `resume_path` the whole training state is saved after
every epoch, so a killed job continues where it stopped and ends with the same weights as an
uninterrupted run: the data order and the dropout masks of epoch e are pure functions of (seed, e).

Regression targets are transformed with statistics of the training rows only (`lyra.learn.transforms`);
the transform is stored in the checkpoint and inverted at prediction, so predictions are in the
original units.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lyra.data.alphabet import get_alphabet
from lyra.errors import ConfigError, DataError
from lyra.learn import metrics as M
from lyra.learn.checkpoints import cpu_state, load_resume, save_checkpoint, save_resume
from lyra.learn.forward import (
    autocast,
    batch_inputs,
    encode_frame,
    forward_all,
    resolve_device,
    target_values,
    task_info,
)
from lyra.learn.transforms import apply_transform, fit_target_transform, invert_transform
from lyra.model.lyra import Lyra, LyraConfig, PoolNorm, configure_optimizer
from lyra.schema import schema_fields

log = logging.getLogger("lyra.learn.train")

# Settings that may change between a killed run and its rerun without invalidating the saved state.
_RESUME_FREE_KEYS = ("device", "eval_batch_size", "seeds")
FEW_VALIDATION_ROWS = 20  # below this, warn: Spearman on a handful of rows takes few distinct values
POOL_NORM_VARIANTS = 4096  # training variants whose pooled features set the statistics PoolNorm predicts with


@dataclass
@schema_fields("train")
class TrainConfig:
    """The `train` section (lyra/schema.yaml describes each key). Whether `selection_metric` suits the
    task is checked by `train_model`, which knows the task."""

    seeds: int
    max_epochs: int
    patience: int
    device: str
    batch_size: int
    eval_batch_size: int
    lr: float
    weight_decay: float
    ssm_lr: float
    loss: str
    huber_delta: float
    class_weights: str
    target_transform: str
    scheduler: str
    warmup_epochs: float
    grad_clip: float
    amp: bool
    selection_metric: str


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]  # validation metrics of the best epoch (no 'valid_' prefix), incl. 'loss'
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, valid_loss, valid_<metric>, lr, seconds
    checkpoint_path: Path
    seconds: float  # training time, summed over resumed runs
    stopped_early: bool = False


# ----------------------------------------------------------------------------------------------------
# determinism


@contextlib.contextmanager
def _deterministic(device: torch.device):
    """Deterministic kernels on CPU for the duration of training; the global flag is restored after."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _epoch_seed(seed: int, epoch: int) -> int:
    """The data order and the dropout masks of an epoch depend on (seed, epoch) only."""
    return seed * 100003 + epoch


# ----------------------------------------------------------------------------------------------------
# data: the training and validation rows, encoded to tokens once


@dataclass
class _Split:
    tokens: torch.Tensor  # (n, L) int64
    mask: torch.Tensor  # (n, L) bool, True on residues
    y: torch.Tensor  # (n, T) float32 in model units (regression) or (n,) int64 class index
    y_raw: np.ndarray  # (n, T) float64 original units, or (n,) int64 class index

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _prepare(frame: pd.DataFrame, meta: Mapping[str, Any], cfg: TrainConfig):
    """-> (train _Split, valid _Split, transform dict or None, class weights tensor or None)."""
    task, targets, classes = task_info(meta)
    for col in ("sequence", "split"):
        if col not in frame.columns:
            raise DataError(f"dataset has no {col!r} column")
    is_train = (frame["split"] == "train").to_numpy()
    is_valid = (frame["split"] == "valid").to_numpy()
    if not is_train.any():
        raise DataError("dataset has no training rows (split == 'train')")
    if not is_valid.any():
        raise DataError("dataset has no validation rows (split == 'valid'): the best epoch is chosen on them")
    if is_valid.sum() < FEW_VALIDATION_ROWS:
        log.warning("only %d validation variants: the best epoch and early stopping rest on them, so the choice "
                    "is close to blind (a rank metric ties from the first epochs); raise split.valid_fraction "
                    "when the campaign has the variants", int(is_valid.sum()))
    rows = is_train | is_valid
    tokens, mask = encode_frame(frame[rows], meta["alphabet"])  # encoded once, padded to the longest
    y_raw = target_values(frame[rows], meta)
    tr, va = is_train[rows], is_valid[rows]
    transform, weights = None, None
    if task == "regression":
        transform = fit_target_transform(cfg.target_transform, y_raw[tr])
        y = torch.from_numpy(apply_transform(transform, y_raw)).float()  # (n, T)
    else:
        y = torch.from_numpy(y_raw)  # (n,)
        if cfg.class_weights == "balanced":
            counts = np.bincount(y_raw[tr], minlength=len(classes)).astype(np.float64)
            weights = torch.tensor(tr.sum() / (len(classes) * np.maximum(counts, 1.0)), dtype=torch.float32)
    train = _Split(tokens[tr], mask[tr], y[tr], y_raw[tr])
    valid = _Split(tokens[va], mask[va], y[va], y_raw[va])
    return train, valid, transform, weights


def _fingerprint(*splits: _Split) -> str:
    """Identifies the training data, so a resume file from other data is not resumed."""
    h = hashlib.sha256()
    for s in splits:
        for t in (s.tokens, s.mask, s.y):
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _check_prior_lengths(table: torch.Tensor, *splits: _Split) -> None:
    for s in splits:
        lengths = s.mask.sum(1)
        if bool((lengths != table.shape[0]).any()):
            L = int(lengths[lengths != table.shape[0]][0])
            raise DataError(f"prior.msa: the prior scores variants of the wild type's length {table.shape[0]}, "
                            f"but the dataset has a sequence of length {L}")


def varied_sites(*splits: _Split) -> tuple[int, ...]:
    """0-based positions at which the splits' sequences differ (model.sites: varied)."""
    tokens = torch.cat([s.tokens for s in splits])  # (n, L)
    if not bool(torch.cat([s.mask for s in splits]).all()):
        raise ConfigError("model.sites: varied needs variants of one length (the dataset's lengths differ)")
    varied = (tokens != tokens[:1]).any(0)  # (L,)
    if not bool(varied.any()):
        raise DataError("model.sites: varied, but the training and validation variants are all the same sequence")
    return tuple(int(p) for p in torch.nonzero(varied).flatten())


# ----------------------------------------------------------------------------------------------------
# model, loss, schedule and the best-epoch rule


def _model_config(model_cfg: Mapping[str, Any] | LyraConfig, d_input: int, d_output: int) -> LyraConfig:
    d = model_cfg.to_dict() if isinstance(model_cfg, LyraConfig) else dict(model_cfg)
    d.update(d_input=d_input, d_output=d_output)  # always from the data
    cfg = LyraConfig.from_dict(d)
    if cfg.token_level:
        raise ConfigError("model.token_level: training predicts one value per sequence; token_level must be false")
    return cfg


def _set_prior(model: Lyra, table: torch.Tensor, train: _Split, embedding: torch.Tensor) -> None:
    """Copy the table in and standardise its scores on the training variants (never validation)."""
    model.prior_table.copy_(table)
    with torch.no_grad():
        s = model.prior(embedding[train.tokens.to(embedding.device)])  # (n_train,) raw: mu 0, sigma 1 so far
    model.prior_mu.fill_(float(s.mean()))
    model.prior_sigma.fill_(float(s.std()) if len(s) > 1 and float(s.std()) > 0 else 1.0)


def _loss(task: str, cfg: TrainConfig, out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None):
    if task == "classification":
        return F.cross_entropy(out, y, weight=weights)
    measured = ~torch.isnan(y)  # (B, T): several targets need not all be measured
    pred, target = out[measured], y[measured]
    if cfg.loss == "huber":
        return F.huber_loss(pred, target, delta=cfg.huber_delta)
    return F.mse_loss(pred, target)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.max_epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "none":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _improves(score: float, best: float | None, higher: bool, loss: float = math.nan,
              best_loss: float = math.nan) -> bool:
    """Is this epoch better than the best so far? An exact tie goes to the lower validation loss: on a
    handful of validation variants a rank metric ties often (Spearman 1.0 from epoch 1 on three rows),
    and the first epoch to reach it is rarely the best model."""
    if best is None:
        return True
    if math.isnan(score):
        return False
    if math.isnan(best):
        return True
    if score == best:
        return loss < best_loss  # False when either is NaN
    return score > best if higher else score < best


def replay_selection(history: list[dict], metric: str, patience: int) -> tuple[int, int]:
    """(best epoch, last epoch) that the selection rule above picks from a run's per-epoch `history`
    (a checkpoint's): to tell whether a checkpoint made by an older rule is the one this rule makes."""
    higher = M.higher_is_better(metric)
    best, best_loss = None, math.nan
    best_epoch = bad = last = 0
    for row in history:
        if 0 < patience <= bad:
            break
        score = row["valid_loss"] if metric == "loss" else row[f"valid_{metric}"]
        if _improves(score, best, higher, row["valid_loss"], best_loss):
            best, best_loss, best_epoch, bad = score, row["valid_loss"], row["epoch"], 0
        else:
            bad += 1
        last = row["epoch"]
    return best_epoch, last


def _is_pruned(e: BaseException) -> bool:
    try:
        import optuna
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, optuna.TrialPruned)


# ----------------------------------------------------------------------------------------------------
# one epoch of training, one pass of validation


def _train_epoch(model: Lyra, opt, sched, train: _Split, embedding: torch.Tensor, cfg: TrainConfig, task: str,
                 class_w: torch.Tensor | None, seed: int, epoch: int) -> float:
    """One pass over the training rows in an order (and with dropout masks) fixed by (seed, epoch)."""
    device = embedding.device
    torch.manual_seed(_epoch_seed(seed, epoch))  # dropout masks
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch)))
    model.train()
    total = 0.0
    for i in range(0, len(train), cfg.batch_size):
        idx = order[i: i + cfg.batch_size]
        x, m = batch_inputs(embedding, train.tokens[idx], train.mask[idx], device)
        with autocast(device, cfg.amp):
            out = model(x, m)  # (B, d_output)
        loss = _loss(task, cfg, out.float(), train.y[idx].to(device), class_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()  # per step: the cosine runs over max_epochs * steps_per_epoch
        total += float(loss.detach()) * len(idx)
    return total / len(train)


def _calibrate_pool_norm(model: Lyra, train: _Split, embedding: torch.Tensor, cfg: TrainConfig) -> None:
    """Set the statistics `PoolNorm` predicts with from the pooled features of up to POOL_NORM_VARIANTS
    training variants (a fixed random subset), as the model now computes them without dropout. Running
    averages over the epoch's batches would lag the weights, and the channels' spread across the
    variants of one protein is small enough for that lag to shift every prediction."""
    norm = model.pool_norm
    if not isinstance(norm, PoolNorm):
        return
    n = min(len(train), POOL_NORM_VARIANTS)
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    pooled: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0].float().cpu().clone()))
    model.eval()
    try:
        forward_all(model, embedding, train.tokens[rows], train.mask[rows], cfg.eval_batch_size, cfg.amp)
    finally:
        hook.remove()
    z = torch.cat(pooled)  # (n, H)
    with torch.no_grad():
        norm.running_mean.copy_(z.mean(0))
        norm.running_var.copy_(z.var(0, unbiased=False) if n > 1 else torch.ones_like(norm.running_var))


def _metrics(task: str, y_raw: np.ndarray, out: torch.Tensor, transform) -> dict[str, float]:
    """Validation metrics in original units; several regression targets: the mean over targets."""
    if task == "classification":
        return M.classification_metrics(y_raw, torch.softmax(out, -1).numpy())
    pred = invert_transform(transform, out.numpy())  # (n, T)
    per_target = [M.regression_metrics(y_raw[:, j], pred[:, j]) for j in range(pred.shape[1])]
    return {k: float(np.mean([m[k] for m in per_target])) for k in per_target[0]}


def _validate(model: Lyra, valid: _Split, embedding: torch.Tensor, cfg: TrainConfig, task: str, transform,
              class_w: torch.Tensor | None) -> tuple[float, dict[str, float]]:
    """(loss in model units, metrics in original units) over the whole validation split at once."""
    model.eval()
    out = forward_all(model, embedding, valid.tokens, valid.mask, cfg.eval_batch_size, cfg.amp)  # (n, d_output)
    with torch.no_grad():
        loss = float(_loss(task, cfg, out, valid.y, None if class_w is None else class_w.cpu()))
    scores = _metrics(task, valid.y_raw, out, transform)
    scores["loss"] = loss
    return loss, scores


# ----------------------------------------------------------------------------------------------------
# training


def train_model(
    frame: pd.DataFrame,
    meta: Mapping[str, Any],
    model_cfg: Mapping[str, Any] | LyraConfig,
    train_cfg: TrainConfig,
    seed: int,
    checkpoint_path: str | os.PathLike,
    resume_path: str | os.PathLike | None = None,
    report: Callable[[int, float], None] | None = None,
    log_every: int = 1,
    prior_table: np.ndarray | None = None,
) -> TrainResult:
    """Train one model (one seed) and write its best-validation-epoch checkpoint; see the module docstring.

    `report(epoch, value)` receives the raw validation `selection_metric` after each epoch (Optuna
    pruning); an exception it raises propagates. A pruned trial's resume file is removed; any other
    interruption keeps it, so a rerun continues from the last finished epoch.
    `prior_table` (L, C) adds the model's evolutionary prior term (`lyra.design.prior.prior_table`); every
    variant must then have the table's length.
    """
    started = time.perf_counter()
    if isinstance(train_cfg, Mapping):
        train_cfg = TrainConfig.from_dict(train_cfg)
    task, targets, classes = task_info(meta)
    metric = train_cfg.selection_metric
    if task == "classification" and metric not in (*M.CLASSIFICATION_METRICS, "loss"):
        log.info("selection metric %r is for regression; using accuracy for this classification task", metric)
        metric = "accuracy"
    if task == "regression" and metric not in (*M.REGRESSION_METRICS, "loss"):
        raise ConfigError(f"train.selection_metric: {metric!r} is a classification metric; this task is regression")
    higher = M.higher_is_better(metric)

    device = resolve_device(train_cfg.device)
    ab = get_alphabet(meta["alphabet"])
    train, valid, transform, class_w = _prepare(frame, meta, train_cfg)
    d_output = len(classes) if task == "classification" else len(targets)
    cfg = _model_config(model_cfg, ab.size, d_output)
    if prior_table is not None:
        prior_table = torch.as_tensor(prior_table, dtype=torch.float32)
        _check_prior_lengths(prior_table, train, valid)
        cfg = dataclasses.replace(cfg, prior_length=prior_table.shape[0])
    if cfg.sites == "varied":
        cfg = dataclasses.replace(cfg, site_positions=varied_sites(train, valid))
        log.info("the network reads the %d positions where the variants differ: %s", len(cfg.site_positions),
                 ", ".join(str(p + 1) for p in cfg.site_positions[:20]) + (" ..." if len(cfg.site_positions) > 20 else ""))
    embedding = ab.embedding().to(device)  # (C + 2, C): one-hot rows, uniform row, zero padding row
    if class_w is not None:
        class_w = class_w.to(device)
    steps_per_epoch = math.ceil(len(train) / train_cfg.batch_size)
    resume_path = Path(resume_path) if resume_path is not None else None
    checkpoint_path = Path(checkpoint_path)
    identity = {  # what a resume file must match to be resumed
        "model_config": cfg.to_dict(), "seed": int(seed), "data": _fingerprint(train, valid),
        "prior": None if prior_table is None else hashlib.sha256(prior_table.numpy().tobytes()).hexdigest(),
        "train_config": {k: v for k, v in train_cfg.to_dict().items() if k not in _RESUME_FREE_KEYS},
    }

    with _deterministic(device):
        torch.manual_seed(seed)
        model = Lyra.from_config(cfg).to(device)
        if prior_table is not None:
            _set_prior(model, prior_table, train, embedding)
        opt = configure_optimizer(model, train_cfg.lr, train_cfg.weight_decay, train_cfg.ssm_lr)
        sched = _make_scheduler(opt, train_cfg, steps_per_epoch)
        state = {"epoch": 0, "best_epoch": 0, "best_score": None, "best_valid": {}, "best_state": None,
                 "bad_epochs": 0, "history": [], "seconds": 0.0}
        if resume_path is not None and resume_path.exists():
            saved = load_resume(resume_path, identity)
            if saved is not None:
                model.load_state_dict(saved["model"])
                opt.load_state_dict(saved["optimizer"])
                sched.load_state_dict(saved["scheduler"])
                torch.set_rng_state(saved["rng_cpu"])
                state.update(saved["progress"])
                log.info("seed %d: resuming %s after epoch %d", seed, resume_path, state["epoch"])

        bar = tqdm(total=train_cfg.max_epochs, initial=state["epoch"], desc=f"seed {seed}", unit="epoch",
                   disable=not sys.stderr.isatty(), leave=False)
        try:
            for epoch in range(state["epoch"] + 1, train_cfg.max_epochs + 1):
                if 0 < train_cfg.patience <= state["bad_epochs"]:
                    break
                t_epoch = time.perf_counter()
                train_loss = _train_epoch(model, opt, sched, train, embedding, train_cfg, task, class_w, seed, epoch)
                _calibrate_pool_norm(model, train, embedding, train_cfg)
                valid_loss, scores = _validate(model, valid, embedding, train_cfg, task, transform, class_w)
                row = {"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                       **{f"valid_{k}": v for k, v in scores.items() if k != "loss"},
                       "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_epoch}
                state["history"].append(row)
                score = scores[metric]
                best_loss = state["best_valid"].get("loss", math.nan)
                if _improves(score, state["best_score"], higher, valid_loss, best_loss):
                    state.update(best_epoch=epoch, best_score=score, best_valid=scores,
                                 best_state=cpu_state(model), bad_epochs=0)
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch
                if log_every and epoch % log_every == 0:
                    log.info("seed %d epoch %d: train_loss %.4f valid_loss %.4f valid_%s %.4f (best %.4f @ %d)",
                             seed, epoch, row["train_loss"], valid_loss, metric, score, state["best_score"],
                             state["best_epoch"])
                bar.update(1)
                bar.set_postfix({f"valid_{metric}": f"{score:.4f}"})
                if resume_path is not None:
                    state["seconds"] += time.perf_counter() - started
                    started = time.perf_counter()
                    save_resume(resume_path, identity, model, opt, sched, state)
                if report is not None:
                    report(epoch, score)
        except BaseException as e:
            if resume_path is not None and _is_pruned(e):
                resume_path.unlink(missing_ok=True)  # a pruned trial is finished, not interrupted
            raise
        finally:
            bar.close()

    stopped_early = state["epoch"] < train_cfg.max_epochs
    if stopped_early:
        log.info("seed %d: stopped after epoch %d, no validation improvement for %d epochs",
                 seed, state["epoch"], state["bad_epochs"])
    seconds = state["seconds"] + time.perf_counter() - started
    save_checkpoint(checkpoint_path, {
        "model_config": cfg.to_dict(),
        "state_dict": state["best_state"],
        "alphabet": ab.name,
        "targets": targets,
        "task": task,
        "classes": classes,
        "target_transform": transform,
        "seed": int(seed),
        "epoch": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_valid": state["best_valid"],
        "selection_metric": metric,
        "history": state["history"],
        "train_config": train_cfg.to_dict(),
        "seconds": seconds,
    })
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    log.info("seed %d: best epoch %d, valid %s %.4f, %.1f s -> %s", seed, state["best_epoch"], metric,
             state["best_score"], seconds, checkpoint_path)
    return TrainResult(best_epoch=state["best_epoch"], best_valid=state["best_valid"], history=state["history"],
                       checkpoint_path=checkpoint_path, seconds=seconds, stopped_early=stopped_early)
