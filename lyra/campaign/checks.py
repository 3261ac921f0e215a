"""What is checked before any job runs, and the files outside results/ that each stage reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lyra.io import resolve_path
from lyra.campaign.rounds import round_files
from lyra.campaign.settings import (data_config, library_section, prior_msa, prior_section, rank_reads_ridge,
                                    ridge_baseline, ridge_unavailable, wild_type_dna)
from lyra.campaign.stages import GENE_NEEDS_WILD_TYPE, NO_WILD_TYPE, preprocess
from lyra.errors import ConfigError


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
        "simulate": [*simulation_alignments(config), *initial_plate_file(config)],
    }


def simulation_alignments(config: Mapping[str, Any]) -> list[str]:
    """The alignments the retrospective campaigns read: the campaign's prior.msa and every strategy's own."""
    if not config.get("simulate"):
        return [msa] if (msa := prior_msa(config)) else []
    from lyra.campaign.simulate import strategies, strategy_config

    found = (prior_msa(strategy_config(config, name)) for name in strategies(config))
    return sorted({msa for msa in found if msa})


def initial_plate_file(config: Mapping[str, Any]) -> list[str]:
    """The retrospective campaigns' first-plate file, when simulate.initial.method is file."""
    initial = (config.get("simulate") or {}).get("initial") or {}
    if initial.get("method") == "file" and initial.get("path"):
        return [resolve_path(initial["path"], config.get("_base_dir", "."))]
    return []


def check_campaign(config: Mapping[str, Any]) -> None:
    """Fail fast, before any job runs, on what the schema cannot see: missing files, inconsistent split
    settings, a library over its size cap."""
    from lyra.data.config import DataConfig, SplitConfig
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
        raise ConfigError(NO_WILD_TYPE.format(kind=lib.kind))
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
    needs_ridge = rank_reads_ridge(config["rank"])
    if needs_ridge and not ridge_baseline(config):
        data = config["data"]
        raise ConfigError(f"{needs_ridge}, but {ridge_unavailable(data.get('task', 'regression'), data['target_column'])}")


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
        raise ConfigError(GENE_NEEDS_WILD_TYPE)
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
        measured = measured_sequences(preprocess(config, Path(tmp) / "measured.parquet"))
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
