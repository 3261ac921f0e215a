"""Every file a campaign writes under `results/<campaign>/`, named once.

The Snakemake rules, `lyra run`, the report, the manifest and the rounds all ask this module. Names are
relative to the campaign folder; `{seed}`, `{worker}`, `{shard}` and `{stage}` are the wildcards the
rules fill (ensemble member, tuning worker, library shard, pipeline stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

RESULTS = "results"

STAGE_CONFIG = "config/{stage}.yaml"  # the sections one stage reads: its rerun trigger

DATASET = "data/dataset.parquet"
DATA_REPORT = "data/report.md"

TUNE_JOURNAL = "tune/journal.log"  # the Optuna study all workers share
TUNE_WORKER_DONE = "tune/worker{worker}.done"
TUNE_BEST = "tune/best.json"
TUNE_TRIALS = "tune/trials.tsv"

MODELS = "models"
MODEL = "models/seed{seed}.pt"
METRICS = "models/metrics.json"
RIDGE = "models/ridge.npz"  # the one-hot ridge baseline (regression on one target only)

SHARD = "library/shard{shard}.parquet"
SCORES = "library/scores.parquet"

RANKING = "ranking.csv"
RANKING_FASTA = "ranking.fasta"
PLATE = "plate.csv"
RANKING_DNA = "ranking_dna.fasta"  # only with data.wild_type_dna

REPORT = "report"
FIGURES = {  # report/<file>: what each figure shows is in docs/report.md
    "learning_curves": "report/learning_curves.png",
    "test_predictions": "report/test_predictions.png",
    "tune_history": "report/tune_history.png",
    "tune_importances": "report/tune_importances.png",
    "library_scores": "report/library_scores.png",
    "top_n": "report/top_n.png",
    "plate": "report/plate.png",
    "epistasis": "report/epistasis.png",
}
TABLES = {"top_n": "report/top_n.md", "epistasis": "report/epistasis.tsv"}
MANIFEST = "manifest.json"

SIMULATION = "simulation"  # retrospective campaigns (snakemake simulate)
SIM_LIBRARY = "simulation/library.parquet"  # the landscape, scored by the lyra strategies each round
SIM_RUN = "simulation/runs/{strategy}/run{run}.parquet"  # one row per round
SIM_PICKS = "simulation/runs/{strategy}/run{run}.picks.csv"  # every variant the run measured
SIM_WORK = "simulation/work/{strategy}/run{run}"  # finished rounds: a killed job resumes from them
SIM_RUNS = "simulation/runs.parquet"
SIM_SUMMARY = "simulation/summary.csv"
SIM_FIGURE = "simulation/summary.png"

LOGS = "logs"
BENCHMARKS = "benchmarks"
RUN_RECORDS = ".lyra-run"  # lyra run's input checksums, one file per job


def log(job: str) -> str:
    """logs/<job>.log, e.g. log('train/seed{seed}')."""
    return f"{LOGS}/{job}.log"


def benchmark(job: str) -> str:
    """benchmarks/<job>.tsv: Snakemake's time and memory record of one job."""
    return f"{BENCHMARKS}/{job}.tsv"


def resume_file(model: str | Path) -> Path:
    """A training job's resume state beside its model (.seed<k>.resume.pt): not a declared output, so it
    survives a killed job, and its leading dot keeps it out of the ensemble."""
    model = Path(model)
    return model.with_name(f".{model.stem}.resume.pt")


def campaign_dir(config: Mapping[str, Any], results: str | Path = RESULTS) -> Path:
    return Path(results) / str(config["campaign"])


class Layout:
    """The files of one campaign as paths: `Layout(root).dataset`, `.model(3)`, `.figure('plate')`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def of(cls, config: Mapping[str, Any], results: str | Path = RESULTS) -> "Layout":
        return cls(campaign_dir(config, results))

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def stage_config(self, stage: str) -> Path:
        return self.root / STAGE_CONFIG.format(stage=stage)

    @property
    def dataset(self) -> Path:
        return self.root / DATASET

    @property
    def data_report(self) -> Path:
        return self.root / DATA_REPORT

    @property
    def tune_journal(self) -> Path:
        return self.root / TUNE_JOURNAL

    def tune_worker_done(self, worker: int) -> Path:
        return self.root / TUNE_WORKER_DONE.format(worker=worker)

    @property
    def tune_best(self) -> Path:
        return self.root / TUNE_BEST

    @property
    def tune_trials(self) -> Path:
        return self.root / TUNE_TRIALS

    @property
    def models(self) -> Path:
        return self.root / MODELS

    def model(self, seed: int) -> Path:
        return self.root / MODEL.format(seed=seed)

    def checkpoints(self) -> list[Path]:
        """The ensemble's models/seed<k>.pt that exist, in k order (resume files are left out)."""
        paths = [p for p in self.models.glob("seed*.pt") if p.stem[4:].isdigit()]
        return sorted(paths, key=lambda p: int(p.stem[4:]))

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def ridge(self) -> Path:
        return self.root / RIDGE

    def shard(self, shard: int) -> Path:
        return self.root / SHARD.format(shard=shard)

    @property
    def scores(self) -> Path:
        return self.root / SCORES

    @property
    def ranking(self) -> Path:
        return self.root / RANKING

    @property
    def ranking_fasta(self) -> Path:
        return self.root / RANKING_FASTA

    @property
    def plate(self) -> Path:
        return self.root / PLATE

    @property
    def ranking_dna(self) -> Path:
        return self.root / RANKING_DNA

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def figure(self, name: str) -> Path:
        return self.root / FIGURES[name]

    def table(self, name: str) -> Path:
        return self.root / TABLES[name]

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    def log(self, job: str) -> Path:
        return self.root / log(job)

    @property
    def benchmarks(self) -> Path:
        return self.root / BENCHMARKS

    def run_record(self, job: str) -> Path:
        return self.root / RUN_RECORDS / f"{job.replace(' ', '_')}.json"
