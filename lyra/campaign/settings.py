"""What a resolved campaign config means for the stages: member seeds, the study name, the data,
library and prior sections with their paths resolved, the model and training settings after tuning."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from lyra.campaign.config import stage_config
from lyra.io import resolve_path
from lyra.data.variants import wild_type_is_path
from lyra.io import sha256_file

log = logging.getLogger("lyra.campaign")


def training_seed(config: Mapping[str, Any], member: int) -> int:
    """Seed of ensemble member k: distinct per member, derived from the campaign seed."""
    return int(config["seed"]) * 1000 + int(member)


def study_name(config: Mapping[str, Any], dataset: str | Path) -> str:
    """One Optuna study per tuning setup and dataset: changing the search, or the data it sees (a new
    campaign round), starts a new study in the same journal instead of resuming a finished one."""
    sub = stage_config(config, "tune")
    sub.pop("_base_dir", None)
    digest = hashlib.sha256(json.dumps(sub, sort_keys=True).encode())
    digest.update(sha256_file(dataset).encode())
    msa = prior_msa(config)
    if msa is not None:  # a new alignment is a new prior: a new study
        digest.update(sha256_file(msa).encode())
    return f"{config['campaign']}-{digest.hexdigest()[:12]}"


def prior_msa(config: Mapping[str, Any]) -> str | None:
    """The prior's alignment path, resolved like the data paths; None without a prior."""
    msa = (config.get("prior") or {}).get("msa")
    return resolve_path(msa, config.get("_base_dir", ".")) if msa else None


def prior_section(config: Mapping[str, Any]) -> dict | None:
    """The config's `prior` section with its alignment path resolved; None without `prior.msa`."""
    msa = prior_msa(config)
    return None if msa is None else {**config["prior"], "msa": msa}


def prior_table(config: Mapping[str, Any], meta: Mapping[str, Any]):
    """The model's per-site prior table for this dataset (lyra/design/prior.py), or None without `prior.msa`."""
    section = prior_section(config)
    if section is None:
        return None
    from lyra.data.alphabet import get_alphabet
    from lyra.design.prior import prior_table as fit_table

    log.info("prior: fitting the %s model on %s", section.get("model", "independent"), section["msa"])
    return fit_table(section, meta.get("wild_type"), get_alphabet(meta["alphabet"]).letters)


def data_config(config: Mapping[str, Any]) -> dict:
    """The data section with its file paths resolved (package:// or relative to the working directory)."""
    data = dict(config["data"])
    base = config.get("_base_dir", ".")
    data["path"] = resolve_path(data["path"], base)
    wt = data.get("wild_type")
    if wt and wild_type_is_path(wt):
        data["wild_type"] = resolve_path(wt, base)
    return data


def wild_type_dna(config: Mapping[str, Any]) -> str | None:
    """The wild type's coding sequence (`data.wild_type_dna`, a FASTA file) resolved like the data paths;
    None when the campaign orders no DNA."""
    path = (config.get("data") or {}).get("wild_type_dna")
    return resolve_path(path, config.get("_base_dir", ".")) if path else None


def library_section(config: Mapping[str, Any]) -> dict:
    lib = dict(config["library"])
    base = config.get("_base_dir", ".")
    for key in ("path", "spec"):
        if lib.get(key):
            lib[key] = resolve_path(lib[key], base)
    return lib


def model_params(config: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> dict:
    """The model config to train with: `model_cfg` plus the prior's sign when there is a prior."""
    if prior_msa(config) is None:
        return dict(model_cfg)
    from lyra.design.prior import PRIOR_SIGNS

    return {**model_cfg, "prior_sign": PRIOR_SIGNS[config["prior"].get("sign", "learn")]}


def best_params(config: Mapping[str, Any], best_json: str | Path) -> tuple[dict, dict]:
    """Model and training configs for the final models: the config's, overridden by tuning's best."""
    best = json.loads(Path(best_json).read_text())
    model_cfg = {**config["model"], **best.get("model", {})}
    train_cfg = {**config["train"], **best.get("train", {})}
    return model_cfg, train_cfg


def ridge_unavailable(task: str, targets: str | Sequence[str]) -> str | None:
    """Why a campaign of this task and target(s) has no one-hot ridge baseline (models/ridge.npz), None
    when it has one: the baseline is a regression on one target, and no classifier is made up to stand
    in for it. Here, not in lyra.learn, as the rules ask it while Snakemake reads them (no torch)."""
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    if task != "regression":
        return f"the one-hot ridge baseline is a regression, and this campaign is a {task}"
    if len(targets) != 1:
        return f"the one-hot ridge baseline predicts one target, and this campaign has {len(targets)}"
    return None


# the rank.model values that read one-hot ridge's scores: those of lyra.design.rank.MODEL_COLUMNS with the
# ridge column (a test holds the two together; importing the ranking here would slow every Snakefile parse)
RANK_MODELS_READING_RIDGE = ("ridge", "blend")


def rank_reads_ridge(rank: Mapping[str, Any]) -> str | None:
    """The setting of a `rank:` section that reads one-hot ridge's scores ("rank.model: blend",
    "rank.ridge_picks: 24"), None when the ranking needs no ridge baseline (rank.model: auto falls back)."""
    if rank.get("model") in RANK_MODELS_READING_RIDGE:
        return f"rank.model: {rank['model']}"
    if rank.get("ridge_picks"):
        return f"rank.ridge_picks: {rank['ridge_picks']}"
    return None


def ridge_baseline(config: Mapping[str, Any]) -> bool:
    """Whether the campaign (a whole config, as the rules have it) gets the one-hot ridge baseline; the
    stages, whose configs lack `data`, ask the dataset's metadata instead (`_ridge_file`)."""
    return ridge_unavailable(config["data"].get("task", "regression"), config["data"]["target_column"]) is None
