"""Training, checkpoints, prediction and ensemble evaluation.

One call of `train_model` trains one ensemble member (one seed) on the rows with split == 'train',
measures the validation split after every epoch, keeps a deep copy of the weights of the best
validation epoch (the test split is never looked at; a tie in the selection metric goes to the lower
validation loss), stops early when validation stops improving, and
writes the best weights as a checkpoint. With `resume_path` the whole training state is saved after
every epoch, so a killed job continues where it stopped and ends with the same weights as an
uninterrupted run: the data order and the dropout masks of epoch e are pure functions of (seed, e).

Regression targets are transformed with statistics of the training rows only (standardize or
rank_gauss); the transform is stored in the checkpoint and inverted at prediction, so predictions are
in the original units.
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.special import ndtri
from scipy.stats import rankdata
from tqdm.auto import tqdm

from lyra.learn import metrics as M
from lyra.data.alphabet import InvalidSequenceError, get_alphabet
from lyra.errors import ConfigError, DataError, LyraError
from lyra.io import atomic_path, write_json
from lyra.model.lyra import Lyra, LyraConfig, configure_optimizer

log = logging.getLogger("lyra.learn.train")

LOSSES = ("mse", "huber")
TRANSFORMS = ("none", "standardize", "rank_gauss")
SCHEDULERS = ("none", "cosine")
CLASS_WEIGHTS = ("none", "balanced")
# Settings that may change between a killed run and its rerun without invalidating the saved state.
_RESUME_FREE_KEYS = ("device", "eval_batch_size", "num_workers", "seeds")


@dataclass
class TrainConfig:
    seeds: int = 5  # ensemble size (one train_model call per seed)
    max_epochs: int = 100
    patience: int = 15  # epochs without a validation improvement before stopping; <= 0 never stops
    device: str = "auto"  # auto | cpu | cuda (auto = cuda when available)
    batch_size: int = 64
    eval_batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.01
    ssm_lr: float = 1e-3  # log_dt and A: their own AdamW group, no weight decay
    loss: str = "mse"  # regression: mse | huber (classification is always cross-entropy)
    huber_delta: float = 1.0  # in transformed target units
    class_weights: str = "none"  # classification: none | balanced (inverse class frequency in train)
    target_transform: str = "standardize"  # none | standardize | rank_gauss; fitted on train rows only
    scheduler: str = "cosine"  # none | cosine (per step, over max_epochs)
    warmup_epochs: float = 0.0  # linear learning-rate warm-up before the cosine decay
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    amp: bool = True  # bf16 autocast, CUDA only
    selection_metric: str = "spearman"  # regression: spearman|pearson|ndcg|mse|loss; classification: accuracy|auroc|mcc|loss
    num_workers: int = 0  # kept for config compatibility: batches are slices of tensors encoded once, no loader

    def __post_init__(self) -> None:
        choices = {"loss": LOSSES, "target_transform": TRANSFORMS, "scheduler": SCHEDULERS,
                   "class_weights": CLASS_WEIGHTS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"train.{key}: must be one of {list(allowed)}, got {getattr(self, key)!r}")
        for key in ("seeds", "max_epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"train.{key}: must be >= 1, got {getattr(self, key)!r}")
        for key in ("lr", "ssm_lr", "huber_delta"):
            if not float(getattr(self, key)) > 0:
                raise ConfigError(f"train.{key}: must be > 0, got {getattr(self, key)!r}")
        for key in ("weight_decay", "grad_clip", "warmup_epochs", "num_workers"):
            if float(getattr(self, key)) < 0:
                raise ConfigError(f"train.{key}: must be >= 0, got {getattr(self, key)!r}")
        allowed = set(M.REGRESSION_METRICS) | set(M.CLASSIFICATION_METRICS) | {"loss"}
        if self.selection_metric not in allowed:
            raise ConfigError(f"train.selection_metric: must be one of {sorted(allowed)}, got {self.selection_metric!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"train.device: must be auto, cpu or cuda, got {self.device!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"train.{key}: unknown key; expected one of {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]  # validation metrics of the best epoch (no 'valid_' prefix), incl. 'loss'
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, valid_loss, valid_<metric>, lr, seconds
    checkpoint_path: Path
    seconds: float  # training time, summed over resumed runs
    stopped_early: bool = False


# ----------------------------------------------------------------------------------------------------
# devices and determinism


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU falls back to cpu with a warning."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            msg = f"device {name!r} requested but CUDA is not available; training on CPU"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            return torch.device("cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"train.device: must be auto, cpu or cuda, got {name!r}")


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
# target transforms (fitted on training rows; a dict of plain floats/lists for the checkpoint)


def fit_target_transform(kind: str, y_train: np.ndarray) -> dict[str, Any]:
    """y_train (n, T) with NaN for missing values -> a transform dict (see `apply_transform`)."""
    y_train = np.asarray(y_train, dtype=np.float64).reshape(len(y_train), -1)
    cols = [c[~np.isnan(c)] for c in y_train.T]
    if any(c.size == 0 for c in cols):
        raise DataError("a target has no measured value in the training split")
    mean = [float(c.mean()) for c in cols]
    std = [float(c.std()) if c.std() > 0 else 1.0 for c in cols]
    if kind == "none":
        return {"kind": "none"}
    if kind == "standardize":
        return {"kind": "standardize", "mean": mean, "std": std}
    if kind == "rank_gauss":
        # knots: each distinct training value and the normal quantile of its mid-rank
        values, z = [], []
        for c in cols:
            v, first = np.unique(np.sort(c), return_index=True)
            mid = rankdata(c, method="average")
            q = ndtri((np.sort(mid)[first] - 0.5) / c.size)  # (k,) strictly increasing
            if v.size > 4001:  # keep the checkpoint small: evenly spaced knots, ends included
                keep = np.unique(np.linspace(0, v.size - 1, 4001).round().astype(int))
                v, q = v[keep], q[keep]
            values.append(v.tolist())
            z.append(q.tolist())
        return {"kind": "rank_gauss", "values": values, "z": z, "mean": mean, "std": std}
    raise ConfigError(f"train.target_transform: must be one of {list(TRANSFORMS)}, got {kind!r}")


def _interp_extrapolate(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, slope: float) -> np.ndarray:
    """Piecewise-linear through (xp, fp), continued with `slope` outside, so it stays strictly monotone
    (no ties at the ends: a test variant fitter than every training variant still ranks first)."""
    y = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    y[lo] = fp[0] + (x[lo] - xp[0]) * slope
    y[hi] = fp[-1] + (x[hi] - xp[-1]) * slope
    return y


def apply_transform(t: Mapping[str, Any], y: np.ndarray) -> np.ndarray:
    """Original units (n, T) -> model units (n, T); NaN stays NaN."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if t["kind"] == "none":
        return y.copy()
    mean, std = np.asarray(t["mean"]), np.asarray(t["std"])
    if t["kind"] == "standardize":
        return (y - mean) / std
    out = np.full_like(y, np.nan)
    for j in range(y.shape[1]):
        ok = ~np.isnan(y[:, j])
        values, z = np.asarray(t["values"][j]), np.asarray(t["z"][j])
        out[ok, j] = _interp_extrapolate(y[ok, j], values, z, 1.0 / std[j]) if values.size > 1 else 0.0
    return out


def invert_transform(t: Mapping[str, Any], z: np.ndarray) -> np.ndarray:
    """Model units (n, T) -> original units (n, T)."""
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    if t["kind"] == "none":
        return z.copy()
    mean, std = np.asarray(t["mean"]), np.asarray(t["std"])
    if t["kind"] == "standardize":
        return z * std + mean
    out = np.empty_like(z)
    for j in range(z.shape[1]):
        values, q = np.asarray(t["values"][j]), np.asarray(t["z"][j])
        out[:, j] = _interp_extrapolate(z[:, j], q, values, std[j]) if values.size > 1 else values[0]
    return out


# ----------------------------------------------------------------------------------------------------
# data: the whole dataset is encoded to tokens once


@dataclass
class _Split:
    tokens: torch.Tensor  # (n, L) int64
    mask: torch.Tensor  # (n, L) bool, True on residues
    y: torch.Tensor  # (n, T) float32 in model units (regression) or (n,) int64 class index
    y_raw: np.ndarray  # (n, T) float64 original units, or (n,) int64 class index

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _task_info(meta: Mapping[str, Any]) -> tuple[str, list[str], list[str] | None]:
    for key in ("alphabet", "targets", "task"):
        if key not in meta:
            raise DataError(f"dataset metadata has no {key!r} entry")
    task = meta["task"]
    if task not in ("regression", "classification"):
        raise DataError(f"dataset metadata: task must be regression or classification, got {task!r}")
    targets = list(meta["targets"])
    classes = list(meta["classes"]) if task == "classification" else None
    if task == "classification" and (not classes or len(targets) != 1):
        raise DataError("dataset metadata: a classification dataset needs one target and its classes")
    return task, targets, classes


def _labels(frame: pd.DataFrame, target: str, classes: Sequence[str]) -> np.ndarray:
    index = {str(c): i for i, c in enumerate(classes)}
    values = frame[target].astype(str).tolist()
    for i, v in enumerate(values):
        if v not in index:
            raise DataError(f"variant {frame['variant_id'].iloc[i]!r}: class {v!r} is not one of {list(classes)}")
    return np.array([index[v] for v in values], dtype=np.int64)


def _targets(frame: pd.DataFrame, meta: Mapping[str, Any]) -> np.ndarray:
    task, targets, classes = _task_info(meta)
    missing = [t for t in targets if t not in frame.columns]
    if missing:
        raise DataError(f"dataset has no target column {missing[0]!r}")
    if task == "classification":
        return _labels(frame, targets[0], classes)
    return frame[targets].to_numpy(dtype=np.float64)  # (n, T)


def _encode_frame(frame: pd.DataFrame, alphabet_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    ab = get_alphabet(alphabet_name)
    names = frame["variant_id"].astype(str).tolist() if "variant_id" in frame.columns else None
    try:
        tokens, mask = ab.encode_batch(frame["sequence"].tolist(), names)
    except InvalidSequenceError as e:
        raise DataError(str(e)) from None
    return torch.from_numpy(tokens), torch.from_numpy(mask)


FEW_VALIDATION_ROWS = 20  # below this, warn: Spearman on a handful of rows takes few distinct values


def _prepare(frame: pd.DataFrame, meta: Mapping[str, Any], cfg: TrainConfig):
    """-> (train _Split, valid _Split, transform dict or None, class weights tensor or None)."""
    task, targets, classes = _task_info(meta)
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
    tokens, mask = _encode_frame(frame[rows], meta["alphabet"])  # encoded once, padded to the longest
    y_raw = _targets(frame[rows], meta)
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


# ----------------------------------------------------------------------------------------------------
# forward passes


def _batch_inputs(embedding: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, device: torch.device):
    """Token batch -> (one-hot (B, L_b, C), mask (B, L_b) or None), trimmed to the batch's longest."""
    L = int(mask.sum(1).max())
    tokens, mask = tokens[:, :L].to(device), mask[:, :L].to(device)
    x = embedding[tokens]  # (B, L_b, C)
    return x, (None if bool(mask.all()) else mask)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _forward_all(model: Lyra, embedding: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                 batch_size: int, amp: bool = False) -> torch.Tensor:
    """Raw model outputs (n, d_output) float32 on CPU, in batches, without gradients."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode(), _autocast(device, amp):
        for i in range(0, tokens.shape[0], batch_size):
            x, m = _batch_inputs(embedding, tokens[i: i + batch_size], mask[i: i + batch_size], device)
            out.append(model(x, m).float().cpu())  # (B, d_output)
    return torch.cat(out) if out else torch.zeros(0, model.config.d_output)


def _loss(task: str, cfg: TrainConfig, out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None):
    if task == "classification":
        return F.cross_entropy(out, y, weight=weights)
    measured = ~torch.isnan(y)  # (B, T): several targets need not all be measured
    pred, target = out[measured], y[measured]
    if cfg.loss == "huber":
        return F.huber_loss(pred, target, delta=cfg.huber_delta)
    return F.mse_loss(pred, target)


def _metrics(task: str, y_raw: np.ndarray, out: torch.Tensor, transform) -> dict[str, float]:
    """Validation metrics in original units; several regression targets: the mean over targets."""
    if task == "classification":
        return M.classification_metrics(y_raw, torch.softmax(out, -1).numpy())
    pred = invert_transform(transform, out.numpy())  # (n, T)
    per_target = [M.regression_metrics(y_raw[:, j], pred[:, j]) for j in range(pred.shape[1])]
    return {k: float(np.mean([m[k] for m in per_target])) for k in per_target[0]}


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


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of the weights (a plain state_dict() would keep tracking the live parameters)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _is_pruned(e: BaseException) -> bool:
    try:
        import optuna
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, optuna.TrialPruned)


def _model_config(model_cfg: Mapping[str, Any] | LyraConfig, d_input: int, d_output: int) -> LyraConfig:
    d = model_cfg.to_dict() if isinstance(model_cfg, LyraConfig) else dict(model_cfg)
    d.update(d_input=d_input, d_output=d_output)  # always from the data
    cfg = LyraConfig.from_dict(d)
    if cfg.token_level:
        raise ConfigError("model.token_level: training predicts one value per sequence; token_level must be false")
    return cfg


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
        x, m = _batch_inputs(embedding, train.tokens[idx], train.mask[idx], device)
        with _autocast(device, cfg.amp):
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


def _validate(model: Lyra, valid: _Split, embedding: torch.Tensor, cfg: TrainConfig, task: str, transform,
              class_w: torch.Tensor | None) -> tuple[float, dict[str, float]]:
    """(loss in model units, metrics in original units) over the whole validation split at once."""
    model.eval()
    out = _forward_all(model, embedding, valid.tokens, valid.mask, cfg.eval_batch_size, cfg.amp)  # (n, d_output)
    with torch.no_grad():
        loss = float(_loss(task, cfg, out, valid.y, None if class_w is None else class_w.cpu()))
    scores = _metrics(task, valid.y_raw, out, transform)
    scores["loss"] = loss
    return loss, scores


# ----------------------------------------------------------------------------------------------------
# training


def _check_prior_lengths(table: torch.Tensor, *splits: _Split) -> None:
    for s in splits:
        lengths = s.mask.sum(1)
        if bool((lengths != table.shape[0]).any()):
            L = int(lengths[lengths != table.shape[0]][0])
            raise DataError(f"prior.msa: the prior scores variants of the wild type's length {table.shape[0]}, "
                            f"but the dataset has a sequence of length {L}")


def _set_prior(model: Lyra, table: torch.Tensor, train: _Split, embedding: torch.Tensor) -> None:
    """Copy the table in and standardise its scores on the training variants (never validation)."""
    model.prior_table.copy_(table)
    with torch.no_grad():
        s = model.prior(embedding[train.tokens.to(embedding.device)])  # (n_train,) raw: mu 0, sigma 1 so far
    model.prior_mu.fill_(float(s.mean()))
    model.prior_sigma.fill_(float(s.std()) if len(s) > 1 and float(s.std()) > 0 else 1.0)


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
    task, targets, classes = _task_info(meta)
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
            saved = _load_resume(resume_path, identity)
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
                valid_loss, scores = _validate(model, valid, embedding, train_cfg, task, transform, class_w)
                row = {"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                       **{f"valid_{k}": v for k, v in scores.items() if k != "loss"},
                       "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_epoch}
                state["history"].append(row)
                score = scores[metric]
                best_loss = state["best_valid"].get("loss", math.nan)
                if _improves(score, state["best_score"], higher, valid_loss, best_loss):
                    state.update(best_epoch=epoch, best_score=score, best_valid=scores,
                                 best_state=_cpu_state(model), bad_epochs=0)
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
                    _save_resume(resume_path, identity, model, opt, sched, state)
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
    checkpoint = {
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
        "lyra_version": _version(),
    }
    with atomic_path(checkpoint_path) as tmp:
        torch.save(checkpoint, tmp)
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    log.info("seed %d: best epoch %d, valid %s %.4f, %.1f s -> %s", seed, state["best_epoch"], metric,
             state["best_score"], seconds, checkpoint_path)
    return TrainResult(best_epoch=state["best_epoch"], best_valid=state["best_valid"], history=state["history"],
                       checkpoint_path=checkpoint_path, seconds=seconds, stopped_early=stopped_early)


def _version() -> str:
    import lyra

    return str(getattr(lyra, "__version__", "unknown"))


def _save_resume(path: Path, identity: dict, model, opt, sched, state: dict) -> None:
    payload = {
        "identity": identity,
        "model": _cpu_state(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "progress": state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_resume(path: Path, identity: dict) -> dict | None:
    """The saved state, or None (with a warning) when it is unreadable or from another run."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: start over rather than fail the job
        log.warning("%s: cannot read resume state (%s); starting from epoch 1", path, e)
        return None
    if not isinstance(saved, dict) or saved.get("identity") != identity:
        log.warning("%s: resume state is from a different config, seed or dataset; starting from epoch 1", path)
        return None
    return saved


# ----------------------------------------------------------------------------------------------------
# checkpoints and prediction

_CHECKPOINT_KEYS = ("model_config", "state_dict", "alphabet", "targets", "task", "target_transform")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Lyra, dict]:
    """-> (model in eval mode on `device`, the checkpoint dict). Raises LyraError on a foreign file."""
    path = Path(path)
    if not path.exists():
        raise LyraError(f"{path}: checkpoint does not exist")
    try:
        info = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LyraError(f"{path}: not a readable Lyra checkpoint ({reason[:200]})") from None
    if not isinstance(info, dict) or any(k not in info for k in _CHECKPOINT_KEYS):
        missing = [k for k in _CHECKPOINT_KEYS if not isinstance(info, dict) or k not in info]
        raise LyraError(f"{path}: not a Lyra checkpoint (missing {', '.join(missing)})")
    try:
        model = Lyra.from_config(info["model_config"])
        model.load_state_dict(info["state_dict"])
    except (RuntimeError, TypeError, ConfigError) as e:
        raise LyraError(f"{path}: checkpoint weights do not fit its model config ({str(e).splitlines()[0][:200]})") from None
    device = resolve_device(device) if isinstance(device, str) else device
    return model.to(device).eval(), info


def predict_tokens(model: Lyra, info: Mapping[str, Any], tokens: torch.Tensor, mask: torch.Tensor | None = None,
                   batch_size: int = 4096) -> np.ndarray:
    """Tokens (B, L) -> (B, d_output): regression in original target units, classification probabilities."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if mask is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    device = next(model.parameters()).device
    embedding = get_alphabet(info["alphabet"]).embedding().to(device)
    was_training = model.training
    model.eval()
    out = _forward_all(model, embedding, tokens, mask, batch_size)  # (B, d_output)
    model.train(was_training)
    if info["task"] == "classification":
        return torch.softmax(out, -1).numpy().astype(np.float64)
    return invert_transform(info["target_transform"], out.numpy())


def predict_sequences(model: Lyra, info: Mapping[str, Any], sequences: Sequence[str],
                      batch_size: int = 4096) -> np.ndarray:
    """Sequences -> (n, d_output), see `predict_tokens`."""
    tokens, mask = get_alphabet(info["alphabet"]).encode_batch(list(sequences))
    return predict_tokens(model, info, torch.from_numpy(tokens), torch.from_numpy(mask), batch_size)


predict = predict_sequences


# ----------------------------------------------------------------------------------------------------
# evaluation


def evaluate_ensemble(checkpoint_paths: Sequence[str | os.PathLike], frame: pd.DataFrame,
                      meta: Mapping[str, Any], split: str = "test", device: str | torch.device = "cpu",
                      batch_size: int = 4096) -> dict[str, Any]:
    """Metrics of the ensemble (mean of the members' predictions or probabilities) and of each member."""
    if not checkpoint_paths:
        raise ConfigError("evaluate: no checkpoints given")
    task, targets, classes = _task_info(meta)
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise DataError(f"dataset has no rows with split == {split!r}")
    tokens, mask = _encode_frame(rows, meta["alphabet"])
    y = _targets(rows, meta)
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
            "per_seed": per_seed, "learning_curves": curves}


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
                  meta: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, Any]:
    """models/metrics.json: test and valid ensemble metrics with per-seed values, the learning curves, and
    whether the ensemble learned: "learned" (bool) and "warnings" (one line each, empty when all is well;
    see `lyra.learn.metrics.learning_warnings`), each warning also logged."""
    test = evaluate_ensemble(checkpoints, frame, meta, "test", device)
    valid = evaluate_ensemble(checkpoints, frame, meta, "valid", device)
    curves = {str(k): v for k, v in test.pop("learning_curves").items()}
    valid.pop("learning_curves")
    out = {"test": test, "valid": valid, "learning_curves": curves, "task": meta["task"],
           "targets": list(meta["targets"]), "checkpoints": [str(p) for p in checkpoints]}
    out["warnings"] = M.learning_warnings(out)
    out["learned"] = M.has_learned(out)
    for warning in out["warnings"]:
        log.warning("%s", warning)
    write_json(path, _finite(out))
    return out


def _finite(x: Any) -> Any:
    """NaN/inf -> None, so the file is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
