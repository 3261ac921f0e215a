"""Regression target transforms (`train.target_transform`): none, standardize and rank_gauss.

A transform is fitted on the training rows only, kept as a dict of plain floats and lists (it is stored in
the checkpoint, which `torch.load(weights_only=True)` reads back), applied to the targets before training
and inverted at prediction, so predictions are in the original units.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata

from lyra.errors import ConfigError, DataError

MAX_KNOTS = 4001  # rank_gauss: more distinct training values are thinned to this many, to keep checkpoints small


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
            if v.size > MAX_KNOTS:  # evenly spaced knots, ends included
                keep = np.unique(np.linspace(0, v.size - 1, MAX_KNOTS).round().astype(int))
                v, q = v[keep], q[keep]
            values.append(v.tolist())
            z.append(q.tolist())
        return {"kind": "rank_gauss", "values": values, "z": z, "mean": mean, "std": std}
    raise ConfigError(f"train.target_transform: must be none, standardize or rank_gauss, got {kind!r}")


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
