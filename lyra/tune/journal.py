"""The journal the tuning workers share: one Optuna study in a file, and the trials of dead workers.

`tune/journal.log` is an Optuna `JournalStorage` with the *open* lock (O_EXCL lock file): it works on
NFS, where SQLite's fcntl locks do not. Optuna's `Study` keeps its storage to itself, so the workers
hold the `JournalStorage` they opened the study with and go through its public methods for what the
study cannot do: read one trial's current state, and write to a trial another process started.

A worker killed mid-trial leaves that trial RUNNING, and Optuna 5 has heartbeats only for `RDBStorage`,
so a trial writes its own (`user_attrs["heartbeat"]`, every epoch); `is_dead` reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from lyra.errors import LyraError

log = logging.getLogger("lyra.tune.journal")


def journal_storage(journal_path: str | os.PathLike) -> JournalStorage:
    """The journal file as an Optuna storage (its folder made if needed)."""
    path = str(journal_path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def open_study(journal_path: str | os.PathLike, study_name: str,
               direction: str) -> tuple[optuna.Study, JournalStorage]:
    """Create or load the shared study (creation is race-free: the journal rejects a second one), and
    the journal's storage.

    Every trial is enqueued with its parameters (`lyra.tune.study.sample_params`), so the study's own
    sampler and pruner never decide anything.
    """
    storage = journal_storage(journal_path)
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(),
                                load_if_exists=True)
    return study, storage


def load_study(journal_path: str | os.PathLike, study_name: str) -> tuple[optuna.Study, JournalStorage]:
    """The study of a journal that workers wrote, and the journal's storage; a one-line error when there
    is none."""
    if not Path(journal_path).exists():
        raise LyraError(f"{journal_path}: tuning journal does not exist (did the tune workers run?)")
    storage = journal_storage(journal_path)
    try:
        return optuna.load_study(study_name=study_name, storage=storage), storage
    except KeyError:
        raise LyraError(f"{journal_path}: no study named {study_name!r} in the journal") from None


@contextlib.contextmanager
def trial_lock(journal_path: str | os.PathLike) -> Iterator[None]:
    """Cross-process lock `<journal>.trial.lock` (O_EXCL create: NFSv3-safe like the journal). If its
    holder dies, the others wait out Optuna's 30 s grace period and then break it."""
    lock = JournalFileOpenLock(str(journal_path) + ".trial")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def trial_id(storage: JournalStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def is_finished(storage: JournalStorage, study: optuna.Study, number: int) -> bool:
    """Whether trial `number` has ended, as the journal holds it now (another worker may have failed it)."""
    return storage.get_trial(trial_id(storage, study, number)).state.is_finished()


def is_dead(t: FrozenTrial, timeout_s: float, now: float) -> str:
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


def fail_trial(storage: JournalStorage, study: optuna.Study, t: FrozenTrial, why: str) -> None:
    """Mark a trial of a dead worker FAIL, with `user_attrs["error"]` saying why."""
    storage.set_trial_user_attr(trial_id(storage, study, t.number), "error", f"stale: {why}")
    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    log.warning("trial %d (worker %s) marked FAIL: %s", t.number, t.user_attrs.get("worker"), why)


def fail_stale_trials(journal_path: str | os.PathLike, study_name: str = "lyra") -> list[int]:
    """Mark every RUNNING trial FAIL (its worker was killed); return their numbers.

    Call only while no worker runs (the workflow's collect job runs after every worker job ended).
    """
    study, storage = load_study(journal_path, study_name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        fail_trial(storage, study, t, "left RUNNING by a killed worker")
    return [t.number for t in stale]
