"""Hyperparameter search: n_workers Optuna workers sharing one study in a journal file.

Each worker is its own job (a SLURM job on a cluster). They share `tune/journal.log` (`lyra.tune.journal`).
A trial trains one model on the train split and reports the validation metric after every epoch, so
the median pruner can stop a bad trial early; the objective is the best validation value. The test
split is never read here. What a trial may vary is `lyra.tune.space`; `lyra.tune.collect` picks the
best trial once every worker has ended.

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
  The journal lock alone cannot give this: Optuna's `ask` is several journal writes.
- A worker killed mid-trial leaves that trial RUNNING. A worker waiting on it marks it FAIL once its
  process is gone (same host) or its heartbeat is `heartbeat_timeout_min` old; `collect_best`, which
  runs after every worker ended, marks any RUNNING trial FAIL (`fail_stale_trials`). A stale trial
  counts towards `n_trials`, so a rerun worker runs only what is left.
- A trial that raises is recorded FAIL with the error in `user_attrs["error"]`; the worker goes on,
  unless its first `MAX_INITIAL_FAILURES` trials all failed (a broken config, not bad luck).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from lyra.errors import ConfigError, LyraError
from lyra.schema import error_message, first_error, schema_fields, section_schema
from lyra.tune.journal import fail_trial, is_dead, is_finished, open_study, trial_lock
from lyra.tune.space import (DEFAULT_SEARCH_SPACE, as_train_config, fixed_params, split_params, suggest_params,
                             validate_search_space)

log = logging.getLogger("lyra.tune.study")

FINISHED_OR_LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
MAX_INITIAL_FAILURES = 3
CONFIG_ATTR = "lyra_config"  # study user attr: the config the study was started with


@dataclass
@schema_fields("tune", derived=("seed",))
class TuneConfig:
    """The `tune` section (lyra/schema.yaml describes each key) and the campaign seed."""

    enabled: bool
    n_trials: int  # total across all workers
    n_workers: int
    metric: str  # validation metric to optimise (never test)
    direction: str
    max_epochs: int  # per trial
    patience: int
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    heartbeat_timeout_min: float
    search_space: dict[str, Any]  # merged over DEFAULT_SEARCH_SPACE
    seed: int = 0  # the campaign's `seed`: trial k samples and trains with trial_seed(seed, k)

    def __post_init__(self) -> None:
        error = first_error(self.seed, section_schema("seed"))
        if error is not None:
            raise ConfigError(error_message(error, "", prefix="seed"))
        from lyra.learn.metrics import CLASSIFICATION_METRICS, LOWER_IS_BETTER, REGRESSION_METRICS

        metrics = (*REGRESSION_METRICS, *CLASSIFICATION_METRICS, "loss")
        if self.metric not in metrics:
            raise ConfigError(f"tune.metric: must be one of {list(metrics)}, got {self.metric!r}")
        expected = "minimize" if self.metric in LOWER_IS_BETTER else "maximize"
        if self.direction != expected:
            raise ConfigError(f"tune.direction: metric {self.metric!r} needs direction {expected}, got {self.direction}")
        self.search_space = {**copy.deepcopy(DEFAULT_SEARCH_SPACE), **self.search_space}
        validate_search_space(self.search_space)


def as_json(obj: Any) -> Any:
    """`obj` as it reads back from JSON (sorted keys; other types as text)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# ---- the trial sequence ---------------------------------------------------------------------------


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



# ---- the workers ----------------------------------------------------------------------------------


def _comparable_models(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[dict, dict]:
    """Both model configs with LyraConfig's defaults filled in, so that a key stated at its default is
    no change; both as given when one holds a key this version does not know (an older journal)."""
    from lyra.model.lyra import LyraConfig

    try:
        return tuple(as_json(LyraConfig.from_dict(dict(m)).to_dict()) for m in (a, b))
    except (ConfigError, TypeError, ValueError):
        return dict(a), dict(b)


def _init_study(study: optuna.Study, journal_path: Path, tune_cfg: TuneConfig, model_cfg: dict,
                train_cfg: Any) -> None:
    """Under the trial lock: record the config and enqueue the fixed trial, once per study."""
    train_dict = dataclasses.asdict(as_train_config(train_cfg))
    mine = as_json({"tune": tune_cfg.to_dict(), "model": dict(model_cfg), "train": train_dict})
    with trial_lock(journal_path):
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


def _next_trial(study: optuna.Study, storage: JournalStorage, journal_path: Path, tune_cfg: TuneConfig,
                poll_s: float = 1.0) -> tuple[optuna.Trial, list[FrozenTrial]] | None:
    """The next trial with its parameters enqueued, and the earlier batches it was sampled from; None
    when the study already has n_trials trials. Waits while an earlier batch is still running."""
    waited = False
    while True:
        with trial_lock(journal_path):
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
                why = is_dead(t, tune_cfg.heartbeat_timeout_min * 60, now)
                if why:
                    fail_trial(storage, study, t, why)
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
    `prior_table` is passed on to it (the evolutionary prior, `lyra.campaign.settings.prior_table`).
    """
    from lyra.data.dataset import load_dataset

    if train_fn is None:
        from lyra.learn.train import train_model as train_fn
    if not isinstance(tune_cfg, TuneConfig):
        tune_cfg = TuneConfig.from_dict(tune_cfg)
    if isinstance(worker_index, bool) or not isinstance(worker_index, int) or worker_index < 0:
        raise ConfigError(f"worker_index: must be an integer >= 0, got {worker_index!r}")
    journal_path = Path(journal_path)
    model_cfg = dict(model_cfg)
    dataset = load_dataset(dataset_path)
    _check_metric(tune_cfg.metric, dataset.meta)
    study, storage = open_study(journal_path, study_name, tune_cfg.direction)
    _init_study(study, journal_path, tune_cfg, model_cfg, train_cfg)
    log.info("worker %d joined study %r in %s", worker_index, study_name, journal_path)

    n_ran = n_failed = 0
    last_error = ""
    while True:
        nxt = _next_trial(study, storage, journal_path, tune_cfg)
        if nxt is None:
            break
        trial, history = nxt
        n_ran += 1
        state, error = _run_trial(trial, history, study, storage, dataset, tune_cfg, model_cfg, train_cfg,
                                  worker_index, trials_dir, train_fn, prior_table)
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


def _run_trial(trial: optuna.Trial, history: list[FrozenTrial], study: optuna.Study, storage: JournalStorage,
               dataset: Any, tune_cfg: TuneConfig, model_cfg: dict, train_cfg: Any, worker_index: int,
               trials_dir: Any, train_fn: TrainFn, prior_table: Any = None) -> tuple[TrialState, str]:
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
        _tell(study, storage, trial, started, TrialState.PRUNED)
        log.info("trial %d pruned: %s", trial.number, e)
        return TrialState.PRUNED, ""
    except Exception as e:  # noqa: BLE001 - any error fails the trial, not the worker
        error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        _tell(study, storage, trial, started, TrialState.FAIL, error=error)
        log.warning("trial %d failed: %s", trial.number, error)
        return TrialState.FAIL, error
    except BaseException:  # KeyboardInterrupt, SystemExit: record, then stop the worker
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    _tell(study, storage, trial, started, TrialState.COMPLETE, value=value)
    log.info("trial %d: %s %.4f (%s)", trial.number, tune_cfg.metric, value, params)
    return TrialState.COMPLETE, ""


def _tell(study: optuna.Study, storage: JournalStorage, trial: optuna.Trial, started: float, state: TrialState,
          value: float | None = None, error: str = "") -> None:
    """Record how the trial ended, unless a waiting worker already declared it dead (then say so)."""
    try:
        if error:
            trial.set_user_attr("error", error)
        trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    if is_finished(storage, study, trial.number):
        log.warning("trial %d was marked FAIL by another worker (no heartbeat for heartbeat_timeout_min?); "
                    "its result is dropped", trial.number)
        return
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
