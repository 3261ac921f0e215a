"""Running a model over a dataset: the device, the dataset's targets and tokens as tensors, and batched
forward passes.

Shared by training (validation after every epoch), prediction from a checkpoint and ensemble evaluation.
Rows are encoded to tokens once, padded to the longest sequence; each batch is cut to its own longest
before the one-hot lookup.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lyra.data.alphabet import InvalidSequenceError, get_alphabet
from lyra.errors import ConfigError, DataError
from lyra.model.lyra import Lyra

log = logging.getLogger("lyra.learn.forward")


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


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when `amp` is set; a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


# ----------------------------------------------------------------------------------------------------
# the dataset as arrays


def task_info(meta: Mapping[str, Any]) -> tuple[str, list[str], list[str] | None]:
    """Dataset metadata -> (task, target columns, classes or None)."""
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


def target_values(frame: pd.DataFrame, meta: Mapping[str, Any]) -> np.ndarray:
    """Regression: (n, T) float64 in original units, NaN where not measured; classification: (n,) class index."""
    task, targets, classes = task_info(meta)
    missing = [t for t in targets if t not in frame.columns]
    if missing:
        raise DataError(f"dataset has no target column {missing[0]!r}")
    if task == "classification":
        return _labels(frame, targets[0], classes)
    return frame[targets].to_numpy(dtype=np.float64)  # (n, T)


def encode_frame(frame: pd.DataFrame, alphabet_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame's sequences -> (tokens (n, L) int64, mask (n, L) bool, True on residues)."""
    ab = get_alphabet(alphabet_name)
    names = frame["variant_id"].astype(str).tolist() if "variant_id" in frame.columns else None
    try:
        tokens, mask = ab.encode_batch(frame["sequence"].tolist(), names)
    except InvalidSequenceError as e:
        raise DataError(str(e)) from None
    return torch.from_numpy(tokens), torch.from_numpy(mask)


# ----------------------------------------------------------------------------------------------------
# forward passes


def batch_inputs(embedding: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, device: torch.device):
    """Token batch -> (one-hot (B, L_b, C), mask (B, L_b) or None), trimmed to the batch's longest."""
    L = int(mask.sum(1).max())
    tokens, mask = tokens[:, :L].to(device), mask[:, :L].to(device)
    x = embedding[tokens]  # (B, L_b, C)
    return x, (None if bool(mask.all()) else mask)


def forward_all(model: Lyra, embedding: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                batch_size: int, amp: bool = False) -> torch.Tensor:
    """Raw model outputs (n, d_output) float32 on CPU, in batches, without gradients."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode(), autocast(device, amp):
        for i in range(0, tokens.shape[0], batch_size):
            x, m = batch_inputs(embedding, tokens[i: i + batch_size], mask[i: i + batch_size], device)
            out.append(model(x, m).float().cpu())  # (B, d_output)
    return torch.cat(out) if out else torch.zeros(0, model.config.d_output)
