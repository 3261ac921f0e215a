"""The search space of the tuning study: what a trial may vary, and how its values map onto the configs.

`tune.search_space`: `name: {type: int|float|categorical, low, high, log, step, choices}`, a plain value
(fixed for every trial) or null (not searched: the `model`/`train` config's value), merged over
`DEFAULT_SEARCH_SPACE`. Names are `LyraConfig` or `TrainConfig` fields, plus two that shape the PGC stack
(the authors' compress-then-expand):
- `n_pgc`: number of PGC layers; the first keeps the config's first expansion (default 0.25), each
  later one uses the config's second expansion (default 2.0);
- `pgc_expansion`: that later-layer expansion, searchable too.
`d_state` must be even (conjugate pairs): an odd suggestion is rounded up.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping

import optuna

from lyra.errors import ConfigError

log = logging.getLogger("lyra.tune.space")

DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "d_state": {"type": "int", "low": 16, "high": 256, "log": True},
    "n_pgc": {"type": "int", "low": 1, "high": 4},
    "n_s4d": {"type": "int", "low": 1, "high": 6},
    "d_model": {"type": "categorical", "choices": [32, 64, 128]},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
}
SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}
PGC_PARAMS = ("n_pgc", "pgc_expansion")  # shape `pgc_expansions`; not config fields themselves
FIRST_PGC_EXPANSION, LATER_PGC_EXPANSION = 0.25, 2.0  # used when the config's list is too short
# Config fields that are not hyperparameters: the search may not touch them.
NOT_SEARCHABLE = {
    "d_input", "d_output", "token_level", "pgc_expansions",  # model: fixed by the data / use n_pgc
    "prior_length", "prior_sign",  # model: set by the prior section (the alignment, prior.sign)
    "seeds", "max_epochs", "patience", "device", "selection_metric", "num_workers", "eval_batch_size",
}


def _searchable_names() -> tuple[set[str], set[str]]:
    """(model names, train names) a search space may use."""
    from lyra.model.lyra import LyraConfig
    from lyra.learn.train import TrainConfig

    model = {f.name for f in dataclasses.fields(LyraConfig)} - NOT_SEARCHABLE
    train = {f.name for f in dataclasses.fields(TrainConfig)} - NOT_SEARCHABLE
    return model | set(PGC_PARAMS), train


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_search_space(space: Mapping[str, Any]) -> None:
    """Raise ConfigError naming `tune.search_space.<name>` for the first bad entry."""
    model_names, train_names = _searchable_names()
    for name, spec in space.items():
        key = f"tune.search_space.{name}"
        if name not in model_names | train_names:
            raise ConfigError(f"{key}: not a searchable model or train parameter; expected one of "
                              f"{sorted(model_names | train_names)}")
        if not isinstance(spec, Mapping):
            if isinstance(spec, (list, dict)):
                raise ConfigError(f"{key}: a fixed value must be a single value, got {spec!r}")
            continue  # fixed value, or None: not searched
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key; expected some of {sorted(SPEC_KEYS)}")
        kind = spec.get("type")
        if kind == "categorical":
            extra = set(spec) - {"type", "choices"}
            if extra:
                raise ConfigError(f"{key}.{sorted(extra)[0]}: not allowed for a categorical parameter (use choices)")
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{key}.choices: must be a non-empty list, got {choices!r}")
            for c in choices:
                if c is not None and not isinstance(c, (bool, int, float, str)):
                    raise ConfigError(f"{key}.choices: each choice must be a number, string, boolean or null, got {c!r}")
        elif kind in ("int", "float"):
            if "choices" in spec:
                raise ConfigError(f"{key}.choices: only for type categorical")
            low, high = spec.get("low"), spec.get("high")
            for bound, v in (("low", low), ("high", high)):
                if not _is_number(v) or (kind == "int" and not float(v).is_integer()) or not math.isfinite(v):
                    raise ConfigError(f"{key}.{bound}: must be a finite {'integer' if kind == 'int' else 'number'}, got {v!r}")
            if low > high:
                raise ConfigError(f"{key}: low ({low}) > high ({high})")
            log_scale = spec.get("log", False)
            if not isinstance(log_scale, bool):
                raise ConfigError(f"{key}.log: must be true or false, got {log_scale!r}")
            if log_scale and low <= 0:
                raise ConfigError(f"{key}.low: must be > 0 on a log scale, got {low}")
            step = spec.get("step")
            if step is not None:
                if log_scale:
                    raise ConfigError(f"{key}.step: cannot be combined with log: true")
                if not _is_number(step) or step <= 0 or (kind == "int" and not float(step).is_integer()):
                    raise ConfigError(f"{key}.step: must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
            if name == "n_pgc" and low < 1:
                raise ConfigError(f"{key}.low: need at least 1 PGC layer, got {low}")
        else:
            raise ConfigError(f"{key}.type: must be int, float or categorical, got {kind!r}")


def _searched(space: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {name: spec for name, spec in space.items() if isinstance(spec, Mapping)}


def fixed_values(space: Mapping[str, Any]) -> dict[str, Any]:
    """The space's fixed values (plain values; null means not searched), by name."""
    return {name: v for name, v in space.items() if not isinstance(v, Mapping) and v is not None}


def suggest_params(trial: optuna.Trial, search_space: Mapping[str, Any]) -> dict[str, Any]:
    """A flat dict of every parameter for this trial: the suggested ones and the fixed ones."""
    params = fixed_values(search_space)
    for name, spec in _searched(search_space).items():
        kind = spec["type"]
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]),
                                             step=int(spec.get("step") or 1), log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               step=spec.get("step"), log=spec.get("log", False))
    return params


def _model_defaults(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    from lyra.model.lyra import LyraConfig

    defaults = LyraConfig().to_dict()  # every field, lists (pgc_expansions) included
    return {**defaults, **dict(model_cfg)}


def as_train_config(train_cfg: Any):
    """A TrainConfig, from one or from the `train` section (checked)."""
    from lyra.learn.train import TrainConfig

    if isinstance(train_cfg, TrainConfig):
        return train_cfg
    return TrainConfig.from_dict(dict(train_cfg or {}))


def split_params(params: Mapping[str, Any], base_model_cfg: Mapping[str, Any], base_train_cfg: Any):
    """Map a flat param dict onto (model config dict, TrainConfig), starting from the config's values."""
    model_names, train_names = _searchable_names()
    model = dict(base_model_cfg)  # only the config's keys: d_input/d_output come from the data
    train = as_train_config(base_train_cfg)
    train_over: dict[str, Any] = {}
    for name, value in params.items():
        if name in PGC_PARAMS:
            continue
        if name not in model_names and name not in train_names:
            raise ConfigError(f"tune.search_space.{name}: not a searchable model or train parameter")
        if name in train_names:  # ssm_lr is in both configs; training reads TrainConfig's
            train_over[name] = value
        else:
            model[name] = value
    if "n_pgc" in params or "pgc_expansion" in params:
        old = [float(r) for r in _model_defaults(base_model_cfg)["pgc_expansions"]]
        first = old[0] if old else FIRST_PGC_EXPANSION
        later = float(params.get("pgc_expansion", old[1] if len(old) > 1 else LATER_PGC_EXPANSION))
        n = int(params.get("n_pgc", max(len(old), 1)))
        model["pgc_expansions"] = [first] + [later] * (n - 1)
    if "d_state" in model:
        model["d_state"] = int(model["d_state"]) + int(model["d_state"]) % 2  # conjugate pairs: even
    return model, dataclasses.replace(train, **train_over)


def fixed_params(search_space: Mapping[str, Any], model_cfg: Mapping[str, Any], train_cfg: Any) -> dict[str, Any]:
    """The config's own values of the searched parameters: the first trial.

    A value outside its range (or not among the choices) is left for the sampler, with a warning:
    Optuna cannot record it in that distribution.
    """
    model = _model_defaults(model_cfg)
    train = dataclasses.asdict(as_train_config(train_cfg))
    pgc = [float(r) for r in model["pgc_expansions"]]
    out = {}
    for name, spec in _searched(search_space).items():
        if name == "n_pgc":
            value = len(pgc)
        elif name == "pgc_expansion":
            if len(pgc) < 2:
                continue
            value = pgc[1]
        else:
            value = train[name] if name in train else model[name]
        if _in_space(value, spec):
            out[name] = value
        else:
            log.warning("tune.search_space.%s: the config's value %r is outside the search space; "
                        "the first trial samples it instead", name, value)
    return out


def _in_space(value: Any, spec: Mapping[str, Any]) -> bool:
    if spec["type"] == "categorical":
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in spec["choices"])
    if not _is_number(value):
        return False
    if spec["type"] == "int" and not float(value).is_integer():
        return False
    return spec["low"] <= value <= spec["high"]
