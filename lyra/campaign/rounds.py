"""Campaign rounds: what the lab measured after each ranking, and a stand-in lab for replays.

A campaign with `rounds.dir: rounds/<campaign>` keeps one folder per round:

    rounds/<campaign>/1/ranking.csv        what was ordered (the ranking that round came from)
    rounds/<campaign>/1/measurements.csv   what the lab measured: the data file's columns
                                           (or measurements.xlsx, the workbook the lab sent)

The preprocess stage appends every round's measurements to the training data, so the next run
retrains on them, and the library excludes them (they are measured now).

`simulate_round` plays the lab on a landscape that is already fully measured (a retrospective
campaign, or the demo): it looks every pick up in the complete data file and writes the measurements
the lab would have sent. Picks the landscape lacks are left out and counted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from lyra.io import resolve_path
from lyra.campaign.layout import RANKING, Layout
from lyra.errors import ConfigError, DataError
from lyra.io import atomic_path

log = logging.getLogger("lyra.campaign.rounds")


def rounds_root(config: Mapping[str, Any]) -> Path | None:
    rdir = (config.get("rounds") or {}).get("dir")
    return Path(resolve_path(rdir, config.get("_base_dir", "."))) if rdir else None


ROUND_FILES = ("measurements.csv", "measurements.xlsx", "measurements.xlsm")
MEASUREMENTS = ROUND_FILES[0]  # what simulate_round writes


def round_file(folder: Path) -> Path | None:
    """The measurements file of one round's folder, or None while the lab has not sent it."""
    found = [folder / name for name in ROUND_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise ConfigError(f"{folder}: holds {' and '.join(p.name for p in found)}; keep one measurements file")
    return found[0] if found else None


def completed_rounds(root: Path) -> list[int]:
    """Numbers n of the rounds with a measurements file (ROUND_FILES), ascending."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.is_dir() and p.name.isdigit() and round_file(p) is not None)


def round_files(config: Mapping[str, Any]) -> list[str]:
    """rounds/<n>/measurements.csv (or .xlsx) files, in round order (none while the folder does not exist yet)."""
    root = rounds_root(config)
    if root is None:
        return []
    if root.exists() and not root.is_dir():
        raise ConfigError(f"config key 'rounds.dir': {root} is not a directory")
    if not root.exists():
        log.info("rounds.dir %s does not exist yet: no measured rounds (it appears with the first)", root)
    return [str(round_file(root / str(n))) for n in completed_rounds(root)]


def simulate_round(config: Mapping[str, Any], results: str | Path = "results", truth: str | Path | None = None,
                   round_number: int | None = None) -> Path:
    """Measure the campaign's current ranking in a complete landscape; return the measurements file.

    `truth` is a fully measured data file in the data section's format (default: `data.path` itself,
    read whole, without `data.max_mutations`). The round number defaults to the next one.
    """
    import pandas as pd

    from lyra.campaign.settings import data_config
    from lyra.data.dataset import load_dataset, prepare_dataset

    root = rounds_root(config)
    if root is None:
        raise ConfigError("rounds.dir: required to record a round (e.g. rounds/<campaign>)")
    campaign = Layout.of(config, results)
    ranking_csv = campaign.ranking
    if not ranking_csv.is_file():
        raise ConfigError(f"{ranking_csv}: no ranking yet; run the campaign first")
    done = completed_rounds(root)
    n = round_number if round_number is not None else (done[-1] + 1 if done else 1)
    if n < 1:
        raise ConfigError(f"round: must be >= 1, got {n}")
    out_dir = root / str(n)
    if round_file(out_dir) is not None:
        raise ConfigError(f"{round_file(out_dir)}: round {n} is already recorded; delete it to redo it")

    data = data_config(config)
    data["max_mutations"] = None  # the whole landscape
    if truth is not None:
        data["path"] = str(truth)
    with tempfile.TemporaryDirectory(prefix="lyra-truth-") as tmp:
        landscape = load_dataset(prepare_dataset(data, {"method": "random"}, Path(tmp) / "landscape.parquet")).frame
    value_of = landscape.set_index("sequence")

    picks = pd.read_csv(ranking_csv)
    for col in ("variant_id", "sequence"):
        if col not in picks.columns:
            raise DataError(f"column {col!r} missing: not a lyra ranking", str(ranking_csv))
    found = picks["sequence"].isin(value_of.index).to_numpy()
    if not found.any():
        raise DataError(f"none of the {len(picks)} picks is in the landscape {data['path']}", str(ranking_csv))
    hits = picks.loc[found]
    rows = pd.DataFrame(index=range(len(hits)))
    if data.get("id_column"):
        rows[data["id_column"]] = hits["variant_id"].to_numpy()
    if data.get("mutations_column"):
        if "mutations" not in hits.columns or hits["mutations"].isna().any():
            raise DataError("a pick has no mutation string; give the data file a sequence_column", str(ranking_csv))
        rows[data["mutations_column"]] = hits["mutations"].replace("", "WT").to_numpy()
    if data.get("sequence_column") or not data.get("mutations_column"):
        rows[data.get("sequence_column") or "sequence"] = hits["sequence"].to_numpy()
    targets = data["target_column"] if isinstance(data["target_column"], list) else [data["target_column"]]
    for t in targets:
        rows[t] = value_of.loc[hits["sequence"], t].to_numpy()

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / RANKING) as tmp_ranking:
        shutil.copyfile(ranking_csv, tmp_ranking)
    with atomic_path(out_dir / MEASUREMENTS) as tmp_csv:
        rows.to_csv(tmp_csv, index=False)
    missing = int((~found).sum())
    first = targets[0]
    log.info("round %d: %d of %d picks measured (%d not in the landscape); %s of the picks: best %.4g, mean %.4g",
             n, len(rows), len(picks), missing, first, rows[first].max(), rows[first].mean())
    dataset = campaign.dataset
    if dataset.is_file():  # what the picks were chosen from: the landscape minus what was measured
        measured = set(pd.read_parquet(dataset, columns=["sequence"])["sequence"])
        pool = landscape.loc[~landscape["sequence"].isin(measured), first]
        if len(pool):
            log.info("for comparison, the %d unmeasured landscape variants: mean %.4g, best %.4g; the best %d of "
                     "them: mean %.4g", len(pool), pool.mean(), pool.max(), len(rows), pool.nlargest(len(rows)).mean())
    return out_dir / MEASUREMENTS
