"""Checking and normalising the rows of one measurement file.

``read_measurements`` turns a file into validated rows: sequences (from a sequence column, from mutations
against the wild type, or both, checked to agree), upper-cased and stripped of padding, residues and
lengths checked, nonsense and synonymous rows dropped when data.drop_variants says so, targets and read
counts parsed, and the split labels that belong to input rows attached. Every refusal is a one-line error
naming the file and row. ``mutation_columns`` later gives each variant its canonical mutation string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lyra.data.alphabet import Alphabet, get_alphabet
from lyra.data.config import DataConfig, SplitConfig
from lyra.data.readers import RowErrors, column_text, detect_format, is_missing, read_table
from lyra.data.splits import column_labels, index_file_labels
from lyra.data.variants import MutationParser, is_wild_type_token
from lyra.errors import ConfigError, DataError

MAX_COUNT = 1e15  # a read count above this is a unit or parsing mistake, not a measurement


def read_measurements(
    path: Path, cfg: DataConfig, wild_type: str | None, *, split_cfg: SplitConfig | None = None, src: int = 0,
    base_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict]:
    """One file -> validated rows (sequence, targets, ids, counts, split label) and what was done to them.

    `wild_type` is the sequence itself (data.wild_type read). `src` 0 is the data file; later ones are
    campaign rounds (no split column or index files of their own). Without `split_cfg` (a library file)
    no split labels are read. The rows keep `_src`, `_line` (the row a user sees) and `_record` (the
    0-based data row), for later errors and ids.
    """
    split_cfg = split_cfg if split_cfg is not None else SplitConfig()
    alphabet = get_alphabet(cfg.alphabet)
    fmt = detect_format(path, cfg.format)
    raw = read_table(path, fmt, cfg.sheet)
    where = raw.attrs.get("where", str(path))  # a workbook's errors also name the sheet
    n = len(raw)
    ctx = RowErrors(where, raw.index.to_numpy())
    counts: dict[str, Any] = {"rows_read": n, "blank_lines_skipped": raw.attrs.get("blank_lines", 0)}

    seq_col, id_col = cfg.sequence_column, cfg.id_column
    target_source = {t: t for t in cfg.targets}
    if fmt == "fasta":
        seq_col = seq_col or "sequence"
        id_col = id_col or "id"
        if cfg.fasta_label_key is not None:  # the header key holding the (single) label
            target_source[cfg.targets[0]] = cfg.fasta_label_key
    if seq_col is None and cfg.mutations_column is None:
        raise ConfigError("data.sequence_column: set data.sequence_column or data.mutations_column")
    use_split_column = split_cfg.method == "column" and src == 0
    keys = [
        ("data.sequence_column", seq_col), ("data.mutations_column", cfg.mutations_column),
        ("data.id_column", id_col), ("data.count_column", cfg.count_column),
    ] + [("data.fasta_label_key" if s != t else "data.target_column", s) for t, s in target_source.items()]
    if use_split_column:
        keys += [("split.column", split_cfg.column), ("split.valid_column", split_cfg.valid_column)]
    for key, col in keys:
        if col is not None and col not in raw.columns:
            header_row = {"csv": 1, "tsv": 1, "fasta": int(raw.index[0]),
                          "excel": raw.attrs.get("header_row")}.get(fmt)  # Parquet has no lines
            raise DataError(f"no column {col!r} ({key}); the columns are: {', '.join(map(repr, raw.columns))}",
                            where, header_row)

    # ---- sequences: from mutations, from a sequence column, or both (then they must agree)
    seqs: list[str] | None = None
    mut_text: list[str] | None = None
    given: list[str] | None = None
    if cfg.mutations_column is not None:
        mut_text = column_text(raw[cfg.mutations_column])
        seqs = _sequences_from_mutations(mut_text, wild_type, cfg, ctx)
    if seq_col is not None:
        given = column_text(raw[seq_col])
        empty = [i for i, s in enumerate(given) if not s]
        if empty:
            raise ctx.error(empty[0], f"column {seq_col!r}: empty sequence")

    # ---- nonsense and synonymous rows: dropped here when the config says so, before the residue checks
    # below would refuse a stop; the file's row numbers (record) stay those of the whole file
    record = np.arange(n)
    synonymous = _synonymous_rows(mut_text, seqs, wild_type, n)
    drop = np.zeros(n, dtype=bool)
    for kind, rows_of_kind in (("nonsense", _nonsense_rows(seqs, given, n)), ("synonymous", synonymous)):
        if kind in cfg.drop_variants:
            counts[f"rows_dropped_{kind}"] = int(rows_of_kind.sum())
            drop |= rows_of_kind
    if "synonymous" not in cfg.drop_variants and synonymous.any():
        counts["synonymous_rows_read_as_wild_type"] = int(synonymous.sum())
    if drop.any():
        if drop.all():
            raise ctx.error(0, f"all {n} rows are variants that data.drop_variants drops "
                               f"({', '.join(cfg.drop_variants)}): nothing is left")
        record = np.flatnonzero(~drop)
        raw = raw.iloc[record]
        ctx = RowErrors(where, raw.index.to_numpy())
        seqs, mut_text, given = (None if v is None else [v[i] for i in record] for v in (seqs, mut_text, given))
        n = len(raw)

    widths = None  # the padded widths, when data.padding strips the sequences
    if given is not None:
        lower = pd.Series(given, dtype=object).str.contains("[a-z]", regex=True).to_numpy(dtype=bool)
        if cfg.uppercase:
            counts["lowercase_sequences_uppercased"] = int(lower.sum())
            if lower.any():
                given = [s.upper() for s in given]
        if cfg.padding is not None:
            widths = np.fromiter((len(s) for s in given), dtype=np.int64, count=len(given))
            given = _strip_padding(given, cfg.padding, seq_col, ctx)
        if seqs is not None:
            for i, (a, b) in enumerate(zip(seqs, given)):
                if a != b:
                    raise ctx.error(
                        i,
                        f"mutations {mut_text[i]!r} applied to the wild type do not give the sequence in column "
                        f"{seq_col!r} ({_first_difference(a, b, cfg.first_position)})",
                    )
        seqs = given
    _check_residues(seqs, alphabet, cfg, ctx, mut_text)
    _check_lengths(seqs, wild_type, cfg, ctx, widths)

    # ---- targets, ids, counts
    rows = pd.DataFrame({"sequence": seqs, "_src": src, "_line": raw.index.to_numpy(), "_record": record})
    missing = np.zeros(n, dtype=bool)
    counts["missing_target"] = {}
    for t, col in target_source.items():
        if cfg.task == "regression":
            v = _numeric(raw[col], col, ctx)
            m = np.isnan(v)
        else:
            labels = column_text(raw[col])
            m = is_missing(labels)
            v = np.array(labels, dtype=object)
        rows[t] = v
        counts["missing_target"][t] = int(m.sum())
        missing |= m
    if id_col is not None:
        ids = column_text(raw[id_col])
        blank = [i for i, v in enumerate(ids) if not v]
        if blank:
            raise ctx.error(blank[0], f"column {id_col!r}: empty variant id")
        rows["variant_id"] = ids
    if cfg.count_column is not None:
        col = cfg.count_column
        c = _numeric(raw[col], col, ctx, what="count")
        bad = np.flatnonzero(np.isnan(c) | (c < 0) | (c != np.round(c)) | (c > MAX_COUNT))
        if bad.size:
            i = int(bad[0])
            shown = "missing" if np.isnan(c[i]) else f"{c[i]:g}"
            raise ctx.error(i, f"column {col!r}: count {shown} is not a whole number in 0..{MAX_COUNT:.0e}")
        rows["count"] = c.astype(np.int64)

    # ---- split labels that belong to input rows are fixed before replicates merge
    keep = np.ones(n, dtype=bool)
    if split_cfg.method in ("column", "index_files"):
        if src == 0:
            labels = (column_labels(raw, split_cfg, ctx) if use_split_column
                      else index_file_labels(counts["rows_read"], split_cfg, base_dir)[record])
            excluded = labels == "exclude"
            counts["rows_excluded_by_split"] = int(excluded.sum())
            keep &= ~excluded
        else:
            labels = np.full(n, None, dtype=object)  # round rows: placed by lyra.data.splits
        rows["_label"] = labels
    counts["rows_dropped_missing_target"] = int((missing & keep).sum())
    if cfg.count_column is not None and cfg.min_count > 0:
        keep &= ~missing
        low = keep & (rows["count"].to_numpy() < cfg.min_count)
        counts["rows_dropped_below_min_count"] = int(low.sum())
        keep &= ~low
    keep &= ~missing
    if n and not keep.any():
        by_kind = int(drop.sum())
        raise ctx.error(0, f"all {counts['rows_read']} rows of the file were dropped ({int(missing.sum())} with a "
                           f"missing target, {counts.get('rows_excluded_by_split', 0)} excluded by the split, "
                           f"{counts.get('rows_dropped_below_min_count', 0)} below data.min_count"
                           + (f", {by_kind} by data.drop_variants" if by_kind else "") + "): nothing is left")
    rows = rows.loc[keep]
    rows.attrs["where"] = where  # for errors about rows of several files (ids, replicates)
    return rows, counts


def _nonsense_rows(seqs: list[str] | None, given: list[str] | None, n: int) -> np.ndarray:
    """(n,) bool: rows with a stop '*', from a mutation (Q97*, also beside others) or in the sequence column."""
    out = np.zeros(n, dtype=bool)
    for values in (seqs, given):
        if values is not None:
            out |= pd.Series(values, dtype=object).str.contains("*", regex=False).to_numpy(dtype=bool)
    return out


def _synonymous_rows(mut_text: list[str] | None, seqs: list[str] | None, wild_type: str | None, n: int) -> np.ndarray:
    """(n,) bool: rows that name mutations (A24A) yet spell the wild type, i.e. every mutation keeps its residue.

    A missense row with an extra silent change (A2G:C5C) is that missense variant, not a synonymous one.
    """
    if mut_text is None or seqs is None or wild_type is None:
        return np.zeros(n, dtype=bool)
    return np.fromiter((s == wild_type and not is_wild_type_token(t) for t, s in zip(mut_text, seqs)), dtype=bool,
                       count=n)


def _sequences_from_mutations(text: list[str], wild_type: str, cfg: DataConfig, ctx: RowErrors) -> list[str]:
    parser = MutationParser(wild_type, cfg.first_position, cfg.mutation_separators)
    cache: dict[str, str] = {}
    out = []
    for i, t in enumerate(text):
        s = cache.get(t)
        if s is None:
            try:
                s = parser.sequence(t)
            except ValueError as e:
                raise ctx.error(i, f"column {cfg.mutations_column!r}: {e}") from None
            cache[t] = s
        out.append(s)
    return out


def _first_difference(a: str, b: str, first_position: int) -> str:
    if len(a) != len(b):
        return f"lengths {len(a)} and {len(b)}"
    i = next(k for k in range(len(a)) if a[k] != b[k])
    return f"position {i + first_position}: {a[i]} vs {b[i]}"


def _strip_padding(seqs: list[str], pad: str, column: str, ctx: RowErrors) -> list[str]:
    """`pad` stripped from both ends of every sequence; one left inside, or a row of padding only, is an error."""
    out = [s.strip(pad) for s in seqs]
    for i, s in enumerate(out):
        if not s:
            raise ctx.error(i, f"column {column!r}: the sequence is only padding ({pad!r}, data.padding)")
        if pad in s:
            k = len(seqs[i]) - len(seqs[i].lstrip(pad)) + s.index(pad)  # in the cell as written
            raise ctx.error(i, f"column {column!r}: padding letter {pad!r} (data.padding) at character {k + 1} of "
                               f"{seqs[i]!r} is inside the sequence; padding may only fill its ends")
    return out


def _check_residues(seqs: list[str], alphabet: Alphabet, cfg: DataConfig, ctx: RowErrors, mut_text: list[str] | None) -> None:
    allowed = alphabet.letters + alphabet.ambiguous
    bad = np.flatnonzero(
        pd.Series(seqs, dtype=object).str.contains(f"[^{re.escape(allowed)}]", regex=True).to_numpy(dtype=bool)
    )
    if not bad.size:
        return
    i = int(bad[0])
    s = seqs[i]
    k = next(k for k, ch in enumerate(s) if ch not in allowed)
    hint = ""
    if s[k] == "*":
        hint = "; the models take substitutions only: set data.drop_variants: [nonsense] to drop nonsense variants"
    elif s[k].islower():
        hint = "; set data.uppercase: true to accept lowercase residues"
    elif s[k] not in s.strip(s[k]):  # only at the ends: a filler that pads the sequences to one width
        hint = f"; if {s[k]!r} pads the sequences to one width, set data.padding: {s[k]} to strip it"
    elif s[k] in "-.":
        hint = "; insertions and deletions are not supported, remove gapped rows"
    source = f" (from mutations {mut_text[i]!r})" if mut_text is not None else ""
    raise ctx.error(
        i,
        f"{_residue_name(s[k])} at position {k + cfg.first_position} is not in the {alphabet.name} alphabet "
        f"({allowed}){source}{hint}",
    )


def _check_lengths(seqs: list[str], wild_type: str | None, cfg: DataConfig, ctx: RowErrors,
                   widths: np.ndarray | None = None) -> None:
    """data.equal_length: every sequence has one length; with data.padding, every row has one padded width
    (the stripped sequences are of variable length by design)."""
    if not cfg.equal_length:
        return
    if widths is not None:
        bad = np.flatnonzero(widths != widths[0])
        if bad.size:
            i = int(bad[0])
            raise ctx.error(
                i, f"padded width {widths[i]} differs from the first row's (row {ctx.lines[0]}) width {widths[0]} "
                   "(data.padding pads to one width; set data.equal_length: false to accept any width)"
            )
        return
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    ref = len(wild_type) if wild_type is not None else int(lengths[0])
    bad = np.flatnonzero(lengths != ref)
    if bad.size:
        i = int(bad[0])
        of = "the wild type's" if wild_type is not None else f"the first row's (row {ctx.lines[0]})"
        raise ctx.error(
            i, f"sequence length {lengths[i]} differs from {of} length {ref} "
               "(sequences must have equal length; set data.equal_length: false to pad and mask)"
        )


def _numeric(values: pd.Series, column: str, ctx: RowErrors, what: str = "target") -> np.ndarray:
    """Strings (or a numeric Parquet column) -> float64 with NaN for missing; text and +-inf are errors."""
    if isinstance(values, pd.Series) and pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = column_text(values)
        missing = is_missing(text)
        x = pd.to_numeric(pd.Series(text, dtype=object).where(~missing, None), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        bad = np.flatnonzero(np.isnan(x) & ~missing)
        if bad.size:
            i = int(bad[0])
            raise ctx.error(i, f"column {column!r}: {what} {text[i]!r} is not a number")
    inf = np.flatnonzero(np.isinf(x))
    if inf.size:
        i = int(inf[0])
        raise ctx.error(i, f"column {column!r}: {what} is infinite ({x[i]}); use a finite value or leave it empty")
    return x


def _residue_name(ch: str) -> str:
    return {"*": "stop codon '*'", "-": "gap '-'", ".": "gap '.'"}.get(ch, f"character {ch!r}")


def count_substitutions(seqs: pd.Series, wild_type: str) -> np.ndarray:
    """(n,) float: Hamming distance to the wild type; NaN for another length (compares as False)."""
    out = np.full(len(seqs), np.nan)
    lengths = seqs.str.len().to_numpy()
    same = lengths == len(wild_type)
    if same.any():
        arr = np.frombuffer("".join(seqs[same]).encode("ascii"), dtype=np.uint8).reshape(-1, len(wild_type))
        out[same] = (arr != np.frombuffer(wild_type.encode("ascii"), dtype=np.uint8)).sum(axis=1)
    return out



def mutation_columns(seqs: list[str], wild_type: str, first_position: int, frame: pd.DataFrame):
    """Fill frame.mutations / n_mutations for rows of the wild type's length; return the (N, L) diff mask."""
    L = len(wild_type)
    on_wt = np.fromiter((len(s) == L for s in seqs), dtype=bool, count=len(seqs))
    idx = np.flatnonzero(on_wt)
    wt = np.frombuffer(wild_type.encode("ascii"), dtype=np.uint8)
    arr = np.frombuffer("".join(seqs[i] for i in idx).encode("ascii"), dtype=np.uint8).reshape(len(idx), L)
    sub_diff = arr != wt  # (n, L)
    diff = np.zeros((len(seqs), L), dtype=bool)
    diff[idx] = sub_diff
    r, c = np.nonzero(sub_diff)  # row-major: grouped by row, positions ascending
    tokens = [f"{wild_type[j]}{j + first_position}{chr(arr[i, j])}" for i, j in zip(r.tolist(), c.tolist())]
    n_mut = sub_diff.sum(axis=1)
    ends = np.cumsum(n_mut).tolist()
    starts = [0] + ends[:-1]
    mutations = np.full(len(seqs), None, dtype=object)
    mutations[idx] = [":".join(tokens[a:b]) for a, b in zip(starts, ends)]
    n_mutations = pd.array([pd.NA] * len(seqs), dtype="Int32")
    n_mutations[idx] = n_mut.astype(np.int32)
    frame["mutations"] = pd.Series(mutations, index=frame.index, dtype=object)  # object: keep None, not NaN
    frame["n_mutations"] = n_mutations
    return diff, on_wt
