"""Hyperparameter search: n_workers Optuna workers sharing one study in a journal file.

Each worker is its own job (a SLURM job on a cluster). They share `tune/journal.log`, an Optuna
`JournalStorage` with the *open* lock (O_EXCL lock file): it works on NFS, where SQLite's fcntl locks
do not. A trial trains one model on the train split and reports the validation metric after every
epoch, so the median pruner can stop a bad trial early; the objective is the best validation value.
The test split is never read here.

Reproducible in parallel. Trials run in *batches* of `n_workers` (trial k is in batch k // n_workers).
Trial k's parameters are sampled by a TPE sampler seeded with `trial_seed(seed, k)` that sees only the
trials of earlier batches, its model is trained with that same seed, and the median pruner compares
it only with completed trials of earlier batches. A worker about to start batch b waits until batch
b - 1 has finished. So the trials, their values and the best trial depend on the seed, `n_trials`
and `n_workers`, never on which worker ran what or when: `lyra run` (one worker after the other)
and a cluster run (all at once) pick the same model. The price is idle workers at a batch boundary.

Guarantees (tests/test_tune.py checks each):
- The config's fixed parameters (`model`, `train`) are trial 0, enqueued exactly once.
- At most `n_trials` trials exist, counted over all workers. Creating a trial (count, then ask) is done
  under a second open-lock file, `<journal>.trial.lock`, so two workers cannot both take the last slot.
  The journal lock alone cannot give this: Optuna's `ask` is several journal writes. If a worker dies
  while holding that lock, the others wait out its 30 s grace period and then break it.
- A worker killed mid-trial leaves that trial RUNNING. Optuna 5 has heartbeats only for `RDBStorage`,
  so a trial writes its own (`user_attrs["heartbeat"]`, every epoch). A worker waiting on it marks it
  FAIL once its process is gone (same host) or its heartbeat is `heartbeat_timeout_min` old;
  `collect_best`, which runs after every worker ended, marks any RUNNING trial FAIL
  (`fail_stale_trials`). A stale trial counts towards `n_trials`, so a rerun worker runs only what
  is left.
- A trial that raises is recorded FAIL with the error in `user_attrs["error"]`; the worker goes on,
  unless its first `MAX_INITIAL_FAILURES` trials all failed (a broken config, not bad luck).

Search space: `name: {type: int|float|categorical, low, high, log, step, choices}`, a plain value (fixed
for every trial) or null (not searched: the `model`/`train` config's value). Names are `LyraConfig` or
`TrainConfig` fields, plus two that shape the PGC stack (the authors' compress-then-expand):
- `n_pgc`: number of PGC layers; the first keeps the config's first expansion (default 0.25), each
  later one uses the config's second expansion (default 2.0);
- `pgc_expansion`: that later-layer expansion, searchable too.
`d_state` must be even (conjugate pairs): an odd suggestion is rounded up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from lyra.errors import ConfigError, LyraError
from lyra.io import atomic_path, write_json

log = logging.getLogger("lyra.tune.study")

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
FINISHED_OR_LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
MAX_INITIAL_FAILURES = 3
CONFIG_ATTR = "lyra_config"  # study user attr: the config the study was started with


@dataclass
class TuneConfig:
    enabled: bool = True
    n_trials: int = 20  # total across all workers
    n_workers: int = 2
    seed: int = 0  # campaign seed; trial k samples and trains with trial_seed(seed, k)
    metric: str = "spearman"  # validation metric to optimise (never test)
    direction: str = "maximize"
    max_epochs: int = 30  # per trial
    patience: int = 8
    pruner: str = "median"  # median | none
    pruner_startup_trials: int = 5  # median pruner: no pruning before this many trials finished
    pruner_warmup_epochs: int = 5  # ... nor before this many epochs of the trial
    heartbeat_timeout_min: float = 60.0  # a RUNNING trial silent this long is dead (one epoch must be shorter)
    search_space: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_SEARCH_SPACE)))

    def __post_init__(self) -> None:
        for key in ("n_trials", "n_workers", "max_epochs", "patience", "pruner_startup_trials"):
            _require_int(f"tune.{key}", getattr(self, key), minimum=0 if key == "pruner_startup_trials" else 1)
        _require_int("tune.pruner_warmup_epochs", self.pruner_warmup_epochs, minimum=0)
        _require_int("tune.seed", self.seed, minimum=0)
        if not _is_number(self.heartbeat_timeout_min) or not self.heartbeat_timeout_min > 0:
            raise ConfigError(f"tune.heartbeat_timeout_min: must be a number > 0, got {self.heartbeat_timeout_min!r}")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"tune.direction: must be maximize or minimize, got {self.direction!r}")
        if self.pruner not in ("median", "none"):
            raise ConfigError(f"tune.pruner: must be median or none, got {self.pruner!r}")
        from lyra.learn.metrics import CLASSIFICATION_METRICS, LOWER_IS_BETTER, REGRESSION_METRICS

        metrics = (*REGRESSION_METRICS, *CLASSIFICATION_METRICS, "loss")
        if self.metric not in metrics:
            raise ConfigError(f"tune.metric: must be one of {list(metrics)}, got {self.metric!r}")
        expected = "minimize" if self.metric in LOWER_IS_BETTER else "maximize"
        if self.direction != expected:
            raise ConfigError(f"tune.direction: metric {self.metric!r} needs direction {expected}, got {self.direction}")
        validate_search_space(self.search_space)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TuneConfig":
        """Unknown keys are rejected; `search_space` is merged over DEFAULT_SEARCH_SPACE."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"tune.{key}: unknown key; expected one of {sorted(known)}")
        d = dict(d)
        space = d.get("search_space")
        if space is not None and not isinstance(space, Mapping):
            raise ConfigError(f"tune.search_space: must be a mapping of name -> spec, got {type(space).__name__}")
        d["search_space"] = {**json.loads(json.dumps(DEFAULT_SEARCH_SPACE)), **dict(space or {})}
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")


# ---- search space ---------------------------------------------------------------------------------


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


def _fixed(space: Mapping[str, Any]) -> dict[str, Any]:
    return {name: v for name, v in space.items() if not isinstance(v, Mapping) and v is not None}


def suggest_params(trial: optuna.Trial, search_space: Mapping[str, Any]) -> dict[str, Any]:
    """A flat dict of every parameter for this trial: the suggested ones and the fixed ones."""
    params = _fixed(search_space)
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

    defaults = {f.name: f.default for f in dataclasses.fields(LyraConfig) if f.default is not dataclasses.MISSING}
    return {**defaults, **dict(model_cfg)}


def _as_train_config(train_cfg: Any):
    from lyra.learn.train import TrainConfig

    if isinstance(train_cfg, TrainConfig):
        return train_cfg
    return TrainConfig.from_dict(dict(train_cfg or {}))


def split_params(params: Mapping[str, Any], base_model_cfg: Mapping[str, Any], base_train_cfg: Any):
    """Map a flat param dict onto (model config dict, TrainConfig), starting from the config's values."""
    model_names, train_names = _searchable_names()
    model = dict(base_model_cfg)  # only the config's keys: d_input/d_output come from the data
    train = _as_train_config(base_train_cfg)
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
    train = dataclasses.asdict(_as_train_config(train_cfg))
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


# ---- the study ------------------------------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    """Seed of trial `number` (its sampler and its training): deterministic, distinct for distinct
    numbers (7919 is odd, so k -> 7919 k is a bijection mod 2**31), whichever worker runs it."""
    return (seed * 1_000_003 + 7919 * number + 1) % 2**31


def should_prune(history: list[FrozenTrial], epoch: int, best_so_far: float, tune_cfg: TuneConfig) -> bool:
    """Median rule over the completed trials of earlier batches (fixed when the trial starts, so the
    decision does not depend on what other workers are doing): prune when the trial's best value so
    far is worse than their median value at this epoch."""
    if tune_cfg.pruner == "none" or epoch < tune_cfg.pruner_warmup_epochs:
        return False
    completed = [t for t in history if t.state == TrialState.COMPLETE]
    if len(completed) < tune_cfg.pruner_startup_trials:
        return False
    at_epoch = [t.intermediate_values[epoch] for t in completed
                if epoch in t.intermediate_values and math.isfinite(t.intermediate_values[epoch])]
    if not at_epoch or not math.isfinite(best_so_far):
        return False
    median = statistics.median(at_epoch)
    return best_so_far < median if tune_cfg.direction == "maximize" else best_so_far > median


def sample_params(history: list[FrozenTrial], number: int, tune_cfg: TuneConfig) -> dict[str, Any]:
    """Parameters of trial `number`: TPE seeded with trial_seed, fitted on `history` only."""
    sampler = optuna.samplers.TPESampler(seed=trial_seed(tune_cfg.seed, number))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory" per trial
    try:
        scratch = optuna.create_study(direction=tune_cfg.direction, sampler=sampler)
        scratch.add_trials([t for t in history if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])
        trial = scratch.ask()
        suggest_params(trial, tune_cfg.search_space)
        return dict(trial.params)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _storage(journal_path: str | os.PathLike) -> JournalStorage:
    path = str(journal_path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def open_study(journal_path: str | os.PathLike, study_name: str, direction: str) -> optuna.Study:
    """Create or load the shared study (creation is race-free: the journal rejects a second one).

    Every trial is enqueued with its parameters (see `sample_params`), so the study's own sampler
    and pruner never decide anything.
    """
    return optuna.create_study(storage=_storage(journal_path), study_name=study_name, direction=direction,
                               sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(),
                               load_if_exists=True)


@contextlib.contextmanager
def _trial_lock(journal_path: str | os.PathLike) -> Iterator[None]:
    """Cross-process lock for `<journal>.trial.lock` (O_EXCL create: NFSv3-safe like the journal)."""
    lock = JournalFileOpenLock(str(journal_path) + ".trial")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _comparable_models(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[dict, dict]:
    """Both model configs with LyraConfig's defaults filled in, so that a key stated at its default is
    no change; both as given when one holds a key this version does not know (an older journal)."""
    from lyra.model.lyra import LyraConfig

    try:
        return tuple(_normalise(LyraConfig.from_dict(dict(m)).to_dict()) for m in (a, b))
    except (ConfigError, TypeError, ValueError):
        return dict(a), dict(b)


def _init_study(study: optuna.Study, journal_path: Path, tune_cfg: TuneConfig, model_cfg: dict,
                train_cfg: Any) -> None:
    """Under the trial lock: record the config and enqueue the fixed trial, once per study."""
    train_dict = dataclasses.asdict(_as_train_config(train_cfg))
    mine = _normalise({"tune": tune_cfg.to_dict(), "model": dict(model_cfg), "train": train_dict})
    with _trial_lock(journal_path):
        recorded = study.user_attrs.get(CONFIG_ATTR)
        if recorded is None:
            study.set_user_attr(CONFIG_ATTR, mine)
        else:
            # what decides the trials: a study resumed with other values would not be reproducible
            keys = ("search_space", "metric", "direction", "seed", "n_workers", "pruner", "pruner_startup_trials",
                    "pruner_warmup_epochs", "max_epochs", "patience")
            for part, keys in (("tune", keys), ("model", None)):
                a, b = recorded[part], mine[part]
                if keys is not None:
                    a, b = {k: a.get(k) for k in keys}, {k: b.get(k) for k in keys}
                else:
                    a, b = _comparable_models(a, b)
                if a != b:
                    key = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), part)
                    raise ConfigError(f"{journal_path}: study {study.study_name!r} was started with a different "
                                      f"{part} config ({part}.{key}); delete the journal or use another study name")
        if not study.get_trials(deepcopy=False):
            params = fixed_params(tune_cfg.search_space, model_cfg, train_cfg)
            study.enqueue_trial(params, user_attrs={"fixed": True})
            log.info("enqueued the config's parameters as trial 0: %s", params)


def _is_dead(t: FrozenTrial, timeout_s: float, now: float) -> str:
    """Why RUNNING trial t has no live worker, or "" if it may still be running."""
    if t.user_attrs.get("host") == socket.gethostname() and isinstance(t.user_attrs.get("pid"), int):
        try:
            os.kill(t.user_attrs["pid"], 0)
        except ProcessLookupError:
            return f"its worker (pid {t.user_attrs['pid']}) is gone"
        except PermissionError:
            pass  # someone else's process with that pid: fall back on the heartbeat
    beat = t.user_attrs.get("heartbeat")
    if beat is None:  # between ask and the first attribute write: give it the timeout from its start
        beat = t.datetime_start.timestamp() if t.datetime_start else now
    if now - float(beat) > timeout_s:
        return f"no heartbeat for {(now - float(beat)) / 60:.0f} min"
    return ""


def _fail_trial(study: optuna.Study, t: FrozenTrial, why: str) -> None:
    study._storage.set_trial_user_attr(t._trial_id, "error", f"stale: {why}")  # a trial this process does not own
    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    log.warning("trial %d (worker %s) marked FAIL: %s", t.number, t.user_attrs.get("worker"), why)


def _next_trial(study: optuna.Study, journal_path: Path, tune_cfg: TuneConfig,
                poll_s: float = 1.0) -> tuple[optuna.Trial, list[FrozenTrial]] | None:
    """The next trial with its parameters enqueued, and the earlier batches it was sampled from; None
    when the study already has n_trials trials. Waits while an earlier batch is still running."""
    waited = False
    while True:
        with _trial_lock(journal_path):
            trials = study.get_trials(deepcopy=False)
            if sum(t.state in FINISHED_OR_LIVE for t in trials) >= tune_cfg.n_trials:
                return None
            if any(t.state == TrialState.WAITING for t in trials):
                return study.ask(), []  # the fixed trial 0
            number = len(trials)
            history = trials[: number - number % tune_cfg.n_workers]  # the earlier batches
            running = [t for t in history if not t.state.is_finished()]
            if not running:
                study.enqueue_trial(sample_params(history, number, tune_cfg))
                trial = study.ask()
                assert trial.number == number, (trial.number, number)
                if waited:
                    log.info("batch %d finished; starting trial %d", number // tune_cfg.n_workers - 1, number)
                return trial, history
            now = time.time()
            for t in running:
                why = _is_dead(t, tune_cfg.heartbeat_timeout_min * 60, now)
                if why:
                    _fail_trial(study, t, why)
        if not waited:
            log.info("trial %d waits for trials %s of the previous batch", number, [t.number for t in running])
            waited = True
        time.sleep(poll_s)


TrainFn = Callable[..., Any]


def _check_metric(metric: str, meta: Mapping[str, Any]) -> None:
    """Fail before any trial when the objective cannot exist for this task."""
    from lyra.learn.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS

    task = meta.get("task", "regression")
    allowed = (*(CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS), "loss")
    if metric not in allowed:
        raise ConfigError(f"tune.metric: {metric!r} is not a {task} metric; use one of {list(allowed)}")


def run_worker(dataset_path: str | os.PathLike, journal_path: str | os.PathLike, tune_cfg: TuneConfig | Mapping,
               model_cfg: Mapping[str, Any], train_cfg: Any, worker_index: int, study_name: str = "lyra",
               trials_dir: str | os.PathLike | None = None, train_fn: TrainFn | None = None,
               prior_table: Any = None) -> int:
    """Run trials until the study holds tune_cfg.n_trials of them; return how many this worker ran.

    `train_fn` defaults to `lyra.learn.train.train_model` (tests pass a cheap stand-in with its signature);
    `prior_table` is passed on to it (the evolutionary prior, `lyra.campaign.pipeline.prior_table`).
    """
    from lyra.data.dataset import load_dataset

    if train_fn is None:
        from lyra.learn.train import train_model as train_fn
    if not isinstance(tune_cfg, TuneConfig):
        tune_cfg = TuneConfig.from_dict(tune_cfg)
    _require_int("worker_index", worker_index, minimum=0)
    journal_path = Path(journal_path)
    model_cfg = dict(model_cfg)
    dataset = load_dataset(dataset_path)
    _check_metric(tune_cfg.metric, dataset.meta)
    study = open_study(journal_path, study_name, tune_cfg.direction)
    _init_study(study, journal_path, tune_cfg, model_cfg, train_cfg)
    log.info("worker %d joined study %r in %s", worker_index, study_name, journal_path)

    n_ran = n_failed = 0
    last_error = ""
    while True:
        nxt = _next_trial(study, journal_path, tune_cfg)
        if nxt is None:
            break
        trial, history = nxt
        n_ran += 1
        state, error = _run_trial(trial, history, study, dataset, tune_cfg, model_cfg, train_cfg, worker_index,
                                  trials_dir, train_fn, prior_table)
        if state == TrialState.FAIL:
            n_failed += 1
            last_error = error
            if n_failed == n_ran >= MAX_INITIAL_FAILURES:
                raise LyraError(f"{journal_path}: worker {worker_index}: its first {n_failed} trials all failed; "
                                f"last error: {last_error}")
    if n_ran and n_failed == n_ran:
        raise LyraError(f"{journal_path}: worker {worker_index}: all {n_ran} of its trials failed; last error: {last_error}")
    log.info("worker %d done: %d trials (%d failed)", worker_index, n_ran, n_failed)
    return n_ran


def _run_trial(trial: optuna.Trial, history: list[FrozenTrial], study: optuna.Study, dataset: Any,
               tune_cfg: TuneConfig, model_cfg: dict, train_cfg: Any, worker_index: int, trials_dir: Any,
               train_fn: TrainFn, prior_table: Any = None) -> tuple[TrialState, str]:
    """Train one model for this trial and tell the study how it ended."""
    seed = trial_seed(tune_cfg.seed, trial.number)
    for key, value in {"worker": worker_index, "seed": seed, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}.items():
        trial.set_user_attr(key, value)
    started = time.monotonic()
    best = -math.inf if tune_cfg.direction == "maximize" else math.inf

    def report(epoch: int, value: float) -> None:
        nonlocal best
        trial.report(float(value), int(epoch))
        trial.set_user_attr("heartbeat", time.time())
        if math.isfinite(value):
            best = max(best, value) if tune_cfg.direction == "maximize" else min(best, value)
        if should_prune(history, int(epoch), best, tune_cfg):
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({tune_cfg.metric} {value:.4g})")

    try:
        params = suggest_params(trial, tune_cfg.search_space)
        trial_model, trial_train = split_params(params, model_cfg, train_cfg)
        # early stopping (and the reported value) on the objective itself
        trial_train = dataclasses.replace(trial_train, max_epochs=tune_cfg.max_epochs, patience=tune_cfg.patience,
                                          selection_metric=tune_cfg.metric)
        if trials_dir is not None:
            Path(trials_dir).mkdir(parents=True, exist_ok=True)
        # The checkpoint is only the trial's scratch space: the train stage retrains the final models.
        with tempfile.TemporaryDirectory(prefix=f"trial{trial.number}-", dir=trials_dir) as tmp:
            extra = {} if prior_table is None else {"prior_table": prior_table}
            result = train_fn(dataset.frame, dataset.meta, trial_model, trial_train, seed=seed,
                              checkpoint_path=Path(tmp) / "trial.pt", report=report, **extra)
        value = float(result.best_valid[tune_cfg.metric])
        if not math.isfinite(value):
            raise LyraError(f"validation {tune_cfg.metric} is {value} (constant predictions?)")
        trial.set_user_attr("best_epoch", int(result.best_epoch))
    except optuna.TrialPruned as e:
        _tell(study, trial, started, TrialState.PRUNED)
        log.info("trial %d pruned: %s", trial.number, e)
        return TrialState.PRUNED, ""
    except Exception as e:  # noqa: BLE001 - any error fails the trial, not the worker
        error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        _tell(study, trial, started, TrialState.FAIL, error=error)
        log.warning("trial %d failed: %s", trial.number, error)
        return TrialState.FAIL, error
    except BaseException:  # KeyboardInterrupt, SystemExit: record, then stop the worker
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    _tell(study, trial, started, TrialState.COMPLETE, value=value)
    log.info("trial %d: %s %.4f (%s)", trial.number, tune_cfg.metric, value, params)
    return TrialState.COMPLETE, ""


def _tell(study: optuna.Study, trial: optuna.Trial, started: float, state: TrialState, value: float | None = None,
          error: str = "") -> None:
    """Record how the trial ended, unless a waiting worker already declared it dead (then say so)."""
    try:
        if error:
            trial.set_user_attr("error", error)
        trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    if study._storage.get_trial(trial._trial_id).state.is_finished():
        log.warning("trial %d was marked FAIL by another worker (no heartbeat for heartbeat_timeout_min?); "
                    "its result is dropped", trial.number)
        return
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)


# ---- after the workers ----------------------------------------------------------------------------


def _load_study(journal_path: str | os.PathLike, study_name: str) -> optuna.Study:
    if not Path(journal_path).exists():
        raise LyraError(f"{journal_path}: tuning journal does not exist (did the tune workers run?)")
    try:
        return optuna.load_study(study_name=study_name, storage=_storage(journal_path))
    except KeyError:
        raise LyraError(f"{journal_path}: no study named {study_name!r} in the journal") from None


def fail_stale_trials(journal_path: str | os.PathLike, study_name: str = "lyra") -> list[int]:
    """Mark every RUNNING trial FAIL (its worker was killed); return their numbers.

    Call only while no worker runs (the workflow's collect job runs after every worker job ended).
    """
    study = _load_study(journal_path, study_name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        _fail_trial(study, t, "left RUNNING by a killed worker")
    return [t.number for t in stale]


def trials_table(study: optuna.Study):
    """One row per trial: number, state, value, duration, worker, seed, error, params_<name>."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.user_attrs.get("seconds")
        if duration is None and t.datetime_start and t.datetime_complete:
            duration = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
        row = {"number": t.number, "state": t.state.name, "value": t.value, "duration_s": duration,
               "worker": t.user_attrs.get("worker"), "seed": t.user_attrs.get("seed"),
               "best_epoch": t.user_attrs.get("best_epoch"),
               "fixed": bool(t.user_attrs.get("fixed", False)), "error": t.user_attrs.get("error", "")}
        row.update({f"params_{k}": v for k, v in sorted(t.params.items())})
        rows.append(row)
    columns = ["number", "state", "value", "duration_s", "worker", "seed", "best_epoch", "fixed", "error"]
    frame = pd.DataFrame(rows, columns=None if rows else columns)
    for c in ("worker", "seed", "best_epoch"):
        if c in frame:
            frame[c] = frame[c].astype("Int64")
    return frame


def param_importances(study) -> tuple[dict | None, str]:
    """fANOVA importances of the study's parameters (seeded: the same study gives the same numbers),
    or (None, why not)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return None, f"importances need at least 2 completed trials; the study has {len(done)}"
    varying = {n for t in done for n in t.params if len({repr(u.params.get(n)) for u in done}) > 1}
    if not varying:
        return None, "no hyper-parameter took more than one value in the completed trials"
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=sorted(varying))
    except (RuntimeError, ValueError) as e:
        return None, f"Optuna could not compute importances ({str(e).splitlines()[0][:150]})"
    return {k: float(v) for k, v in imp.items()}, ""


def collect_best(journal_path: str | os.PathLike, out_best_json: str | os.PathLike,
                 out_trials_tsv: str | os.PathLike, study_name: str = "lyra",
                 tune_cfg: TuneConfig | Mapping | None = None) -> dict:
    """Fail stale trials, then write best.json and the trials table; return the best.json dict."""
    stale = fail_stale_trials(journal_path, study_name)
    study = _load_study(journal_path, study_name)
    recorded = study.user_attrs.get(CONFIG_ATTR)
    if recorded is None:
        raise LyraError(f"{journal_path}: study {study_name!r} was not started by `lyra tune-worker`")
    if tune_cfg is None:
        tune_cfg = TuneConfig(**recorded["tune"])
    elif not isinstance(tune_cfg, TuneConfig):
        tune_cfg = TuneConfig.from_dict(tune_cfg)

    table = trials_table(study)
    with atomic_path(out_trials_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="")
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    if not counts["COMPLETE"]:
        errors = sorted({t.user_attrs.get("error", "") for t in trials} - {""})
        raise LyraError(f"{journal_path}: no tuning trial completed ({_fmt_counts(counts)}); "
                        f"first error: {errors[0] if errors else 'none recorded'}")

    best = study.best_trial  # respects the study's direction
    params = {**_fixed(tune_cfg.search_space), **best.params}
    model, train = split_params(params, recorded["model"], recorded["train"])
    train_dict = dataclasses.asdict(train)
    out = {
        "tuned": True,
        "metric": tune_cfg.metric,
        "direction": tune_cfg.direction,
        "best_value": best.value,
        "best_trial": best.number,
        "best_params": params,
        "model": model,  # the full model config for the train stage
        # TrainConfig overrides chosen by the search, applied over the campaign's train section
        "train": {k: train_dict[k] for k in params if k in train_dict},
        "n_trials": len(trials),
        "trial_counts": counts,
        "stale_trials_failed": stale,
        "n_workers": tune_cfg.n_workers,
        "study_name": study_name,
    }
    out["importances"], out["importances_note"] = param_importances(study)  # for the report
    write_json(out_best_json, out)
    log.info("best trial %d: %s %.4f (%s)", best.number, tune_cfg.metric, best.value, _fmt_counts(counts))
    return out


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)


def fixed_best(out_best_json: str | os.PathLike, model_cfg: Mapping[str, Any], train_cfg: Any) -> dict:
    """`tune.enabled: false`: best.json holds the config's own parameters, so downstream reads one file."""
    _as_train_config(train_cfg)  # validate it
    out = _normalise({"tuned": False, "model": dict(model_cfg), "train": {}, "best_params": {}, "best_value": None,
                      "n_trials": 0, "trial_counts": {}})
    write_json(out_best_json, out)
    return out
