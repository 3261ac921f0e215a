"""The campaign stages as plain functions: what the Snakemake rules and `lyra <stage>` call.

Each stage reads a resolved config (see lyra.config) and explicit input paths, and writes explicit
output paths atomically. `run_campaign` chains them in one process for use without Snakemake; the
file layout is the same as the workflow's (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from lyra.config import campaign_dir, resolve_path, stage_config
from lyra.errors import ConfigError, DataError, LyraError

log = logging.getLogger("lyra.pipeline")


def training_seed(config: Mapping[str, Any], member: int) -> int:
    """Seed of ensemble member k: distinct per member, derived from the campaign seed."""
    return int(config["seed"]) * 1000 + int(member)


def study_name(config: Mapping[str, Any], dataset: str | Path) -> str:
    """One Optuna study per tuning setup and dataset: changing the search, or the data it sees (a new
    campaign round), starts a new study in the same journal instead of resuming a finished one."""
    from lyra.datasets import file_sha256

    sub = stage_config(config, "tune")
    sub.pop("_base_dir", None)
    digest = hashlib.sha256(json.dumps(sub, sort_keys=True).encode())
    digest.update(file_sha256(dataset).encode())
    msa = prior_msa(config)
    if msa is not None:  # a new alignment is a new prior: a new study
        digest.update(file_sha256(msa).encode())
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
    """The model's per-site prior table for this dataset (lyra/prior.py), or None without `prior.msa`."""
    section = prior_section(config)
    if section is None:
        return None
    from lyra.alphabet import get_alphabet
    from lyra.prior import prior_table as fit_table

    log.info("prior: fitting the %s model on %s", section.get("model", "independent"), section["msa"])
    return fit_table(section, meta.get("wild_type"), get_alphabet(meta["alphabet"]).letters)


def data_config(config: Mapping[str, Any]) -> dict:
    """The data section with its file paths resolved (package:// or relative to the working directory)."""
    data = dict(config["data"])
    base = config.get("_base_dir", ".")
    data["path"] = resolve_path(data["path"], base)
    wt = data.get("wild_type")
    if wt and _looks_like_path(wt):
        data["wild_type"] = resolve_path(wt, base)
    return data


def _looks_like_path(value: str) -> bool:
    return "/" in value or "." in value or value.startswith(("package:", "~"))


def round_files(config: Mapping[str, Any]) -> list[str]:
    """rounds/<n>/measurements.csv files, in round order (none while the folder does not exist yet)."""
    from lyra.rounds import completed_rounds, rounds_root

    root = rounds_root(config)
    if root is None:
        return []
    if root.exists() and not root.is_dir():
        raise ConfigError(f"config key 'rounds.dir': {root} is not a directory")
    if not root.exists():
        log.info("rounds.dir %s does not exist yet: no measured rounds (it appears with the first)", root)
    return [str(root / str(n) / "measurements.csv") for n in completed_rounds(root)]


def check_campaign(config: Mapping[str, Any]) -> None:
    """Fail fast, before any job runs, on what the schema cannot see: missing files, inconsistent split
    settings, a library over its size cap."""
    from lyra.datasets import DataConfig, SplitConfig
    from lyra.library import LibraryConfig, library_size
    from lyra.variants import read_wild_type

    data = data_config(config)
    if Path(data["path"]).is_dir():
        raise ConfigError(f"data.path: {data['path']} is a directory; give the measurement file")
    if not Path(data["path"]).is_file():
        raise ConfigError(f"data.path: no such file: {data['path']}")
    DataConfig.from_dict(data)
    SplitConfig.from_dict(config["split"])
    round_files(config)
    wt = read_wild_type(data["wild_type"]) if data.get("wild_type") else None
    prior = prior_section(config)
    if prior is not None:
        from lyra.prior import check_alignment

        check_alignment(prior, wt)
    lib = LibraryConfig.from_dict(library_section(config))
    if wt is not None or lib.kind == "file":
        n = library_size(lib, wt, data.get("first_position", 1), data.get("alphabet", "protein"))
        if n > lib.max_size:
            raise ConfigError(
                f"library: {n:,} variants exceed library.max_size = {lib.max_size:,}; "
                "raise library.max_size to score it anyway"
            )


# --- stages -----------------------------------------------------------------------------------------


def preprocess(config: Mapping[str, Any], out_dir: str | Path) -> Path:
    from lyra.datasets import prepare_dataset

    return prepare_dataset(
        data_config(config), config["split"], out_dir, base_dir=config.get("_base_dir"), rounds=round_files(config)
    )


def model_params(config: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> dict:
    """The model config to train with: `model_cfg` plus the prior's sign when there is a prior."""
    if prior_msa(config) is None:
        return dict(model_cfg)
    from lyra.prior import PRIOR_SIGNS

    return {**model_cfg, "prior_sign": PRIOR_SIGNS[config["prior"].get("sign", "learn")]}


def tune_worker(config: Mapping[str, Any], dataset: str | Path, journal: str | Path, worker: int) -> int:
    from lyra.tune import TuneConfig, run_worker

    from lyra.datasets import load_dataset_meta

    tune_cfg = TuneConfig.from_dict({**config["tune"], "seed": config["seed"]})
    return run_worker(
        dataset, journal, tune_cfg, model_params(config, config["model"]), dict(config["train"]), worker,
        study_name=study_name(config, dataset), prior_table=prior_table(config, load_dataset_meta(dataset)),
    )


def tune_collect(config: Mapping[str, Any], dataset: str | Path, journal: str | Path, best: str | Path,
                 trials: str | Path) -> dict:
    from lyra.tune import TuneConfig, collect_best, fixed_best

    if not config["tune"]["enabled"]:
        from lyra.io import write_text

        write_text(trials, "number\tstate\tvalue\n")  # no search ran: an empty trials table
        return fixed_best(best, dict(config["model"]), dict(config["train"]))
    tune_cfg = TuneConfig.from_dict({**config["tune"], "seed": config["seed"]})
    return collect_best(journal, best, trials, study_name=study_name(config, dataset), tune_cfg=tune_cfg)


def best_params(config: Mapping[str, Any], best_json: str | Path) -> tuple[dict, dict]:
    """Model and training configs for the final models: the config's, overridden by tuning's best."""
    best = json.loads(Path(best_json).read_text())
    model_cfg = {**config["model"], **best.get("model", {})}
    train_cfg = {**config["train"], **best.get("train", {})}
    return model_cfg, train_cfg


def train(config: Mapping[str, Any], dataset: str | Path, best_json: str | Path, member: int, out: str | Path) -> Path:
    from lyra.datasets import load_dataset
    from lyra.train import TrainConfig, train_model

    ds = load_dataset(dataset)
    model_cfg, train_cfg = best_params(config, best_json)
    model_cfg = model_params(config, model_cfg)
    out = Path(out)
    resume = out.with_name(f".{out.stem}.resume.pt")  # not a declared output: survives a killed job
    result = train_model(
        ds.frame, ds.meta, model_cfg, TrainConfig.from_dict(train_cfg), training_seed(config, member), out,
        resume_path=resume, prior_table=prior_table(config, ds.meta),
    )
    return Path(result.checkpoint_path)


def evaluate(config: Mapping[str, Any], dataset: str | Path, checkpoints: list[str], out: str | Path) -> Path:
    from lyra.datasets import load_dataset
    from lyra.train import resolve_device, write_metrics

    ds = load_dataset(dataset)
    write_metrics(out, checkpoints, ds.frame, ds.meta, device=str(resolve_device(config["train"]["device"])))
    return Path(out)


def _library_meta(dataset: str | Path) -> dict:
    from lyra.datasets import load_dataset_meta

    meta = load_dataset_meta(dataset)
    if not meta.get("wild_type"):
        raise ConfigError("library: the dataset has no wild type (set data.wild_type) to build a library from")
    return meta


def score(
    config: Mapping[str, Any], dataset: str | Path, checkpoints: list[str], shard: int, out: str | Path
) -> Path:
    from lyra.library import LibraryConfig, measured_sequences
    from lyra.rank import score_shard
    from lyra.train import resolve_device

    meta = _library_meta(dataset)
    lib_cfg = LibraryConfig.from_dict(library_section(config))
    exclude = measured_sequences(dataset) if lib_cfg.exclude_measured else None
    return score_shard(
        checkpoints,
        lib_cfg,
        meta["wild_type"],
        meta.get("first_position", 1),
        meta["alphabet"],
        shard,
        lib_cfg.n_shards,
        out,
        device=str(resolve_device(config["train"]["device"])),
        exclude=exclude,
    )


def zero_shot(config: Mapping[str, Any], out: str | Path, top: int | None = None) -> Path:
    """Rank the design library by the evolutionary prior alone (`prior.msa`), before any measurement:
    the `top` (default rank.top_n) variants with the highest dE, as CSV (rank, variant_id, mutations,
    prior_dE, sequence). Streams the library; memory holds only the current chunk and the top rows."""
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from lyra.alphabet import get_alphabet
    from lyra.io import atomic_path
    from lyra.library import LibraryConfig, iter_library, library_size
    from lyra.prior import prior_from_config
    from lyra.variants import read_wild_type

    section = prior_section(config)
    if section is None:
        raise ConfigError("prior.msa: zero-shot ranking needs an alignment of homologs")
    data = data_config(config)
    wt = read_wild_type(data["wild_type"]) if data.get("wild_type") else None
    ab = get_alphabet(data.get("alphabet", "protein"))
    prior = prior_from_config(section, wt, ab.letters)
    top = int(top or config["rank"]["top_n"])
    best = pd.DataFrame(columns=["variant_id", "mutations", "prior_dE", "sequence"])
    lib_cfg = LibraryConfig.from_dict(library_section(config))
    first = data.get("first_position", 1)
    bar = tqdm(total=library_size(lib_cfg, wt, first, ab), desc="zero-shot", unit="variant",
               disable=not sys.stderr.isatty())
    n = 0
    for chunk in iter_library(lib_cfg, wt, first, ab):
        if chunk.mask is not None or chunk.tokens.shape[1] != len(wt) or int(chunk.tokens.max()) >= ab.size:
            raise DataError("library: zero-shot ranking needs unambiguous variants of the wild type's length")
        dE = prior.score_tokens(chunk.tokens.astype(np.int64))  # (n,)
        keep = np.argsort(-dE, kind="stable")[:top]
        chunk_best = pd.DataFrame({"variant_id": chunk.variant_ids()[keep], "mutations": chunk.mutations()[keep],
                                   "prior_dE": dE[keep], "sequence": chunk.sequences()[keep]})
        best = pd.concat([best, chunk_best], ignore_index=True) if len(best) else chunk_best
        best = best.sort_values("prior_dE", ascending=False, kind="stable").head(top)
        n += len(chunk)
        bar.update(len(chunk))
    bar.close()
    best.insert(0, "rank", np.arange(1, len(best) + 1))
    with atomic_path(out) as tmp:
        best.to_csv(tmp, index=False, float_format="%.4f")
    log.info("zero-shot: ranked %d variants by the %s prior of %s (%d homologs, Neff %.1f) -> %s",
             n, section.get("model", "independent"), section["msa"], prior.n_sequences, prior.n_effective, out)
    return Path(out)


def library_section(config: Mapping[str, Any]) -> dict:
    lib = dict(config["library"])
    base = config.get("_base_dir", ".")
    for key in ("path", "spec"):
        if lib.get(key):
            lib[key] = resolve_path(lib[key], base)
    return lib


def gather(shards: list[str], out: str | Path) -> Path:
    from lyra.rank import gather_scores

    return gather_scores(shards, out)


def rank(config: Mapping[str, Any], scores: str | Path, csv: str | Path, fasta: str | Path) -> Path:
    from lyra.rank import RankConfig, rank_variants, write_ranking

    table = rank_variants(scores, RankConfig.from_dict(config["rank"]))
    write_ranking(table, csv, fasta)
    return Path(csv)


def _measurements_changed(config: Mapping[str, Any], dataset: Path) -> bool:
    """Do the data file and round files differ (by path or content) from those dataset.parquet was made from?"""
    import pyarrow.parquet as pq

    from lyra.datasets import file_sha256

    try:
        meta = json.loads(pq.read_schema(dataset).metadata[b"lyra"])
        made_from = [(s["path"], s["sha256"]) for s in meta["sources"]]
    except (OSError, KeyError, TypeError, ValueError):
        return True  # unreadable or foreign: make it again
    now = [Path(p).resolve() for p in [data_config(config)["path"], *round_files(config)]]
    return made_from != [(str(p), file_sha256(p)) for p in now]


def run_campaign(config: Mapping[str, Any], results: str | Path = "results", config_files: tuple[str, ...] = ()) -> Path:
    """All stages in one process (no Snakemake): same files as the workflow, reused when present and
    made from the same measurement files."""
    root = Path(results) / config["campaign"] if results else campaign_dir(config)
    check_campaign(config)
    timings: dict[str, float] = {}
    dataset = root / "data" / "dataset.parquet"
    # Once a stage runs, every later one runs too (its inputs are new). The measurements decide the
    # first: a new round file, or an edited data file, reruns the whole campaign.
    rerun = dataset.exists() and _measurements_changed(config, dataset)
    if rerun:
        log.warning("%s was made from other measurement files (a new round?): every stage runs again", dataset)

    def stage(name: str, fn, *outputs: Path) -> None:
        nonlocal rerun
        if not rerun and all(Path(o).exists() for o in outputs):
            log.info("%s: outputs exist, skipped", name)
            return
        rerun = True
        t0 = time.perf_counter()
        log.info("%s ...", name)
        fn()
        timings[name] = round(time.perf_counter() - t0, 3)

    stage("preprocess", lambda: preprocess(config, root / "data"), dataset)
    journal, best, trials = root / "tune" / "journal.log", root / "tune" / "best.json", root / "tune" / "trials.tsv"

    def tune_all() -> None:
        if config["tune"]["enabled"]:
            for w in range(config["tune"]["n_workers"]):
                tune_worker(config, dataset, journal, w)
        tune_collect(config, dataset, journal, best, trials)

    stage("tune", tune_all, best)
    models = [root / "models" / f"seed{k}.pt" for k in range(config["train"]["seeds"])]
    for k, m in enumerate(models):
        stage(f"train seed{k}", lambda k=k, m=m: train(config, dataset, best, k, m), m)
    metrics = root / "models" / "metrics.json"
    stage("evaluate", lambda: evaluate(config, dataset, [str(m) for m in models], metrics), metrics)
    shards = [root / "library" / f"shard{k}.parquet" for k in range(config["library"]["n_shards"])]
    for k, s in enumerate(shards):
        stage(f"score shard{k}", lambda k=k, s=s: score(config, dataset, [str(m) for m in models], k, s), s)
    scores = root / "library" / "scores.parquet"
    stage("gather", lambda: gather([str(s) for s in shards], scores), scores)
    stage("rank", lambda: rank(config, scores, root / "ranking.csv", root / "ranking.fasta"), root / "ranking.csv")

    from lyra.manifest import write_manifest
    from lyra.report import make_report

    stage("report", lambda: make_report(root, root / "report", config), root / "report" / "epistasis.png")
    if timings:
        log.info("stage wall times (s): %s", timings)
    write_manifest(root, config, root / "manifest.json", stage_times=timings, config_files=config_files)
    return root


__all__ = [
    "LyraError",
    "data_config",
    "evaluate",
    "gather",
    "preprocess",
    "rank",
    "round_files",
    "run_campaign",
    "score",
    "study_name",
    "train",
    "training_seed",
    "tune_collect",
    "tune_worker",
]
