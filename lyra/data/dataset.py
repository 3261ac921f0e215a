"""From a measurement table to a validated, split ``dataset.parquet``, and reading it back.

``prepare_dataset`` reads a CSV / TSV / Parquet / FASTA file or a sheet of an Excel workbook
(lyra.data.readers), validates and normalises every row (lyra.data.validation: sequences upper case,
mutation strings canonical), merges replicate measurements of the same sequence (lyra.data.aggregation),
drops missing targets, assigns each unique variant to train / valid / test (lyra.data.splits), and writes
``dataset.parquet`` (explicit schema, metadata under the key ``lyra``) and ``report.md``. Every problem is a
one-line ``DataError`` naming the file and the 1-based row (the line a user sees in an editor: the header
is line 1; in a workbook, the sheet and the row number Excel shows) or a ``ConfigError`` naming the config
key. Nothing is written unless everything succeeded. ``load_dataset`` reads the file back as a ``Dataset``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lyra.data.aggregation import aggregate, check_ids
from lyra.data.alphabet import get_alphabet
from lyra.data.config import SPLITS, DataConfig, SplitConfig
from lyra.data.readers import input_path, one_line
from lyra.data.splits import assign_splits
from lyra.data.validation import count_substitutions, mutation_columns, read_measurements
from lyra.data.variants import read_wild_type
from lyra.errors import ConfigError, DataError
from lyra.io import atomic_path, sha256_file

log = logging.getLogger("lyra.data.dataset")


# --------------------------------------------------------------------------------------------- prepare


@dataclass
class _Prepared:
    frame: pd.DataFrame  # the output rows, before conversion to Arrow
    targets: list[str]
    classes: list[str] | None
    wild_type: str | None
    counts: dict
    diff: np.ndarray | None  # (N, L) bool: substituted positions, for rows of the wild type's length
    split_info: dict
    sources: list[dict]  # path, sha256 and rows of each input file (the data, then each round)


def prepare_dataset(
    data_cfg: DataConfig | dict,
    split_cfg: SplitConfig | dict | None,
    out: str | Path,
    base_dir: str | Path | None = None,
    rounds: list[str | Path] | None = None,
    report: str | Path | None = None,
) -> Path:
    """Validate, normalise, aggregate and split a measurement table; write it to `out` (Parquet) and,
    given `report`, a Markdown summary of what was read, dropped, merged and split there.

    `rounds` are later measurement files of the campaign (same columns as the data file): their rows are
    validated the same way and appended; variants they add go to the training portion (see
    lyra.data.splits). Relative paths are resolved against `base_dir` (the working directory when a
    config runs through `lyra` or Snakemake).
    Returns `out`. Nothing is written if any row or key is bad.
    """
    data_cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_dict(data_cfg)
    split_cfg = split_cfg if isinstance(split_cfg, SplitConfig) else SplitConfig.from_dict(split_cfg)
    if not data_cfg.targets:
        raise ConfigError("data.target_column: required (the measured value, or a list of them)")
    path = input_path(data_cfg.path, base_dir)
    if path.is_dir():
        raise ConfigError(f"data.path: {path} is a directory; give the measurement file")
    if not path.is_file():
        raise ConfigError(f"data.path: no such file: {path}")
    round_paths = [input_path(r, base_dir) for r in rounds or []]
    for r in round_paths:
        if not r.is_file():
            raise ConfigError(f"rounds: no such measurement file: {r}")

    prepared = _prepare(data_cfg, split_cfg, [path] + round_paths, base_dir)
    meta = {
        "format_version": 1,
        "alphabet": get_alphabet(data_cfg.alphabet).name,
        "wild_type": prepared.wild_type,
        "first_position": data_cfg.first_position,
        "targets": prepared.targets,
        "task": data_cfg.task,
        "classes": prepared.classes,
        "source_path": prepared.sources[0]["path"],
        "source_sha256": prepared.sources[0]["sha256"],
        "sources": prepared.sources,
        "data_config": dataclasses.asdict(data_cfg),
        "split_config": dataclasses.asdict(split_cfg),
        "split_info": prepared.split_info,
        "counts": prepared.counts,
    }
    table = _to_arrow(prepared, data_cfg, meta)
    summary = _report(prepared, data_cfg, split_cfg, meta)

    out = Path(out)
    with contextlib.ExitStack() as stack:  # both files, or neither
        tmp_parquet = stack.enter_context(atomic_path(out))
        pq.write_table(table, tmp_parquet)
        if report is not None:
            stack.enter_context(atomic_path(report)).write_text(summary)
    log.info("wrote %s (%d variants)", out, len(prepared.frame))
    return out


def _prepare(cfg: DataConfig, split_cfg: SplitConfig, paths: list[Path], base_dir) -> _Prepared:
    alphabet = get_alphabet(cfg.alphabet)
    wild_type = None
    if cfg.wild_type is not None:
        try:
            wild_type = read_wild_type(cfg.wild_type, base_dir)
            alphabet.encode(wild_type, name="wild type")
        except ValueError as e:
            raise ConfigError(f"data.wild_type: {e}") from None

    # ---- every file's rows, validated and normalised (errors name that file)
    counts: dict[str, Any] = {}
    parts, sources, wheres = [], [], []
    for src, path in enumerate(paths):
        rows, c = read_measurements(path, cfg, wild_type, split_cfg=split_cfg, src=src, base_dir=base_dir)
        parts.append(rows)
        wheres.append(rows.attrs["where"])
        _add_counts(counts, c)
        sources.append({"path": str(path.resolve()), "sha256": sha256_file(path), "rows_read": c["rows_read"]})
    rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if len(rows) == 0:
        raise DataError("no rows left after dropping missing targets and excluded rows", wheres[0])

    # ---- e.g. only the singles and doubles of a landscape measured so far; before merging replicates,
    # so a later round's measurement of a dropped variant is not averaged with the dropped row
    if cfg.max_mutations is not None:
        if split_cfg.method == "index_files":
            raise ConfigError("data.max_mutations: cannot be combined with split.method index_files (row numbers)")
        keep = (rows["_src"].to_numpy() > 0) | (count_substitutions(rows["sequence"], wild_type) <= cfg.max_mutations)
        counts["variants_dropped_above_max_mutations"] = int((~keep).sum())
        if not keep.any():
            raise DataError(f"no variant has at most data.max_mutations = {cfg.max_mutations} mutations", wheres[0])
        rows = rows.loc[keep].reset_index(drop=True)

    # ---- duplicate ids must name one sequence; replicates of a sequence are merged
    if "variant_id" in rows.columns:
        check_ids(rows, wheres)
    rows, merged = aggregate(rows, cfg, wheres)
    counts["replicate_rows_merged"] = merged

    # ---- canonical mutations against the wild type
    frame = rows.reset_index(drop=True)
    frame["mutations"] = pd.Series([None] * len(frame), dtype=object)
    frame["n_mutations"] = pd.array([pd.NA] * len(frame), dtype="Int32")
    diff = None
    if wild_type is not None:
        diff, on_wt = mutation_columns(frame["sequence"].tolist(), wild_type, cfg.first_position, frame)
        counts["variants_unequal_length_no_mutations"] = int((~on_wt).sum())
    if "variant_id" not in frame.columns:  # the canonical mutation string, else seq<k> for data row k
        frame["variant_id"] = [
            ("WT" if m == "" else m) if isinstance(m, str) else f"seq{rec + 1}"
            for m, rec in zip(frame["mutations"].tolist(), frame["_record"].tolist())
        ]
        if not frame["variant_id"].is_unique:  # seq<k> of a round file can repeat one of the data file
            frame["variant_id"] = [
                v if isinstance(m, str) else f"r{s}.{v}" if s else v
                for v, m, s in zip(frame["variant_id"], frame["mutations"], frame["_src"])
            ]

    classes = sorted(set(frame[cfg.targets[0]])) if cfg.task == "classification" else None
    split, fold, split_info = assign_splits(frame, split_cfg, cfg, diff, wild_type)
    frame["split"] = split
    frame["fold"] = fold.astype(np.int32)
    dropped = split == "drop"
    if dropped.any():
        frame = frame.loc[~dropped].reset_index(drop=True)
        diff = diff[~dropped] if diff is not None else None
    counts.update(split_info.pop("counts", {}))
    if len(paths) > 1:
        counts["variants_only_in_rounds"] = int((frame["_src"] > 0).sum())
    counts["variants"] = len(frame)
    counts["per_split"] = {s: int((frame["split"] == s).sum()) for s in SPLITS}
    if counts["per_split"]["train"] == 0:
        raise ConfigError(f"split.method: the {split_cfg.method} split left no training variants")
    log.info("prepared %d variants from %d rows: %s", len(frame), counts["rows_read"], counts["per_split"])
    return _Prepared(frame, cfg.targets, classes, wild_type, counts, diff, split_info, sources)


def _add_counts(total: dict, part: dict) -> None:
    """Add the counts of one file to the totals (nested dicts, e.g. missing_target, add per key)."""
    for k, v in part.items():
        if isinstance(v, dict):
            _add_counts(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0) + v


# --------------------------------------------------------------------------------------------- writing


def _to_arrow(p: _Prepared, cfg: DataConfig, meta: dict) -> pa.Table:
    f = p.frame
    target_type = pa.float64() if cfg.task == "regression" else pa.string()
    fields = [
        pa.field("variant_id", pa.string(), nullable=False),
        pa.field("sequence", pa.string(), nullable=False),
        pa.field("mutations", pa.string()),
        pa.field("n_mutations", pa.int32()),
        *[pa.field(t, target_type, nullable=False) for t in p.targets],
        pa.field("n_replicates", pa.int32(), nullable=False),
        *([pa.field("count", pa.int64(), nullable=False)] if "count" in f.columns else []),
        pa.field("split", pa.string(), nullable=False),
        pa.field("fold", pa.int32(), nullable=False),
    ]
    schema = pa.schema(fields, metadata={b"lyra": json.dumps(meta, sort_keys=True, default=str).encode()})
    arrays = []
    for fld in fields:
        col = f[fld.name]
        if fld.name == "n_mutations":
            arrays.append(pa.array(col.to_numpy(dtype=object, na_value=None), type=pa.int32()))
        elif pa.types.is_string(fld.type):
            values = [None if v is None or v != v else v for v in col.tolist()]  # v != v: NaN
            arrays.append(pa.array(values, type=pa.string()))
        else:
            arrays.append(pa.array(col.to_numpy(), type=fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _report(p: _Prepared, cfg: DataConfig, split_cfg: SplitConfig, meta: dict) -> str:
    f, c = p.frame, p.counts
    lines = [
        "# Dataset report",
        "",
        f"- source: `{meta['source_path']}` (sha256 `{meta['source_sha256'][:16]}`)",
        f"- alphabet: {meta['alphabet']}; task: {cfg.task}; targets: {', '.join(p.targets)}",
        f"- wild type: {len(p.wild_type)} residues, first position {cfg.first_position}" if p.wild_type
        else "- wild type: none given",
        f"- split: {split_cfg.method}"
        + "".join(f"; {k}: {v}" for k, v in p.split_info.items() if k != "method"),
        "",
        "## Rows",
        "",
        "| step | rows |",
        "|---|---|",
        f"| rows read | {c['rows_read']} |",
    ]
    # (what, rows, shown even when zero)
    steps = [
        ("blank lines skipped", c.get("blank_lines_skipped", 0), False),
        ("rows dropped: nonsense variants (data.drop_variants)", c.get("rows_dropped_nonsense", 0), False),
        ("rows dropped: synonymous variants (data.drop_variants)", c.get("rows_dropped_synonymous", 0), False),
        ("rows of synonymous mutations only, read as the wild type", c.get("synonymous_rows_read_as_wild_type", 0),
         False),
        ("lowercase sequences upper-cased", c.get("lowercase_sequences_uppercased", 0), True),
        ("rows excluded by the split (label 'exclude', or in no index file)", c.get("rows_excluded_by_split", 0), False),
        *[(f"rows with missing `{t}`", v, True) for t, v in c["missing_target"].items()],
        ("rows dropped for a missing target", c["rows_dropped_missing_target"], True),
        ("rows dropped below min_count", c.get("rows_dropped_below_min_count", 0), False),
        ("replicate rows merged into an earlier row (same sequence)", c["replicate_rows_merged"], True),
        ("rows dropped: more mutations than data.max_mutations", c.get("variants_dropped_above_max_mutations", 0),
         False),
        ("variants of another length than the wild type (no mutation string)",
         c.get("variants_unequal_length_no_mutations", 0), False),
        ("variants only measured in later rounds (placed in training)", c.get("variants_only_in_rounds", 0), False),
        ("variants dropped: mutate both held-out and training positions", c.get("variants_dropped_mixed_positions", 0), False),
    ]
    lines += [f"| {name} | {v} |" for name, v, always in steps if v or always]
    lines += [f"| **variants written** | **{c['variants']}** |", "", "## Splits", "", "| split | variants | share |", "|---|---|---|"]
    for s in SPLITS:
        k = c["per_split"][s]
        lines.append(f"| {s} | {k} | {k / max(len(f), 1):.1%} |")

    lines += ["", "## Targets", ""]
    if cfg.task == "regression":
        lines += ["| target | split | n | min | median | mean | max |", "|---|---|---|---|---|---|---|"]
        for t in p.targets:
            for s in SPLITS:
                v = f.loc[f["split"] == s, t].to_numpy(dtype=np.float64)
                if v.size:
                    lines.append(
                        f"| {t} | {s} | {v.size} | {v.min():.4g} | {np.median(v):.4g} | {v.mean():.4g} | {v.max():.4g} |"
                    )
    else:
        t = p.targets[0]
        lines += ["| class | " + " | ".join(SPLITS) + " |", "|---|---|---|---|"]
        for cls in p.classes:
            lines.append(f"| {cls} | " + " | ".join(str(int(((f[t] == cls) & (f['split'] == s)).sum())) for s in SPLITS) + " |")
    if (f["n_replicates"] > 1).any():
        r = f["n_replicates"]
        lines += ["", f"Replicates: {int((r > 1).sum())} variants measured more than once (max {int(r.max())})."]

    if p.diff is not None and p.wild_type is not None:
        nm = f["n_mutations"]
        lines += ["", "## Mutations per variant", "", "| n_mutations | " + " | ".join(SPLITS) + " |", "|---|---|---|---|"]
        for k in sorted(int(x) for x in nm.dropna().unique()):
            lines.append(f"| {k} | " + " | ".join(str(int(((nm == k) & (f['split'] == s)).sum())) for s in SPLITS) + " |")
        lines += ["", "## Mutation coverage per position", "",
                  "Variants carrying a substitution at each mutated position, and the distinct residues seen there.", "",
                  "| position | wt | " + " | ".join(SPLITS) + " | residues |", "|---|---|---|---|---|---|"]
        seq_arr = f["sequence"].tolist()
        by_split = {s: (f["split"] == s).to_numpy() for s in SPLITS}
        for j in np.flatnonzero(p.diff.any(axis=0)):
            col = p.diff[:, j]
            residues = sorted({seq_arr[i][j] for i in np.flatnonzero(col)})
            per = " | ".join(str(int((col & by_split[s]).sum())) for s in SPLITS)
            lines.append(f"| {j + cfg.first_position} | {p.wild_type[j]} | {per} | {''.join(residues)} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- loading


@dataclass
class Dataset:
    frame: pd.DataFrame
    meta: dict

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.frame.loc[self.frame["split"] == name].reset_index(drop=True)

    @property
    def targets(self) -> list[str]:
        return list(self.meta["targets"])

    @property
    def alphabet(self) -> str:
        return self.meta["alphabet"]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    @property
    def wild_type(self) -> str | None:
        return self.meta.get("wild_type")

    def target_array(self, split: str | None = None) -> np.ndarray:
        """(N, T) float64 targets (regression) or (N,) int64 class indices (classification)."""
        f = self.frame if split is None else self.split(split)
        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes)}
            return np.array([index[v] for v in f[self.targets[0]]], dtype=np.int64)
        return f[self.targets].to_numpy(dtype=np.float64)


def _lyra_meta(schema: pa.Schema, path: Path) -> dict:
    raw = (schema.metadata or {}).get(b"lyra")
    if raw is None:
        raise DataError("not a lyra dataset (no 'lyra' metadata); prepare it with `lyra preprocess`", str(path))
    return json.loads(raw)


def _read_parquet(path: Path, read: Callable[[Path], Any]) -> Any:
    if not path.is_file():
        raise DataError("dataset file not found (run `lyra preprocess` first)", str(path))
    try:
        return read(path)
    except Exception as e:
        raise DataError(f"cannot read as Parquet: {one_line(e)}", str(path)) from None


def load_dataset(path: str | Path) -> Dataset:
    """Read a ``dataset.parquet`` written by ``prepare_dataset``."""
    table = _read_parquet(Path(path), pq.read_table)
    return Dataset(frame=table.to_pandas(), meta=_lyra_meta(table.schema, Path(path)))


def load_dataset_meta(path: str | Path) -> dict:
    """Only the metadata of a ``dataset.parquet`` (task, alphabet, wild type...): reads the footer, not the rows."""
    return _lyra_meta(_read_parquet(Path(path), pq.read_schema), Path(path))
