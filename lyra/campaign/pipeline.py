"""The campaign stages as plain functions: what the Snakemake rules and `lyra <stage>` call.

Each stage reads a resolved config (see lyra.campaign.config) and explicit input paths, and writes explicit
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

from lyra.campaign.config import campaign_dir, resolve_path, stage_config
from lyra.errors import ConfigError, DataError, LyraError
from lyra.data.variants import wild_type_is_path

log = logging.getLogger("lyra.campaign.pipeline")


def training_seed(config: Mapping[str, Any], member: int) -> int:
    """Seed of ensemble member k: distinct per member, derived from the campaign seed."""
    return int(config["seed"]) * 1000 + int(member)


def study_name(config: Mapping[str, Any], dataset: str | Path) -> str:
    """One Optuna study per tuning setup and dataset: changing the search, or the data it sees (a new
    campaign round), starts a new study in the same journal instead of resuming a finished one."""
    from lyra.io import sha256_file

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
    """The model's per-site prior table for this dataset (lyra/prior.py), or None without `prior.msa`."""
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


def round_files(config: Mapping[str, Any]) -> list[str]:
    """rounds/<n>/measurements.csv (or .xlsx) files, in round order (none while the folder does not exist yet)."""
    from lyra.campaign.rounds import completed_rounds, round_file, rounds_root

    root = rounds_root(config)
    if root is None:
        return []
    if root.exists() and not root.is_dir():
        raise ConfigError(f"config key 'rounds.dir': {root} is not a directory")
    if not root.exists():
        log.info("rounds.dir %s does not exist yet: no measured rounds (it appears with the first)", root)
    return [str(round_file(root / str(n))) for n in completed_rounds(root)]


def stage_inputs(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every file outside results/ that each stage reads, by stage (upstream stage outputs aside).

    The rules declare them as inputs and `run_campaign` checks them the same way, so editing the
    wild-type FASTA, a split's index file, the library file or spec, the alignment or a round file
    reruns the stage that reads it and every stage after it.
    """
    from lyra.design.library import LibraryConfig

    data = data_config(config)
    base = config.get("_base_dir", ".")
    wt = data.get("wild_type")
    wild_type = [wt] if wt and Path(wt).is_absolute() else []  # data_config resolved it: a file
    index_files = [resolve_path(f, base) for f in ((config["split"].get("index_files") or {}).values())]
    msa = [prior_msa(config)] if prior_msa(config) else []
    lib = LibraryConfig.from_dict(library_section(config), base)
    library = [f for f in (lib.spec, lib.path) if f]
    return {
        "preprocess": [data["path"], *wild_type, *index_files, *round_files(config)],
        "tune": msa,
        "train": msa,
        "score": library,
        "rank": [dna] if (dna := wild_type_dna(config)) else [],
        "report": [],
    }


def check_campaign(config: Mapping[str, Any]) -> None:
    """Fail fast, before any job runs, on what the schema cannot see: missing files, inconsistent split
    settings, a library over its size cap."""
    from lyra.data.dataset import DataConfig, SplitConfig
    from lyra.design.library import LibraryConfig, library_size
    from lyra.data.variants import read_wild_type

    data = data_config(config)
    if Path(data["path"]).is_dir():
        raise ConfigError(f"data.path: {data['path']} is a directory; give the measurement file")
    if not Path(data["path"]).is_file():
        raise ConfigError(f"data.path: no such file: {data['path']}")
    DataConfig.from_dict(data)
    SplitConfig.from_dict(config["split"])
    round_files(config)
    try:
        wt = read_wild_type(data["wild_type"]) if data.get("wild_type") else None
    except ValueError as e:
        raise ConfigError(f"data.wild_type: {e}") from None
    prior = prior_section(config)
    if prior is not None:
        from lyra.design.prior import check_alignment

        check_alignment(prior, wt)
    lib = LibraryConfig.from_dict(library_section(config))
    if wt is None and lib.kind != "file":
        raise ConfigError(_NO_WILD_TYPE.format(kind=lib.kind))
    if wt is not None or lib.kind == "file":
        n = library_size(lib, wt, data.get("first_position", 1), data.get("alphabet", "protein"),
                         padding=data.get("padding"))
        if n > lib.max_size:
            raise ConfigError(
                f"library: {n:,} variants exceed library.max_size = {lib.max_size:,}; "
                "raise library.max_size to score it anyway"
            )
        _check_library_not_measured(config, lib, wt, n)
    _check_order(config, wt)


_GENE_NEEDS_WILD_TYPE = "data.wild_type_dna: a gene needs a protein campaign with data.wild_type, the protein it codes for"


def _check_order(config: Mapping[str, Any], wild_type: str | None) -> None:
    """The plate and DNA settings, before any training: controls that are variants of the campaign, a
    codon table and enzymes that exist, and a wild-type gene that codes for the wild type."""
    from lyra.design.dna import DnaConfig, check_gene, read_gene
    from lyra.design.plate import PlateConfig

    data = config["data"]
    PlateConfig.from_rank(config["rank"]).resolve_controls(wild_type, data.get("first_position", 1),
                                                           data.get("mutation_separators", ":,;"))
    DnaConfig.from_rank(config["rank"])
    dna = wild_type_dna(config)
    if dna is None:
        return
    if wild_type is None or data.get("alphabet", "protein") != "protein":
        raise ConfigError(_GENE_NEEDS_WILD_TYPE)
    check_gene(read_gene(dna), wild_type, data.get("first_position", 1), source=f"data.wild_type_dna ({dna})")


def _max_rows(path: str | Path) -> int:
    """An upper bound on a measurement file's rows, without parsing it (lines, FASTA headers, or the
    Parquet footer)."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return path.read_bytes().count(b"\n") + 1


def _check_library_not_measured(config: Mapping[str, Any], lib, wild_type: str | None, n_library: int) -> None:
    """Before any training: a library whose variants are (nearly) all measured already would leave
    nothing (or fewer than rank.top_n) to rank. Exact only when the measurements could cover it, so a
    large library costs nothing here."""
    import tempfile

    from lyra.design.library import iter_library, measured_sequences

    if not lib.exclude_measured:
        return
    top_n, allow_fewer = config["rank"]["top_n"], config["rank"].get("allow_fewer", False)
    data = data_config(config)
    files = [data["path"], *round_files(config)]
    if n_library - sum(_max_rows(f) for f in files) - 1 >= top_n:  # -1: the wild type is never offered
        return
    with tempfile.TemporaryDirectory(prefix="lyra-check-") as tmp:
        measured = measured_sequences(preprocess(config, tmp))
    left = sum(len(c) for c in iter_library(lib, wild_type, data.get("first_position", 1),
                                            data.get("alphabet", "protein"), exclude=measured,
                                            padding=data.get("padding")))
    if left == 0:
        raise ConfigError(
            f"library: all {n_library:,} of its variants are measured already, so there is nothing to rank; "
            "widen it (library.positions, library.max_mutations, library.kind) or set library.exclude_measured: false"
        )
    if left < top_n and not allow_fewer:
        raise ConfigError(
            f"library: only {left:,} of its {n_library:,} variants are not measured yet, fewer than "
            f"rank.top_n = {top_n}; widen the library, lower rank.top_n, or set rank.allow_fewer: true"
        )


# --- stages -----------------------------------------------------------------------------------------


def preprocess(config: Mapping[str, Any], out_dir: str | Path) -> Path:
    from lyra.data.dataset import prepare_dataset

    return prepare_dataset(
        data_config(config), config["split"], out_dir, base_dir=config.get("_base_dir"), rounds=round_files(config)
    )


def model_params(config: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> dict:
    """The model config to train with: `model_cfg` plus the prior's sign when there is a prior."""
    if prior_msa(config) is None:
        return dict(model_cfg)
    from lyra.design.prior import PRIOR_SIGNS

    return {**model_cfg, "prior_sign": PRIOR_SIGNS[config["prior"].get("sign", "learn")]}


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
    from lyra.tune.study import TuneConfig, collect_best, fixed_best

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
    from lyra.data.dataset import load_dataset
    from lyra.learn.train import TrainConfig, train_model

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
    from lyra.data.dataset import load_dataset
    from lyra.learn.train import resolve_device, write_metrics

    ds = load_dataset(dataset)
    write_metrics(out, checkpoints, ds.frame, ds.meta, device=str(resolve_device(config["train"]["device"])))
    return Path(out)


def _library_meta(dataset: str | Path, lib) -> dict:
    from lyra.data.dataset import load_dataset_meta

    meta = load_dataset_meta(dataset)
    if not meta.get("wild_type") and lib.kind != "file":
        raise ConfigError(_NO_WILD_TYPE.format(kind=lib.kind))
    return meta


_NO_WILD_TYPE = ("library: a {kind} library is built from the wild type: set data.wild_type, or list the "
                 "variants to score in a file (library: {{kind: file, path: ...}})")


def score(
    config: Mapping[str, Any], dataset: str | Path, checkpoints: list[str], shard: int, out: str | Path
) -> Path:
    from lyra.design.library import LibraryConfig, measured_sequences
    from lyra.design.rank import score_shard
    from lyra.learn.train import resolve_device

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


def library_section(config: Mapping[str, Any]) -> dict:
    lib = dict(config["library"])
    base = config.get("_base_dir", ".")
    for key in ("path", "spec"):
        if lib.get(key):
            lib[key] = resolve_path(lib[key], base)
    return lib


def gather(shards: list[str], out: str | Path) -> Path:
    from lyra.design.rank import gather_scores

    return gather_scores(shards, out)


def rank(config: Mapping[str, Any], scores: str | Path, csv: str | Path, fasta: str | Path,
         dataset: str | Path | None = None, plate: str | Path | None = None, dna: str | Path | None = None) -> Path:
    """ranking.csv and ranking.fasta, the plate map (`plate`, default plate.csv next to the CSV) and, with
    data.wild_type_dna, the picks' genes (`dna`, default ranking_dna.fasta next to it). With `dataset`,
    ranking.csv gains the measured value of each pick measured already. Nothing is written on an error."""
    from lyra.design.dna import DnaConfig, check_gene, ranking_genes, read_gene, write_genes
    from lyra.design.plate import PlateConfig, plate_map, write_plate
    from lyra.design.rank import RankConfig, add_measured, rank_variants, scores_meta, write_ranking

    plate = Path(plate) if plate is not None else Path(csv).with_name("plate.csv")
    gene_file = wild_type_dna(config)
    dna = (Path(dna) if dna is not None else Path(csv).with_name("ranking_dna.fasta")) if gene_file else None
    meta = scores_meta(scores)  # the wild type the library was built from
    wt, first = meta.get("wild_type"), meta.get("first_position", 1)
    plate_cfg = PlateConfig.from_rank(config["rank"])
    controls = plate_cfg.resolve_controls(wt, first, config.get("data", {}).get("mutation_separators", ":,;"))
    dna_cfg = DnaConfig.from_rank(config["rank"])
    gene = None
    if gene_file:
        if wt is None:
            raise ConfigError(_GENE_NEEDS_WILD_TYPE)
        gene = check_gene(read_gene(gene_file), wt, first, source=f"data.wild_type_dna ({gene_file})")

    table = rank_variants(scores, RankConfig.from_dict(config["rank"]))
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
        Path(csv).with_name("ranking_dna.fasta").unlink(missing_ok=True)
    return Path(csv)


def _made_from_other_measurements(config: Mapping[str, Any], dataset: Path) -> bool:
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


# Snakemake records the checksum of every input up to this size (its --max-checksum-file-size default)
# and does not rerun a job for an input that is newer but holds the same bytes.
CHECKSUM_MAX_BYTES = 1_000_000


def _small_sha256_file(path: Path) -> str | None:
    from lyra.io import sha256_file

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
    from lyra.io import write_json

    write_json(record, {str(i): sha for i in inputs if (sha := _small_sha256_file(Path(i))) is not None})


def run_campaign(config: Mapping[str, Any], results: str | Path = "results", config_files: tuple[str, ...] = ()) -> Path:
    """All stages in one process (no Snakemake); see _run_campaign. A first run that stops on bad input
    leaves nothing behind (not even the stage configs it wrote)."""
    root = Path(results) / config["campaign"] if results else campaign_dir(config)
    fresh = not root.exists()
    try:
        return _run_campaign(config, root, config_files)
    except LyraError:
        if fresh:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        raise


def _run_campaign(config: Mapping[str, Any], root: Path, config_files: tuple[str, ...]) -> Path:
    """All stages in one process (no Snakemake), with the workflow's files and its notion of "stale":
    each stage config is rewritten only when its settings change (the rules' params trigger), and a
    job runs when an output is missing or older than one of its inputs, the same inputs the rules
    declare (stage_inputs). So after any change this reruns exactly the jobs Snakemake would."""
    from lyra.campaign.config import STAGE_SECTIONS, write_stage_config

    check_campaign(config)
    ext = stage_inputs(config)
    cfg = {stage: root / "config" / f"{stage}.yaml" for stage in STAGE_SECTIONS}
    for stage, path in cfg.items():
        if write_stage_config(config, stage, path):
            log.info("%s: settings changed", path)
    timings: dict[str, float] = {}
    made: set[str] = set()  # outputs of the jobs run so far: a job that reads one runs too, as in Snakemake

    def job(name: str, fn, inputs: list, outputs: list, force: bool = False) -> None:
        record = root / ".lyra-run" / f"{name.replace(' ', '_')}.json"  # its inputs' checksums
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

    dataset, data_report = root / "data" / "dataset.parquet", root / "data" / "report.md"
    new_files = dataset.exists() and _made_from_other_measurements(config, dataset)
    if new_files:
        log.warning("%s was made from other measurement files (a new round?): every stage runs again", dataset)
    job("preprocess", lambda: preprocess(config, root / "data"), [cfg["preprocess"], *ext["preprocess"]],
        [dataset, data_report], force=new_files)

    journal, best, trials = root / "tune" / "journal.log", root / "tune" / "best.json", root / "tune" / "trials.tsv"

    def tune_all() -> None:
        if config["tune"]["enabled"]:
            for w in range(config["tune"]["n_workers"]):
                tune_worker(config, dataset, journal, w)
        tune_collect(config, dataset, journal, best, trials)

    job("tune", tune_all, [cfg["tune"], dataset, *ext["tune"]], [best, trials])
    models = [root / "models" / f"seed{k}.pt" for k in range(config["train"]["seeds"])]
    for k, m in enumerate(models):
        job(f"train seed{k}", lambda k=k, m=m: train(config, dataset, best, k, m),
            [cfg["train"], dataset, best, *ext["train"]], [m])
    metrics = root / "models" / "metrics.json"
    job("evaluate", lambda: evaluate(config, dataset, [str(m) for m in models], metrics),
        [cfg["train"], dataset, *models], [metrics])
    shards = [root / "library" / f"shard{k}.parquet" for k in range(config["library"]["n_shards"])]
    for k, s in enumerate(shards):
        job(f"score shard{k}", lambda k=k, s=s: score(config, dataset, [str(m) for m in models], k, s),
            [cfg["score"], dataset, *models, *ext["score"]], [s])
    scores = root / "library" / "scores.parquet"
    job("gather", lambda: gather([str(s) for s in shards], scores), shards, [scores])
    # the rule's outputs: the plate map always, the picks' genes with data.wild_type_dna
    ranking = [root / "ranking.csv", root / "ranking.fasta", root / "plate.csv",
               *([root / "ranking_dna.fasta"] if wild_type_dna(config) else [])]
    job("rank", lambda: rank(config, scores, *ranking[:2], dataset=dataset, plate=ranking[2],
                             dna=ranking[3] if len(ranking) > 3 else None),
        [cfg["rank"], scores, dataset, *ext["rank"]], ranking)

    from lyra.campaign.manifest import write_manifest
    from lyra.report.report import FIGURES, TABLES, make_report

    report_dir, manifest = root / "report", root / "manifest.json"

    def report() -> None:
        make_report(root, report_dir, config)
        write_manifest(root, config, manifest, stage_times=timings, config_files=config_files)

    job("report", report, [*cfg.values(), dataset, metrics, *models, best, trials, scores, *ranking, *config_files],
        [*(report_dir / f for f in [*FIGURES.values(), *TABLES.values()]), manifest])
    if timings:
        log.info("stage wall times (s): %s", timings)
    return root


__all__ = [
    "LyraError",
    "data_config",
    "evaluate",
    "gather",
    "is_stale",
    "preprocess",
    "rank",
    "round_files",
    "run_campaign",
    "score",
    "stage_inputs",
    "study_name",
    "train",
    "training_seed",
    "tune_collect",
    "tune_worker",
    "wild_type_dna",
]
