"""A whole campaign in one process, without Snakemake (`lyra run`): the workflow's jobs, files and
notion of "stale", so after any change it reruns exactly the jobs Snakemake would."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from lyra.campaign import stages
from lyra.campaign.checks import check_campaign, stage_inputs
from lyra.campaign.config import CAMPAIGN_STAGES, write_stage_config
from lyra.campaign.layout import FIGURES, RESULTS, TABLES, Layout
from lyra.campaign.rounds import round_files
from lyra.campaign.settings import data_config, ridge_baseline, wild_type_dna
from lyra.errors import LyraError
from lyra.io import sha256_file, write_json

log = logging.getLogger("lyra.campaign")


# Snakemake records the checksum of every input up to this size (its --max-checksum-file-size default)
# and does not rerun a job for an input that is newer but holds the same bytes.
CHECKSUM_MAX_BYTES = 1_000_000


def _small_sha256_file(path: Path) -> str | None:
    return sha256_file(path) if path.stat().st_size <= CHECKSUM_MAX_BYTES else None


def is_stale(inputs: list[str | Path], outputs: list[str | Path], record: str | Path | None = None) -> bool:
    """Snakemake's rule for rerunning a job: an output is missing, or an input is newer than the oldest
    output and (for a file up to CHECKSUM_MAX_BYTES) its content differs from the checksum `record`
    holds from the job's last run (see record_inputs)."""
    outs = [Path(o) for o in outputs]
    if not all(o.exists() for o in outs):
        return True
    oldest = min(o.stat().st_mtime for o in outs)
    newer = [Path(i) for i in inputs if Path(i).stat().st_mtime > oldest]
    if not newer:
        return False
    recorded = json.loads(Path(record).read_text()) if record is not None and Path(record).is_file() else {}
    return any((sha := _small_sha256_file(i)) is None or recorded.get(str(i)) != sha for i in newer)


def record_inputs(inputs: list[str | Path], record: str | Path) -> None:
    """The checksums of a job's small inputs, as it ran (what is_stale compares with)."""
    write_json(record, {str(i): sha for i in inputs if (sha := _small_sha256_file(Path(i))) is not None})


def made_from_other_measurements(config: Mapping[str, Any], dataset: Path) -> bool:
    """Was dataset.parquet made from another set of measurement files (a new round, another data.path)?
    Snakemake reruns a job whose set of input files changed; this is that check for the one stage whose
    inputs are a list that grows."""
    import pyarrow.parquet as pq

    try:
        meta = json.loads(pq.read_schema(dataset).metadata[b"lyra"])
        made_from = [s["path"] for s in meta["sources"]]
    except (OSError, KeyError, TypeError, ValueError):
        return True  # unreadable or foreign: make it again
    return made_from != [str(Path(p).resolve()) for p in [data_config(config)["path"], *round_files(config)]]


def run_campaign(config: Mapping[str, Any], results: str | Path = RESULTS, config_files: tuple[str, ...] = ()) -> Path:
    """All stages in one process (no Snakemake); see _run_campaign. A first run that stops on bad input
    leaves nothing behind (not even the stage configs it wrote)."""
    campaign = Layout.of(config, results or RESULTS)
    fresh = not campaign.root.exists()
    try:
        return _run_campaign(config, campaign, config_files)
    except LyraError:
        if fresh:
            shutil.rmtree(campaign.root, ignore_errors=True)
        raise


def _run_campaign(config: Mapping[str, Any], campaign: Layout, config_files: tuple[str, ...]) -> Path:
    """All stages in one process (no Snakemake), with the workflow's files and its notion of "stale":
    each stage config is rewritten only when its settings change (the rules' params trigger), and a
    job runs when an output is missing or older than one of its inputs, the same inputs the rules
    declare (stage_inputs). So after any change this reruns exactly the jobs Snakemake would."""
    check_campaign(config)
    ext = stage_inputs(config)
    cfg = {stage: campaign.stage_config(stage) for stage in CAMPAIGN_STAGES}
    for stage, path in cfg.items():
        if write_stage_config(config, stage, path):
            log.info("%s: settings changed", path)
    timings: dict[str, float] = {}
    made: set[str] = set()  # outputs of the jobs run so far: a job that reads one runs too, as in Snakemake

    def job(name: str, fn, inputs: list, outputs: list, force: bool = False) -> None:
        record = campaign.run_record(name)  # its inputs' checksums
        force = force or any(str(i) in made for i in inputs)
        if not force and not is_stale(inputs, outputs, record):
            log.info("%s: up to date", name)
            return
        t0 = time.perf_counter()
        log.info("%s ...", name)
        fn()
        record_inputs(inputs, record)
        made.update(str(o) for o in outputs)
        timings[name] = round(time.perf_counter() - t0, 3)

    dataset = campaign.dataset
    new_files = dataset.exists() and made_from_other_measurements(config, dataset)
    if new_files:
        log.warning("%s was made from other measurement files (a new round?): every stage runs again", dataset)
    job("preprocess", lambda: stages.preprocess(config, dataset, report=campaign.data_report), [cfg["preprocess"], *ext["preprocess"]],
        [dataset, campaign.data_report], force=new_files)

    journal, best, trials = campaign.tune_journal, campaign.tune_best, campaign.tune_trials

    def tune_all() -> None:
        if config["tune"]["enabled"]:
            for w in range(config["tune"]["n_workers"]):
                stages.tune_worker(config, dataset, journal, w)
        stages.tune_collect(config, dataset, journal, best, trials)

    job("tune", tune_all, [cfg["tune"], dataset, *ext["tune"]], [best, trials])
    models = [campaign.model(k) for k in range(config["train"]["seeds"])]
    for k, m in enumerate(models):
        job(f"train seed{k}", lambda k=k, m=m: stages.train(config, dataset, best, k, m),
            [cfg["train"], dataset, best, *ext["train"]], [m])
    metrics = campaign.metrics
    ridge = [campaign.ridge] if ridge_baseline(config) else []  # as in rules/train.smk
    job("evaluate", lambda: stages.evaluate(config, dataset, [str(m) for m in models], metrics),
        [cfg["train"], dataset, *models], [metrics, *ridge])
    shards = [campaign.shard(k) for k in range(config["library"]["n_shards"])]
    for k, s in enumerate(shards):
        job(f"score shard{k}", lambda k=k, s=s: stages.score(config, dataset, [str(m) for m in models], k, s),
            [cfg["score"], dataset, *models, *ridge, *ext["score"]], [s])
    scores = campaign.scores
    job("gather", lambda: stages.gather([str(s) for s in shards], scores), shards, [scores])
    # the rule's outputs: the plate map always, the picks' genes with data.wild_type_dna
    ranking = [campaign.ranking, campaign.ranking_fasta, campaign.plate,
               *([campaign.ranking_dna] if wild_type_dna(config) else [])]
    job("rank", lambda: stages.rank(config, scores, *ranking[:2], dataset=dataset, plate=ranking[2],
                                    dna=ranking[3] if len(ranking) > 3 else None),
        [cfg["rank"], scores, dataset, metrics, *ext["rank"]], ranking)
    report_files = [campaign / f for f in [*FIGURES.values(), *TABLES.values()]]
    job("report", lambda: stages.report(config, campaign.root, config_files, stage_times=timings),
        [*cfg.values(), dataset, metrics, *ridge, *models, best, trials, scores, *ranking, *config_files],
        [*report_files, campaign.manifest])
    if timings:
        log.info("stage wall times (s): %s", timings)
    return campaign.root
