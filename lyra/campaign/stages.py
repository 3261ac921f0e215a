"""The campaign stages as plain functions: what the Snakemake rules and `lyra <stage>` call.

Each stage reads a resolved config (see lyra.campaign.config) and explicit input paths, and writes
explicit output paths atomically; lyra.campaign.run chains them without Snakemake.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from lyra.campaign.layout import METRICS, PLATE, RANKING_DNA, RIDGE, Layout, resume_file
from lyra.campaign.rounds import round_files
from lyra.campaign.settings import (best_params, data_config, library_section, model_params, prior_section,
                                    prior_table, ridge_unavailable, study_name, training_seed, wild_type_dna)
from lyra.errors import ConfigError, DataError

log = logging.getLogger("lyra.campaign")


NO_WILD_TYPE = ("library: a {kind} library is built from the wild type: set data.wild_type, or list the "
                 "variants to score in a file (library: {{kind: file, path: ...}})")


GENE_NEEDS_WILD_TYPE = "data.wild_type_dna: a gene needs a protein campaign with data.wild_type, the protein it codes for"


def preprocess(config: Mapping[str, Any], out: str | Path, report: str | Path | None = None) -> Path:
    from lyra.data.dataset import prepare_dataset

    return prepare_dataset(data_config(config), config["split"], out, base_dir=config.get("_base_dir"),
                           rounds=round_files(config), report=report)


def tune_worker(config: Mapping[str, Any], dataset: str | Path, journal: str | Path, worker: int) -> int:
    from lyra.tune.study import TuneConfig, run_worker

    from lyra.data.dataset import load_dataset_meta

    tune_cfg = TuneConfig.from_dict({**config["tune"], "seed": config["seed"]})
    return run_worker(
        dataset, journal, tune_cfg, model_params(config, config["model"]), dict(config["train"]), worker,
        study_name=study_name(config, dataset), prior_table=prior_table(config, load_dataset_meta(dataset)),
    )


def tune_collect(config: Mapping[str, Any], dataset: str | Path, journal: str | Path, best: str | Path,
                 trials: str | Path) -> dict:
    from lyra.tune.collect import collect_best, fixed_best
    from lyra.tune.study import TuneConfig

    if not config["tune"]["enabled"]:
        from lyra.io import write_text

        write_text(trials, "number\tstate\tvalue\n")  # no search ran: an empty trials table
        return fixed_best(best, dict(config["model"]), dict(config["train"]))
    tune_cfg = TuneConfig.from_dict({**config["tune"], "seed": config["seed"]})
    return collect_best(journal, best, trials, study_name=study_name(config, dataset), tune_cfg=tune_cfg)


def train(config: Mapping[str, Any], dataset: str | Path, best_json: str | Path, member: int, out: str | Path) -> Path:
    from lyra.data.dataset import load_dataset
    from lyra.learn.train import TrainConfig, train_model

    ds = load_dataset(dataset)
    model_cfg, train_cfg = best_params(config, best_json)
    model_cfg = model_params(config, model_cfg)
    out = Path(out)
    resume = resume_file(out)
    result = train_model(
        ds.frame, ds.meta, model_cfg, TrainConfig.from_dict(train_cfg), training_seed(config, member), out,
        resume_path=resume, prior_table=prior_table(config, ds.meta),
    )
    return Path(result.checkpoint_path)


def _ridge_file(meta: Mapping[str, Any], ridge: str | Path | None, beside: str | Path) -> Path | None:
    """The ridge model file of a campaign with a ridge baseline: `ridge`, by default the campaign's own
    (in the folder of `beside`, a file of models/); None, and the reason logged, without a baseline."""
    why_not = ridge_unavailable(meta["task"], meta["targets"])
    if why_not is not None:
        log.info("no one-hot ridge baseline: %s", why_not)
        return None
    return Path(ridge) if ridge is not None else Path(beside).with_name(Path(RIDGE).name)


def evaluate(config: Mapping[str, Any], dataset: str | Path, checkpoints: list[str], out: str | Path,
             ridge: str | Path | None = None) -> Path:
    """models/metrics.json, and the one-hot ridge baseline fitted on the same training rows, seeded by the
    campaign seed, to `ridge` (default models/ridge.npz beside `out`; regression on one target only)."""
    from lyra.data.dataset import load_dataset
    from lyra.learn.evaluate import write_metrics
    from lyra.learn.forward import resolve_device

    ds = load_dataset(dataset)
    write_metrics(out, checkpoints, ds.frame, ds.meta, device=str(resolve_device(config["train"]["device"])),
                  ridge=_ridge_file(ds.meta, ridge, out), seed=config["seed"])
    return Path(out)


def _library_meta(dataset: str | Path, lib) -> dict:
    from lyra.data.dataset import load_dataset_meta

    meta = load_dataset_meta(dataset)
    if not meta.get("wild_type") and lib.kind != "file":
        raise ConfigError(NO_WILD_TYPE.format(kind=lib.kind))
    return meta


def score(
    config: Mapping[str, Any], dataset: str | Path, checkpoints: list[str], shard: int, out: str | Path,
    ridge: str | Path | None = None,
) -> Path:
    """One shard of the library scored by the ensemble and, in a campaign with a ridge baseline, by that
    model too (`ridge`, default models/ridge.npz beside the checkpoints), whatever rank.model says: the
    scores then serve every rank.model, and changing it reruns the ranking only."""
    from lyra.design.library import LibraryConfig, measured_sequences
    from lyra.design.scoring import score_shard
    from lyra.learn.forward import resolve_device

    lib_cfg = LibraryConfig.from_dict(library_section(config))
    meta = _library_meta(dataset, lib_cfg)
    exclude = measured_sequences(dataset) if lib_cfg.exclude_measured else None
    return score_shard(
        checkpoints,
        lib_cfg,
        meta.get("wild_type"),
        meta.get("first_position", 1),
        meta["alphabet"],
        shard,
        lib_cfg.n_shards,
        out,
        device=str(resolve_device(config["train"]["device"])),
        exclude=exclude,
        padding=(meta.get("data_config") or {}).get("padding"),  # a library file comes in the data's format
        ridge=_ridge_file(meta, ridge, checkpoints[0]) if checkpoints else None,
    )


def zero_shot(config: Mapping[str, Any], out: str | Path, top: int | None = None) -> Path:
    """Rank the design library by the evolutionary prior alone (`prior.msa`), before any measurement:
    the `top` (default rank.top_n) variants with the highest dE, as CSV (rank, variant_id, mutations,
    prior_dE, sequence). Streams the library; memory holds only the current chunk and the top rows."""
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from lyra.data.alphabet import get_alphabet
    from lyra.io import atomic_path
    from lyra.design.library import LibraryConfig, iter_library, library_size
    from lyra.design.prior import prior_from_config
    from lyra.data.variants import read_wild_type

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
    bar = tqdm(total=library_size(lib_cfg, wt, first, ab, padding=data.get("padding")), desc="zero-shot", unit="variant",
               disable=not sys.stderr.isatty())
    n = 0
    for chunk in iter_library(lib_cfg, wt, first, ab, padding=data.get("padding")):
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


def gather(shards: list[str], out: str | Path) -> Path:
    from lyra.design.scoring import gather_scores

    return gather_scores(shards, out)


def rank(config: Mapping[str, Any], scores: str | Path, csv: str | Path, fasta: str | Path,
         dataset: str | Path | None = None, plate: str | Path | None = None, dna: str | Path | None = None,
         metrics: str | Path | None = None) -> Path:
    """ranking.csv and ranking.fasta, the plate map (`plate`, default plate.csv next to the CSV) and, with
    data.wild_type_dna, the picks' genes (`dna`, default ranking_dna.fasta next to it). With `dataset`,
    ranking.csv gains the measured value of each pick measured already. rank.model: auto reads `metrics`
    (default the campaign's models/metrics.json, the CSV being in the campaign's folder) to choose the
    model. Nothing is written on an error."""
    from lyra.design.dna import DnaConfig, check_gene, ranking_genes, read_gene, write_genes
    from lyra.design.plate import PlateConfig, plate_map, write_plate
    from lyra.design.rank import RankConfig, add_measured, rank_variants, write_ranking
    from lyra.design.scoring import scores_meta

    plate = Path(plate) if plate is not None else Path(csv).with_name(PLATE)
    gene_file = wild_type_dna(config)
    dna = (Path(dna) if dna is not None else Path(csv).with_name(RANKING_DNA)) if gene_file else None
    meta = scores_meta(scores)  # the wild type the library was built from
    wt, first = meta.get("wild_type"), meta.get("first_position", 1)
    plate_cfg = PlateConfig.from_rank(config["rank"])
    controls = plate_cfg.resolve_controls(wt, first, config.get("data", {}).get("mutation_separators", ":,;"))
    dna_cfg = DnaConfig.from_rank(config["rank"])
    gene = None
    if gene_file:
        if wt is None:
            raise ConfigError(GENE_NEEDS_WILD_TYPE)
        gene = check_gene(read_gene(gene_file), wt, first, source=f"data.wild_type_dna ({gene_file})")

    rank_cfg = RankConfig.from_dict({**config["rank"], "seed": config["seed"]})
    evaluation = None
    if rank_cfg.model == "auto":
        from lyra.learn.evaluate import read_metrics

        evaluation = read_metrics(metrics if metrics is not None else Path(csv).parent / METRICS)
    table = rank_variants(scores, rank_cfg, evaluation)
    if dataset is not None:
        table = add_measured(table, dataset)
    layout = plate_map(table, plate_cfg, controls)
    genes = ranking_genes(table, gene, wt, dna_cfg, first) if gene is not None else None
    write_ranking(table, csv, fasta)
    write_plate(layout, plate)
    n_plates = int(layout["plate"].max())
    log.info("plate map: %d picks and %d control wells per plate on %d %d-well plate%s -> %s", len(table),
             plate_cfg.control_wells, n_plates, plate_cfg.plate, "s" if n_plates > 1 else "", plate)
    if genes is not None:
        write_genes(table, genes, dna, dna_cfg)
        log.info("genes: %d picks, codons of the %s table -> %s", len(genes), dna_cfg.codon_table, dna)
    else:
        # a gene file of an earlier setting would pass for this ranking's
        Path(csv).with_name(RANKING_DNA).unlink(missing_ok=True)
    return Path(csv)


def report(config: Mapping[str, Any], campaign_dir: str | Path, config_files: Sequence[str | Path] = (),
           stage_times: Mapping[str, float] | None = None) -> Path:
    """The report's figures and tables, then manifest.json (which hashes them)."""
    from lyra.campaign.manifest import write_manifest
    from lyra.report.report import make_report

    campaign = Layout(campaign_dir)
    make_report(campaign.root, config)
    write_manifest(campaign.root, config, campaign.manifest, stage_times=stage_times, config_files=config_files)
    return campaign.manifest
