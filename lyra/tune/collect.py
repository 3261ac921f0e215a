"""After the tuning workers: the trials table, the parameters' importances, and best.json.

best.json is what the train stage reads: the best trial's model config and its train overrides, or,
with `tune.enabled: false`, the config's own parameters (`fixed_best`), so downstream reads one file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from lyra.errors import LyraError
from lyra.io import atomic_path, write_json
from lyra.tune.journal import fail_stale_trials, load_study
from lyra.tune.space import as_train_config, fixed_values, split_params
from lyra.tune.study import CONFIG_ATTR, TuneConfig, as_json

log = logging.getLogger("lyra.tune.collect")


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
    study, _ = load_study(journal_path, study_name)
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
    params = {**fixed_values(tune_cfg.search_space), **best.params}
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
    as_train_config(train_cfg)  # validate it
    out = as_json({"tuned": False, "model": dict(model_cfg), "train": {}, "best_params": {}, "best_value": None,
                      "n_trials": 0, "trial_counts": {}})
    write_json(out_best_json, out)
    return out
