"""Optuna search: search space, fixed first trial, trial cap across processes, crashes, pruning, outputs.

Most tests pass `StubTrain` as the train function: a deterministic objective of the trial's parameters
that reports per-epoch values like `train_model` does. It keeps the multi-process tests to seconds;
`test_real_training_end_to_end` runs the real `train_model`.
"""

from __future__ import annotations

import json
import math
import re
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from lyra.errors import ConfigError, LyraError
from lyra.learn.train import TrainConfig
from lyra.tune.collect import collect_best, fixed_best
from lyra.tune.journal import fail_stale_trials, open_study
from lyra.tune.space import DEFAULT_SEARCH_SPACE, fixed_params, split_params, suggest_params
from lyra.tune.study import TuneConfig, run_worker, trial_seed

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY_MODEL = {"d_model": 8, "d_state": 4, "pgc_expansions": [0.5], "n_s4d": 1, "dropout": 0.0}
TINY_TRAIN = {"device": "cpu", "batch_size": 16, "max_epochs": 2, "patience": 2, "amp": False}
# Small space for stub runs: every value trains instantly.
STUB_SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "n_s4d": {"type": "int", "low": 1, "high": 3},
    "d_model": {"type": "categorical", "choices": [8, 16]},
}


# ---- helpers ----------------------------------------------------------------------------------------


def write_dataset(path: Path, n: int = 48, length: int = 12, seed: int = 0) -> Path:
    """A dataset.parquet per docs/architecture.md: single mutants of a random wild type, fitness
    additive in per-position effects (learnable), split 60/20/20."""
    rng = np.random.default_rng(seed)
    residues = "ACDEFGHIKLMNPQRSTVWY"
    wt = "".join(rng.choice(list(residues), size=length))
    effect = rng.normal(size=(length, 20))
    rows = []
    for k in range(n):
        pos, aa = int(rng.integers(length)), residues[int(rng.integers(20))]
        seq = wt[:pos] + aa + wt[pos + 1:]
        mut = "" if aa == wt[pos] else f"{wt[pos]}{pos + 1}{aa}"
        split = "train" if k < 0.6 * n else "valid" if k < 0.8 * n else "test"
        rows.append({"variant_id": f"v{k}", "sequence": seq, "mutations": mut, "n_mutations": int(aa != wt[pos]),
                     "fitness": float(effect[pos, residues.index(aa)] + 0.1 * rng.normal()),
                     "n_replicates": 1, "split": split, "fold": -1})
    frame = pd.DataFrame(rows)
    schema = pa.schema([("variant_id", pa.string()), ("sequence", pa.string()), ("mutations", pa.string()),
                        ("n_mutations", pa.int32()), ("fitness", pa.float64()), ("n_replicates", pa.int32()),
                        ("split", pa.string()), ("fold", pa.int32())])
    meta = {"alphabet": "protein", "wild_type": wt, "first_position": 1, "targets": ["fitness"],
            "task": "regression", "classes": None}
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata({b"lyra": json.dumps(meta).encode()})
    pq.write_table(table, path)
    return path


@dataclass
class StubResult:
    best_valid: dict
    best_epoch: int


class StubTrain:
    """Stands in for train_model: value = f(params), reported for each of `epochs` epochs.

    `fail_on` / `hang_on` / `bad_from`: the 1-based calls (in this process) that raise, sleep forever
    after their first report, or report a bad value.
    """

    def __init__(self, epochs: int = 2, sleep: float = 0.0, fail_on=(), hang_on=(), bad_from=None,
                 marker: str | None = None, seed_noise: float = 0.0):
        self.seed_noise = seed_noise  # value += seed_noise * (seed % 1000): the training seed matters
        self.epochs, self.sleep, self.fail_on, self.hang_on = epochs, sleep, set(fail_on), set(hang_on)
        self.bad_from, self.marker, self.calls, self.epochs_run, self.seeds = bad_from, marker, 0, [], []

    @staticmethod
    def objective(model_cfg: dict, train_cfg: TrainConfig) -> float:
        # peaks at lr = 1e-3, more S4D layers help a little
        return 1.0 - abs(math.log10(train_cfg.lr) + 3.0) / 2.0 + 0.01 * model_cfg.get("n_s4d", 1)

    def __call__(self, frame, meta, model_cfg, train_cfg, seed, checkpoint_path, resume_path=None, report=None):
        self.calls += 1
        self.seeds.append(seed)
        assert set(frame["split"]) >= {"train", "valid"}
        Path(checkpoint_path).write_bytes(b"scratch")  # the worker must delete it
        value = self.objective(model_cfg, train_cfg) + self.seed_noise * (seed % 1000)
        if self.bad_from is not None and self.calls >= self.bad_from:
            value = -1.0
        if self.calls in self.fail_on:
            raise RuntimeError(f"boom on call {self.calls}")
        ran = 0
        for epoch in range(1, self.epochs + 1):
            time.sleep(self.sleep)
            ran = epoch
            self.epochs_run.append((self.calls, epoch))
            report(epoch, value * epoch / self.epochs)
            if self.calls in self.hang_on:
                if self.marker:
                    Path(self.marker).write_text(str(os.getpid()))
                time.sleep(3600)
        return StubResult(best_valid={"spearman": value, "loss": 1 - value}, best_epoch=ran)


def tune_cfg(search_space=None, **kw) -> TuneConfig:
    """Defaults switched off (None), STUB_SPACE searched, `search_space` merged on top."""
    space = {**{k: None for k in DEFAULT_SEARCH_SPACE}, **STUB_SPACE, **(search_space or {})}
    base = {"n_trials": 6, "n_workers": 1, "pruner": "none", "max_epochs": 2, "patience": 2, "search_space": space}
    return TuneConfig.from_dict({**base, **kw})


WORKER_SCRIPT = """
import json, logging, sys
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.WARNING)
from test_tune import StubTrain
from lyra.tune.study import TuneConfig, run_worker
stub = StubTrain(**{stub!r})
n = run_worker({dataset!r}, {journal!r}, TuneConfig.from_dict(json.loads({tune!r})), {model!r}, {train!r},
               {worker}, trials_dir={trials!r}, train_fn=stub)
print("RAN", n, flush=True)
"""


def spawn_worker(tmp: Path, dataset: Path, journal: Path, cfg: TuneConfig, worker: int, **stub) -> subprocess.Popen:
    """A worker in a fresh Python process, like a separate cluster job."""
    code = WORKER_SCRIPT.format(tests=str(TESTS), stub=stub, dataset=str(dataset), journal=str(journal),
                                tune=json.dumps(cfg.to_dict()), model=TINY_MODEL, train=TINY_TRAIN, worker=worker,
                                trials=str(tmp / "trials"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def load(journal: Path) -> optuna.Study:
    return open_study(journal, "lyra", "maximize")[0]


# ---- config and search space ------------------------------------------------------------------------


def test_default_config_and_merge():
    cfg = TuneConfig.from_dict({"search_space": {"bidirectional": {"type": "categorical", "choices": [False, True]},
                                                 "dropout": 0.1}})
    assert cfg.n_trials == 20 and cfg.n_workers == 2 and cfg.pruner == "median"
    assert cfg.search_space["d_state"] == {"type": "int", "low": 16, "high": 256, "log": True}  # default kept
    assert cfg.search_space["dropout"] == 0.1 and "bidirectional" in cfg.search_space
    assert TuneConfig().search_space == DEFAULT_SEARCH_SPACE


@pytest.mark.parametrize("tune, key", [
    ({"n_trialz": 3}, "tune.n_trialz"),
    ({"n_trials": 0}, "tune.n_trials"),
    ({"heartbeat_timeout_min": 0}, "tune.heartbeat_timeout_min"),
    ({"seed": -1}, "seed"),
    ({"pruner": "hyperband"}, "tune.pruner"),
    ({"metric": "mse"}, "tune.direction"),  # mse is lower-is-better but direction defaults to maximize
    ({"metric": "r2"}, "tune.metric"),
    ({"search_space": {"d_state": {"type": "int", "low": 300, "high": 16}}}, "tune.search_space.d_state"),
    ({"search_space": {"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "tune.search_space.lr.low"),
    ({"search_space": {"lr": {"type": "real", "low": 0.1, "high": 1.0}}}, "tune.search_space.lr.type"),
    ({"search_space": {"lr": {"type": "float", "low": 0.1, "hi": 1.0}}}, "tune.search_space.lr.hi"),
    ({"search_space": {"n_s4d": {"type": "int", "low": 1.5, "high": 3}}}, "tune.search_space.n_s4d.low"),
    ({"search_space": {"n_s4d": {"type": "int", "low": 1, "high": 4, "log": True, "step": 2}}}, "tune.search_space.n_s4d.step"),
    ({"search_space": {"d_model": {"type": "categorical", "choices": []}}}, "tune.search_space.d_model.choices"),
    ({"search_space": {"d_model": {"type": "categorical", "choices": [8], "low": 1}}}, "tune.search_space.d_model.low"),
    ({"search_space": {"n_pgc": {"type": "int", "low": 0, "high": 2}}}, "tune.search_space.n_pgc.low"),
    ({"search_space": {"max_epochs": {"type": "int", "low": 1, "high": 9}}}, "tune.search_space.max_epochs"),
    ({"search_space": {"prior_sign": {"type": "categorical", "choices": [-1, 1]}}}, "tune.search_space.prior_sign"),
    ({"search_space": {"width": 3}}, "tune.search_space.width"),
    ({"search_space": {"dropout": [0.1, 0.2]}}, "tune.search_space.dropout"),
    ({"search_space": ["lr"]}, "tune.search_space"),
])
def test_bad_config_names_the_key(tune, key):
    with pytest.raises(ConfigError) as e:
        TuneConfig.from_dict(tune)
    msg = str(e.value)
    named = re.match(r"(?:unknown )?config key '([^']+)'|([\w.]+):", msg)  # the schema's form or the code's
    assert named and (named[1] or named[2]) == key, msg
    assert "\n" not in msg


def test_suggest_params_ranges_fixed_and_unsearched():
    space = {**DEFAULT_SEARCH_SPACE, "dropout": 0.3, "n_s4d": None,
             "pgc_expansion": {"type": "float", "low": 1.0, "high": 3.0, "step": 0.5}}
    TuneConfig(search_space=space)  # valid
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(40):
        trial = study.ask()
        p = suggest_params(trial, space)
        study.tell(trial, 0.0)
        seen.append(p)
        assert "n_s4d" not in p and p["dropout"] == 0.3
        assert isinstance(p["d_state"], int) and 16 <= p["d_state"] <= 256
        assert isinstance(p["n_pgc"], int) and 1 <= p["n_pgc"] <= 4
        assert p["d_model"] in (32, 64, 128) and p["batch_size"] in (32, 64, 128, 256)
        assert 1e-4 <= p["lr"] <= 1e-2 and 1e-5 <= p["weight_decay"] <= 1e-1
        assert p["pgc_expansion"] in (1.0, 1.5, 2.0, 2.5, 3.0)
        assert set(study.trials[-1].params) == set(p) - {"dropout"}  # fixed values are not Optuna params
    # log scale: about half the lr draws below the geometric midpoint 1e-3 (a linear scale gives ~10 %)
    assert 10 <= sum(p["lr"] < 1e-3 for p in seen) <= 30
    assert len({p["d_state"] for p in seen}) > 10


def test_split_params_maps_onto_model_and_train():
    model, train = split_params({"n_pgc": 3, "d_state": 17, "d_model": 32, "lr": 0.005, "batch_size": 128,
                                 "ssm_lr": 0.002, "dropout": 0.1}, {"d_model": 64, "pooling": "max"},
                                {"lr": 1e-3, "seeds": 3})
    assert model == {"d_model": 32, "pooling": "max", "d_state": 18, "dropout": 0.1,
                     "pgc_expansions": [0.25, 2.0, 2.0]}  # first compresses, later ones expand; d_state even
    assert isinstance(train, TrainConfig)
    assert (train.lr, train.batch_size, train.ssm_lr, train.seeds) == (0.005, 128, 0.002, 3)
    # the config's own expansions are the pattern; pgc_expansion overrides the later layers
    model, _ = split_params({"n_pgc": 2, "pgc_expansion": 1.5}, {"pgc_expansions": [0.5, 4.0, 4.0]}, {})
    assert model["pgc_expansions"] == [0.5, 1.5]
    model, _ = split_params({"n_pgc": 1}, {}, TrainConfig())
    assert model["pgc_expansions"] == [0.25]
    with pytest.raises(ConfigError, match="tune.search_space.epochs"):
        split_params({"epochs": 3}, {}, {})


def test_fixed_params_are_the_config_values():
    space = TuneConfig().search_space
    p = fixed_params(space, {"d_model": 64, "d_state": 32, "pgc_expansions": [0.25, 2.0, 2.0], "n_s4d": 2},
                     {"lr": 3e-3, "batch_size": 32})
    assert p == {"d_state": 32, "n_pgc": 3, "n_s4d": 2, "d_model": 64, "lr": 3e-3, "weight_decay": 0.01,
                 "dropout": 0.2, "batch_size": 32}
    # out of the space: left to the sampler (Optuna could not record it)
    p = fixed_params(space, {"d_model": 96, "d_state": 8}, {"weight_decay": 0.0})
    assert "d_model" not in p and "d_state" not in p and "weight_decay" not in p and p["lr"] == 1e-3


def test_trial_seeds_distinct_and_deterministic():
    seeds = [trial_seed(7, k) for k in range(64)]
    assert len(set(seeds)) == 64
    assert seeds == [trial_seed(7, k) for k in range(64)]
    assert trial_seed(8, 0) != trial_seed(7, 0)
    assert all(0 <= s < 2**31 for s in seeds)


# ---- workers ----------------------------------------------------------------------------------------


def test_worker_runs_trials_fixed_first_and_cleans_up(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=5)
    model = {**TINY_MODEL, "n_s4d": 2}
    train = {**TINY_TRAIN, "lr": 2e-3}
    stub = StubTrain()
    assert run_worker(dataset, journal, cfg, model, train, 0, trials_dir=tmp_path / "trials", train_fn=stub) == 5
    # a second worker joining a full study runs nothing and enqueues nothing
    assert run_worker(dataset, journal, cfg, model, train, 1, train_fn=StubTrain()) == 0
    trials = load(journal).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"lr": 2e-3, "n_s4d": 2, "d_model": 8} and trials[0].user_attrs["fixed"]
    assert sum(bool(t.user_attrs.get("fixed")) for t in trials) == 1
    for t in trials:
        assert t.value == pytest.approx(StubTrain.objective(t.params, TrainConfig(lr=t.params["lr"])))
        assert list(t.intermediate_values) == [1, 2]
        assert t.user_attrs["worker"] == 0 and t.user_attrs["seed"] == trial_seed(0, t.number)
        assert t.datetime_start.timestamp() <= t.user_attrs["heartbeat"] <= t.datetime_complete.timestamp()
    assert stub.seeds == [trial_seed(0, k) for k in range(5)]  # training used the trial's seed
    assert list((tmp_path / "trials").iterdir()) == []  # trial checkpoints deleted


def test_failed_trial_recorded_and_worker_goes_on(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    n = run_worker(dataset, journal, tune_cfg(n_trials=4), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain(fail_on={2}))
    assert n == 4
    states = [t.state for t in load(journal).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert load(journal).trials[1].user_attrs["error"] == "RuntimeError: boom on call 2"


def test_all_failing_trials_stop_the_worker_and_collect(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    with pytest.raises(LyraError, match="first 3 trials all failed; last error: RuntimeError: boom on call 3"):
        run_worker(dataset, journal, tune_cfg(n_trials=10), TINY_MODEL, TINY_TRAIN, 0,
                   train_fn=StubTrain(fail_on=range(1, 100)))
    assert len(load(journal).trials) == 3  # stopped early instead of burning the budget
    with pytest.raises(LyraError, match=r"no tuning trial completed \(3 fail\); first error: RuntimeError"):
        collect_best(journal, tmp_path / "best.json", tmp_path / "trials.tsv")
    assert not (tmp_path / "best.json").exists()


def test_metric_must_fit_the_task(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    with pytest.raises(ConfigError, match="tune.metric: 'accuracy' is not a regression metric"):
        run_worker(dataset, tmp_path / "j.log", tune_cfg(metric="accuracy"), TINY_MODEL, TINY_TRAIN, 0,
                   train_fn=StubTrain())


def test_median_pruner_prunes_bad_trials(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=6, pruner="median", pruner_startup_trials=3, pruner_warmup_epochs=0, max_epochs=4)
    stub = StubTrain(epochs=4, bad_from=4)  # calls 1-3 report good values, later ones -1
    assert run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, 0, train_fn=stub) == 6
    trials = load(journal).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED] * 3
    for t in trials[3:]:
        assert list(t.intermediate_values) == [1]  # stopped after the first epoch's report
    assert [e for c, e in stub.epochs_run if c >= 4] == [1, 1, 1]


def test_pruner_none_never_prunes(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=5, pruner="none", max_epochs=3)
    run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain(epochs=3, bad_from=4))
    assert all(t.state == TrialState.COMPLETE for t in load(journal).trials)


def _forked_worker(dataset, journal, cfg, worker, counts, barrier=None, stub=None) -> None:
    if barrier is not None:  # race mode
        # a slow shared filesystem: every journal write takes 20 ms, which widens every race window
        from optuna.storages.journal import JournalFileBackend

        append = JournalFileBackend.append_logs
        JournalFileBackend.append_logs = lambda self, logs: (time.sleep(0.02), append(self, logs))[1]
        barrier.wait(timeout=60)
    counts.put((worker, run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, worker,
                                   train_fn=StubTrain(**(stub or {"sleep": 0.05})))))


def _run_forked(tmp_path, cfg, n_workers, race=False, stub=None) -> list[int]:
    """n_workers forked processes on one journal; how many trials each ran. `race`: released at the
    same instant, on a slow filesystem."""
    dataset = write_dataset(tmp_path / "dataset.parquet")
    ctx = multiprocessing.get_context("fork")
    counts = ctx.Queue()
    sync = ctx.Barrier(n_workers) if race else None
    procs = [ctx.Process(target=_forked_worker, args=(dataset, tmp_path / "journal.log", cfg, k, counts, sync, stub))
             for k in range(n_workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    return [n for _, n in sorted(counts.get(timeout=5) for _ in procs)]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_four_workers_share_one_journal(tmp_path):
    """4 processes, n_trials=12: exactly 12 trials, none lost, none over the cap.

    Forked rather than spawned: each process still opens its own storage on the shared file, but
    starts in milliseconds, so the four really overlap (spawned ones spend seconds importing torch).
    """
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=12, n_workers=4, seed=3)
    ran = _run_forked(tmp_path, cfg, 4, race=True)
    assert sum(ran) == 12
    trials = load(journal).trials
    assert len(trials) == 12
    assert sorted(t.number for t in trials) == list(range(12))
    assert all(t.state == TrialState.COMPLETE and t.value is not None for t in trials)
    assert all(t.intermediate_values == {1: t.value / 2, 2: t.value} for t in trials)  # no report lost
    assert sum(bool(t.user_attrs.get("fixed")) for t in trials) == 1 and trials[0].user_attrs["fixed"]
    by_worker = {k: sum(t.user_attrs["worker"] == k for t in trials) for k in range(4)}
    assert list(by_worker.values()) == ran
    assert sum(n > 0 for n in ran) >= 2  # they really ran side by side
    assert all(t.user_attrs["seed"] == trial_seed(3, t.number) for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 12  # no two workers sampled the same point


def _outcome(journal: Path) -> list[tuple]:
    """What a study decided, without who ran what or when."""
    return [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs["seed"])
            for t in load(journal).trials]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_parallel_workers_decide_exactly_what_one_worker_decides(tmp_path):
    """Reproducibility: 3 workers racing on a slow filesystem, with uneven trial times and pruning,
    give the same trials, parameters, values and pruning decisions as one worker running them all."""
    cfg = tune_cfg(n_trials=12, n_workers=3, seed=5, pruner="median", pruner_startup_trials=2,
                   pruner_warmup_epochs=1, max_epochs=3)
    stub = {"epochs": 3, "sleep": 0.02, "seed_noise": 1e-4}
    (tmp_path / "parallel").mkdir()
    ran = _run_forked(tmp_path / "parallel", cfg, 3, race=True, stub=stub)
    assert sum(ran) == 12 and sum(n > 0 for n in ran) >= 2
    sequential = tmp_path / "sequential.log"
    assert run_worker(write_dataset(tmp_path / "d.parquet"), sequential, cfg, TINY_MODEL, TINY_TRAIN, 0,
                      train_fn=StubTrain(**stub)) == 12
    assert _outcome(tmp_path / "parallel" / "journal.log") == _outcome(sequential)
    states = [t.state for t in load(sequential).trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states  # the pruner took part
    # another seed searches elsewhere
    other = tmp_path / "other.log"
    run_worker(write_dataset(tmp_path / "d2.parquet"), other, tune_cfg(**{**cfg.to_dict(), "seed": 6}), TINY_MODEL,
               TINY_TRAIN, 0, train_fn=StubTrain(**stub))
    assert [o[2] for o in _outcome(other)][1:] != [o[2] for o in _outcome(sequential)][1:]


def test_batches_sample_only_from_earlier_batches(tmp_path):
    """Trial k's parameters are a function of k and the trials of batches < k // n_workers only."""
    from lyra.tune.study import sample_params

    cfg = tune_cfg(n_trials=6, n_workers=3, seed=1)
    journal = tmp_path / "journal.log"
    run_worker(write_dataset(tmp_path / "d.parquet"), journal, cfg, TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())
    trials = load(journal).trials
    assert trials[2].params == sample_params([], 2, cfg)
    assert trials[4].params == sample_params(trials[:3], 4, cfg)
    assert trials[5].params == sample_params(trials[:3], 5, cfg) != trials[4].params


def test_sampling_learns_from_history_after_the_startup_trials(tmp_path):
    """Past TPE's 10 random startup trials, the history moves the next suggestion towards the optimum."""
    from lyra.tune.study import sample_params

    cfg = tune_cfg(n_trials=24, n_workers=1, seed=2)
    journal = tmp_path / "journal.log"
    run_worker(write_dataset(tmp_path / "d.parquet"), journal, cfg, TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())
    trials = load(journal).trials
    assert sample_params(trials[:20], 20, cfg) != sample_params(trials[:1], 20, cfg)
    late = [abs(math.log10(t.params["lr"]) + 3) for t in trials[14:]]  # the stub peaks at lr = 1e-3
    early = [abs(math.log10(t.params["lr"]) + 3) for t in trials[1:11]]
    assert sum(late) / len(late) < sum(early) / len(early)


def test_study_resumed_with_another_seed_is_refused(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    run_worker(dataset, journal, tune_cfg(n_trials=2), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())
    with pytest.raises(ConfigError, match=r"different tune config \(tune.seed\)"):
        run_worker(dataset, journal, tune_cfg(n_trials=4, seed=9), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())


def test_study_resumes_when_a_model_key_is_stated_at_its_default_and_refuses_a_real_change(tmp_path):
    from lyra.model.lyra import LyraConfig

    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    run_worker(dataset, journal, tune_cfg(n_trials=2), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())
    assert "bidirectional" not in TINY_MODEL
    stated = {**TINY_MODEL, "bidirectional": LyraConfig().bidirectional}
    run_worker(dataset, journal, tune_cfg(n_trials=3), stated, TINY_TRAIN, 0, train_fn=StubTrain())
    assert len(load(journal).trials) == 3
    with pytest.raises(ConfigError, match=r"different model config \(model.bidirectional\)"):
        run_worker(dataset, journal, tune_cfg(n_trials=4), {**stated, "bidirectional": not stated["bidirectional"]},
                   TINY_TRAIN, 0, train_fn=StubTrain())


def test_study_from_a_version_with_another_model_key_is_refused_by_name(tmp_path):
    from lyra.tune.study import CONFIG_ATTR

    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    run_worker(dataset, journal, tune_cfg(n_trials=2), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())
    study = load(journal)
    recorded = study.user_attrs[CONFIG_ATTR]
    study.set_user_attr(CONFIG_ATTR, {**recorded, "model": {**recorded["model"], "old_key": 1}})
    with pytest.raises(ConfigError, match=r"different model config \(model.old_key\)"):
        run_worker(dataset, journal, tune_cfg(n_trials=3), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_simultaneous_start_respects_cap_and_enqueues_once(tmp_path):
    """Four workers released at the same instant race for the fixed trial and for 2 slots."""
    for rep in range(2):
        run = tmp_path / str(rep)
        run.mkdir()
        ran = _run_forked(run, tune_cfg(n_trials=2, n_workers=4), 4, race=True)
        trials = load(run / "journal.log").trials
        assert sum(ran) == 2 and len(trials) == 2
        assert [bool(t.user_attrs.get("fixed")) for t in trials] == [True, False]


def kill_worker_mid_trial(tmp_path, dataset: Path, journal: Path, cfg: TuneConfig, call: int) -> int:
    """A worker in its own process hangs in its `call`-th trial and is SIGKILLed there; its pid."""
    marker = tmp_path / "hanging"
    proc = spawn_worker(tmp_path, dataset, journal, cfg, 0, hang_on=[call], marker=str(marker))
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"worker never reached trial call {call}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return proc.pid


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_worker_leaves_study_usable(tmp_path):
    """SIGKILL mid-trial; collect fails the RUNNING trial, still finds the best; a new worker goes on."""
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=5)
    kill_worker_mid_trial(tmp_path, dataset, journal, cfg, call=3)
    trials = load(journal).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]

    best = collect_best(journal, tmp_path / "best.json", tmp_path / "trials.tsv")
    assert best["stale_trials_failed"] == [2]
    assert best["trial_counts"]["COMPLETE"] == 2 and best["trial_counts"]["FAIL"] == 1
    assert best["best_value"] == max(t.value for t in trials[:2])
    assert load(journal).trials[2].user_attrs["error"].startswith("stale")
    assert fail_stale_trials(journal, "lyra") == []  # idempotent

    # a rerun worker takes the remaining 2 slots: the stale trial counts towards n_trials
    assert run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain()) == 2
    states = [t.state for t in load(journal).trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 1 and len(states) == 5


def test_collect_best_outputs(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=6, n_workers=2, search_space={"n_pgc": {"type": "int", "low": 1, "high": 3}, "dropout": 0.05})
    run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain(fail_on={3}))
    best = collect_best(journal, tmp_path / "best.json", tmp_path / "trials.tsv", tune_cfg=cfg)
    assert json.loads((tmp_path / "best.json").read_text()) == best
    assert set(best) == {"tuned", "metric", "direction", "best_value", "best_trial", "best_params", "model", "train",
                         "n_trials", "trial_counts", "stale_trials_failed", "n_workers", "study_name", "importances",
                         "importances_note"}
    assert best["importances_note"] == "" and set(best["importances"]) <= set(best["best_params"])
    trials = load(journal).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    top = max(done, key=lambda t: t.value)
    assert best["tuned"] and best["best_trial"] == top.number and best["best_value"] == top.value
    assert best["best_params"] == {**top.params, "dropout": 0.05}
    assert best["model"]["d_model"] == top.params["d_model"] and best["model"]["dropout"] == 0.05
    assert len(best["model"]["pgc_expansions"]) == top.params["n_pgc"]
    assert best["train"] == {"lr": top.params["lr"]}
    assert best["trial_counts"]["COMPLETE"] == 5 and best["trial_counts"]["FAIL"] == 1 and best["n_trials"] == 6
    assert best["n_workers"] == 2 and best["metric"] == "spearman" and best["direction"] == "maximize"

    table = pd.read_csv(tmp_path / "trials.tsv", sep="\t")
    assert list(table.columns[:9]) == ["number", "state", "value", "duration_s", "worker", "seed", "best_epoch",
                                       "fixed", "error"]
    assert {"params_lr", "params_n_s4d", "params_d_model", "params_n_pgc"} <= set(table.columns)
    assert list(table["number"]) == list(range(6))
    assert table.loc[2, "state"] == "FAIL" and table.loc[2, "error"] == "RuntimeError: boom on call 3"
    assert table.loc[0, "fixed"] and not table.loc[1, "fixed"]
    assert table["value"].max() == best["best_value"] and (table["duration_s"] >= 0).all()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temp files


def test_minimize_direction_picks_lowest(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=4, metric="loss", direction="minimize")
    run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())
    best = collect_best(journal, tmp_path / "best.json", tmp_path / "trials.tsv")  # tune cfg from the study
    values = [t.value for t in load(journal).trials]
    assert best["best_value"] == min(values) and best["direction"] == "minimize"


def test_fixed_best_when_tuning_is_off(tmp_path):
    out = fixed_best(tmp_path / "best.json", {"d_model": 32, "pgc_expansions": (0.25, 2.0)}, {"lr": 1e-3})
    on_disk = json.loads((tmp_path / "best.json").read_text())
    assert on_disk == out
    assert on_disk["tuned"] is False and on_disk["model"] == {"d_model": 32, "pgc_expansions": [0.25, 2.0]}
    assert on_disk["train"] == {}
    with pytest.raises(ConfigError, match="train.lrr"):
        fixed_best(tmp_path / "best2.json", {}, {"lrr": 1})


def test_collect_without_journal(tmp_path):
    with pytest.raises(LyraError, match="journal does not exist"):
        collect_best(tmp_path / "none.log", tmp_path / "best.json", tmp_path / "trials.tsv")


def test_real_training_end_to_end(tmp_path):
    """The real train_model: tiny models, 2 epochs, 3 trials; per-epoch reports reach the study."""
    dataset = write_dataset(tmp_path / "dataset.parquet", n=60, length=10)
    journal = tmp_path / "journal.log"
    space = {**{k: None for k in DEFAULT_SEARCH_SPACE},
             "n_pgc": {"type": "int", "low": 1, "high": 2},
             "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
             "bidirectional": {"type": "categorical", "choices": [False, True]}}
    cfg = TuneConfig.from_dict({"n_trials": 3, "max_epochs": 2, "patience": 2, "pruner": "median",
                                "search_space": space})
    n = run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, 0, trials_dir=tmp_path / "trials")
    assert n == 3
    trials = load(journal).trials
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("error") for t in trials]
    for t in trials:
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == max(t.intermediate_values.values()) == t.intermediate_values[t.user_attrs["best_epoch"]]
    assert trials[0].params == {"n_pgc": 1, "lr": 1e-3, "bidirectional": False}
    assert list((tmp_path / "trials").iterdir()) == []
    best = collect_best(journal, tmp_path / "best.json", tmp_path / "trials.tsv")
    assert best["model"]["d_model"] == 8 and best["model"]["d_state"] == 4
    assert best["model"]["pgc_expansions"] == [0.5] + [2.0] * (best["best_params"]["n_pgc"] - 1)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_waiting_worker_fails_a_trial_whose_worker_died(tmp_path):
    """No collect in between: the next worker finds the killed worker's trial RUNNING in the batch it
    waits for, sees its process is gone (same host) and marks it FAIL instead of waiting forever."""
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    cfg = tune_cfg(n_trials=4)
    pid = kill_worker_mid_trial(tmp_path, dataset, journal, cfg, call=2)
    assert run_worker(dataset, journal, cfg, TINY_MODEL, TINY_TRAIN, 1, train_fn=StubTrain()) == 2
    trials = load(journal).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["error"] == f"stale: its worker (pid {pid}) is gone"


def test_silent_trial_on_another_host_is_failed_after_the_heartbeat_timeout(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    journal = tmp_path / "journal.log"
    run_worker(dataset, journal, tune_cfg(n_trials=2), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain())
    study = load(journal)
    ghost = study.ask()  # trial 2, "running" on a node that went away two hours ago
    for key, value in {"host": "node-gone", "pid": 1, "heartbeat": time.time() - 7200}.items():
        ghost.set_user_attr(key, value)
    assert run_worker(dataset, journal, tune_cfg(n_trials=4), TINY_MODEL, TINY_TRAIN, 0, train_fn=StubTrain()) == 1
    trials = load(journal).trials
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["error"] == "stale: no heartbeat for 120 min"
    assert trials[3].state == TrialState.COMPLETE


def test_worker_passes_the_prior_table_to_every_trial(tmp_path):
    dataset = write_dataset(tmp_path / "dataset.parquet")
    seen = []

    class WithPrior(StubTrain):
        def __call__(self, *args, prior_table=None, **kw):
            seen.append(prior_table)
            return super().__call__(*args, **kw)

    table = np.ones((3, 20), dtype=np.float32)
    assert run_worker(dataset, tmp_path / "j.log", tune_cfg(n_trials=2), TINY_MODEL, TINY_TRAIN, 0,
                      train_fn=WithPrior(), prior_table=table) == 2
    assert len(seen) == 2 and all(t is table for t in seen)
