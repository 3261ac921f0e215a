"""Checkpoint files and the resume state of a training run, and prediction with a trained checkpoint.

A checkpoint is a dict of plain types and tensors (the best epoch's weights, the model config, the target
transform, the training history; see `lyra.learn.train.train_model`), read back with
`torch.load(weights_only=True)`, so a planted pickle is refused rather than run. A resume file holds the
whole training state after the last finished epoch, with the identity of the run it belongs to.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from lyra.data.alphabet import get_alphabet
from lyra.errors import ConfigError, LyraError
from lyra.io import atomic_path
from lyra.learn.forward import forward_all, resolve_device
from lyra.learn.transforms import invert_transform
from lyra.model.lyra import Lyra

log = logging.getLogger("lyra.learn.checkpoints")

_CHECKPOINT_KEYS = ("model_config", "state_dict", "alphabet", "targets", "task", "target_transform")


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of the weights (a plain state_dict() would keep tracking the live parameters)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _version() -> str:
    import lyra

    return str(getattr(lyra, "__version__", "unknown"))


def save_checkpoint(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Write `checkpoint` atomically, stamped with the lyra version that wrote it."""
    with atomic_path(path) as tmp:
        torch.save({**checkpoint, "lyra_version": _version()}, tmp)


# model_config keys a checkpoint written before the key existed lacks, with the value the model had then
_OLDER_MODEL_CONFIG = {"pool_norm": "none"}


def stored_model_config(info: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's `model_config`, with the keys an older checkpoint lacks set to what they were then."""
    return {**_OLDER_MODEL_CONFIG, **info["model_config"]}


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
        model = Lyra.from_config(stored_model_config(info))
        model.load_state_dict(info["state_dict"])
    except (RuntimeError, TypeError, ConfigError) as e:
        raise LyraError(f"{path}: checkpoint weights do not fit its model config ({str(e).splitlines()[0][:200]})") from None
    device = resolve_device(device) if isinstance(device, str) else device
    return model.to(device).eval(), info


# ----------------------------------------------------------------------------------------------------
# resume state


def save_resume(path: Path, identity: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
                progress: dict) -> None:
    """The whole training state after an epoch: weights, optimiser, schedule, RNG and `progress`."""
    payload = {
        "identity": identity,
        "model": cpu_state(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "progress": progress,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_resume(path: Path, identity: dict) -> dict | None:
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
# prediction


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
    out = forward_all(model, embedding, tokens, mask, batch_size)  # (B, d_output)
    model.train(was_training)
    if info["task"] == "classification":
        return torch.softmax(out, -1).numpy().astype(np.float64)
    return invert_transform(info["target_transform"], out.numpy())


def predict_sequences(model: Lyra, info: Mapping[str, Any], sequences: Sequence[str],
                      batch_size: int = 4096) -> np.ndarray:
    """Sequences -> (n, d_output), see `predict_tokens`."""
    tokens, mask = get_alphabet(info["alphabet"]).encode_batch(list(sequences))
    return predict_tokens(model, info, torch.from_numpy(tokens), torch.from_numpy(mask), batch_size)
