"""From a measurement table to a validated, split ``dataset.parquet``.

``prepare_dataset`` reads a CSV / TSV / Parquet / FASTA file or a sheet of an Excel workbook, validates
every row, normalises it (sequences upper case, mutation strings canonical), averages replicate measurements
of the same sequence, drops missing targets, assigns each unique variant to train / valid / test, and writes
``dataset.parquet`` (explicit schema, metadata under the key ``lyra``) and ``report.md``. Every problem is a
one-line ``DataError`` naming the file and the 1-based row (the line a user sees in an editor: the header
is line 1; in a workbook, the sheet and the row number Excel shows) or a ``ConfigError`` naming the config
key. Nothing is written unless everything succeeded.

Splits (``SplitConfig.method``):
  random        seeded fractions of the unique variants
  kfold         seeded folds; ``test_fold`` is the test set
  n_mutations   train on <= ``max_train_mutations`` substitutions, test on more (FLIP's n_vs_rest)
  threshold     train on target < threshold, test on >= (FLIP's low_vs_high; default threshold = WT)
  positions     test variants only mutate held-out positions, train/valid variants never do
  column        a column of the file says train / valid / test (e.g. FLIP's ``set`` + ``validation``)
  index_files   files of 0-based data-row numbers per split (e.g. METL's published splits)
The validation set always comes out of the training portion.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lyra.data.alphabet import get_alphabet
from lyra.errors import ConfigError, DataError
from lyra.io import atomic_path, sha256_file
from lyra.data.variants import MutationParser, is_wild_type_token, read_wild_type

log = logging.getLogger("lyra.data.dataset")

SPLITS = ("train", "valid", "test")
FORMATS = ("csv", "tsv", "parquet", "fasta", "excel")
TASKS = ("regression", "classification")
AGGREGATES = ("mean", "median", "first", "error")
DROP_KINDS = ("nonsense", "synonymous")  # data.drop_variants
SPLIT_METHODS = ("random", "kfold", "n_mutations", "threshold", "positions", "column", "index_files")
RESERVED_COLUMNS = ("variant_id", "sequence", "mutations", "n_mutations", "n_replicates", "count", "split", "fold")
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none"})
TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0"}) | MISSING_TOKENS
DEFAULT_COLUMN_MAPPING = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
MAX_COUNT = 1e15  # a read count above this is a unit or parsing mistake, not a measurement

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".fasta": "fasta",
    ".fa": "fasta",
    ".fas": "fasta",
    ".faa": "fasta",
    ".fna": "fasta",
    ".xlsx": "excel",
    ".xlsm": "excel",
}


# --------------------------------------------------------------------------------------------- configs


def _from_dict(cls, d: dict | None, prefix: str):
    if d is None:
        return cls()
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}: unknown key (known: {', '.join(sorted(known))})")
    return cls(**d)


def _check_type(prefix: str, key: str, value: Any, types: tuple, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = "/".join(t.__name__ for t in types) + (" or null" if allow_none else "")
        raise ConfigError(f"{prefix}.{key}: expected {names}, got {value!r}")


@dataclass
class DataConfig:
    path: str = ""  # csv / tsv / parquet / fasta (optionally .gz) / xlsx / xlsm
    format: str = "auto"  # auto = by extension
    sequence_column: str | None = None  # a full-sequence column ...
    mutations_column: str | None = None  # ... or mutations against the wild type (or both: checked to agree)
    wild_type: str | None = None  # FASTA path or the sequence itself
    wild_type_dna: str | None = None  # its coding sequence (FASTA), for the picks' genes (lyra.design.dna); not read here
    first_position: int = 1  # the number of the wild type's first residue
    target_column: str | list[str] | None = None  # one or more numeric targets, or one class column
    task: str = "regression"  # regression | classification
    alphabet: str = "protein"  # protein | dna | rna
    id_column: str | None = None  # variant ids (FASTA: the record id)
    mutation_separators: str = ":,;"
    uppercase: bool = True  # lowercase residues are upper-cased (and counted) instead of rejected
    equal_length: bool = True  # unequal lengths are an error (False: padded and masked downstream)
    aggregate: str = "mean"  # replicates of one sequence: mean | median | first | error
    fasta_label_key: str | None = None  # FASTA: the header key holding the label (default: target_column)
    count_column: str | None = None  # optional read count per row (validated, summed over replicates)
    min_count: int = 0  # rows with count < min_count are dropped (and counted)
    max_mutations: int | None = None  # keep only variants with at most this many substitutions (data file only)
    drop_variants: list[str] = field(default_factory=list)  # nonsense / synonymous rows: dropped (and counted)
    padding: str | None = None  # a filler letter stripped from both ends of every sequence (e.g. 'J')
    sheet: str | int | None = None  # Excel: the sheet's name or 0-based index; None = the first sheet

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataConfig":
        return _from_dict(cls, d, "data")

    def __post_init__(self) -> None:
        p = "data"
        _check_type(p, "path", self.path, (str, Path))
        self.path = str(self.path)
        if self.format not in ("auto",) + FORMATS:
            raise ConfigError(f"{p}.format: {self.format!r} is not one of auto, {', '.join(FORMATS)}")
        for key in ("sequence_column", "mutations_column", "wild_type", "wild_type_dna", "id_column", "fasta_label_key", "count_column"):
            _check_type(p, key, getattr(self, key), (str,), allow_none=True)
        _check_type(p, "first_position", self.first_position, (int,))
        _check_type(p, "min_count", self.min_count, (int,))
        _check_type(p, "max_mutations", self.max_mutations, (int,), allow_none=True)
        if self.max_mutations is not None and self.max_mutations < 0:
            raise ConfigError(f"{p}.max_mutations: must be >= 0 or null, got {self.max_mutations}")
        if self.max_mutations is not None and self.wild_type is None:
            raise ConfigError(f"{p}.wild_type: required with data.max_mutations (mutations are counted against it)")
        self._check_drop_variants()
        _check_type(p, "uppercase", self.uppercase, (bool,))
        _check_type(p, "equal_length", self.equal_length, (bool,))
        _check_type(p, "mutation_separators", self.mutation_separators, (str,))
        _check_type(p, "sheet", self.sheet, (str, int), allow_none=True)
        if self.sheet == "" or (isinstance(self.sheet, int) and self.sheet < 0):
            raise ConfigError(f"{p}.sheet: expected a sheet name or a 0-based index, got {self.sheet!r}")
        if isinstance(self.target_column, (list, tuple)):
            if not self.target_column or not all(isinstance(t, str) and t for t in self.target_column):
                raise ConfigError(f"{p}.target_column: expected a column name or a list of names")
            if len(set(self.target_column)) != len(self.target_column):
                raise ConfigError(f"{p}.target_column: a column is listed twice: {self.target_column}")
            self.target_column = list(self.target_column)
        else:
            _check_type(p, "target_column", self.target_column, (str,), allow_none=True)
        for t in self.targets:
            if t in RESERVED_COLUMNS:
                raise ConfigError(
                    f"{p}.target_column: {t!r} clashes with an output column ({', '.join(RESERVED_COLUMNS)}); "
                    "rename it in the file"
                )
        if self.task not in TASKS:
            raise ConfigError(f"{p}.task: {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task == "classification" and len(self.targets) > 1:
            raise ConfigError(f"{p}.target_column: classification takes one class column, got {self.targets}")
        try:
            get_alphabet(self.alphabet)
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"{p}.alphabet: {e}") from None
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"{p}.aggregate: {self.aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if self.fasta_label_key is not None and len(self.targets) > 1:
            raise ConfigError(f"{p}.fasta_label_key: names the header key of one target, but there are {len(self.targets)}")
        if self.mutations_column is not None and self.wild_type is None:
            raise ConfigError(f"{p}.wild_type: required with data.mutations_column (a FASTA path or the sequence)")
        self._check_padding()

    def _check_padding(self) -> None:
        _check_type("data", "padding", self.padding, (str,), allow_none=True)
        if self.padding is None:
            return
        if len(self.padding) != 1 or self.padding.isspace():
            raise ConfigError(f"data.padding: expected one letter (e.g. J), got {self.padding!r}")
        if self.uppercase:  # compared with the sequences after they are upper-cased
            self.padding = self.padding.upper()
        ab = get_alphabet(self.alphabet)
        if self.padding in ab.letters + ab.ambiguous:
            raise ConfigError(f"data.padding: {self.padding!r} is a residue of the {ab.name} alphabet, "
                              "so stripping it would cut real residues")
        if self.padding == "*":  # a stop marks a nonsense variant (data.drop_variants)
            raise ConfigError("data.padding: '*' is read as a stop codon, not as padding")

    def _check_drop_variants(self) -> None:
        kinds = self.drop_variants
        if kinds is None:
            kinds = []
        if not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) for k in kinds):
            raise ConfigError(f"data.drop_variants: expected a list of {', '.join(DROP_KINDS)}, got {kinds!r}")
        unknown = [k for k in kinds if k not in DROP_KINDS]
        if unknown:
            raise ConfigError(f"data.drop_variants: {unknown[0]!r} is not one of {', '.join(DROP_KINDS)}")
        self.drop_variants = list(dict.fromkeys(kinds))
        # in a sequence column a synonymous variant is indistinguishable from the wild type
        if "synonymous" in self.drop_variants and self.mutations_column is None:
            raise ConfigError("data.drop_variants: 'synonymous' is recognised in data.mutations_column (A24A); "
                              "set that column or leave 'synonymous' out")

    @property
    def targets(self) -> list[str]:
        if self.target_column is None:
            return []
        return [self.target_column] if isinstance(self.target_column, str) else list(self.target_column)


@dataclass
class SplitConfig:
    method: str = "random"  # random | kfold | n_mutations | threshold | positions | column | index_files
    fractions: dict = field(default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1})
    seed: int = 0
    n_folds: int = 5  # kfold
    test_fold: int = 0  # kfold: the fold held out for test
    valid_fraction: float = 0.1  # share of the training portion moved to valid when the method defines no valid
    max_train_mutations: int = 1  # n_mutations: train on <= k substitutions, test on more
    threshold: float | None = None  # threshold: train on target < threshold; None = the wild type's target
    threshold_target: str | None = None  # threshold: which target (default the first)
    test_positions: list[int] | None = None  # positions: held-out positions (user numbering); None = random
    column: str | None = None  # column: the column holding the split label
    mapping: dict | None = None  # column: label -> train | valid | test | exclude (default: the obvious names)
    valid_column: str | None = None  # column: a boolean column marking training rows used for validation
    index_files: dict | None = None  # index_files: {train: path, valid: path, test: path} of 0-based data rows

    @classmethod
    def from_dict(cls, d: dict | None) -> "SplitConfig":
        return _from_dict(cls, d, "split")

    def __post_init__(self) -> None:
        p = "split"
        if self.method not in SPLIT_METHODS:
            raise ConfigError(f"{p}.method: {self.method!r} is not one of {', '.join(SPLIT_METHODS)}")
        if not isinstance(self.fractions, dict) or not self.fractions:
            raise ConfigError(f"{p}.fractions: expected a mapping like {{train: 0.8, valid: 0.1, test: 0.1}}")
        for k, v in self.fractions.items():
            if k not in SPLITS:
                raise ConfigError(f"{p}.fractions.{k}: unknown split (use train, valid, test)")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"{p}.fractions.{k}: expected a number in [0, 1], got {v!r}")
        self.fractions = {s: float(self.fractions.get(s, 0.0)) for s in SPLITS}
        if abs(sum(self.fractions.values()) - 1) > 1e-6:
            raise ConfigError(f"{p}.fractions: must sum to 1, got {sum(self.fractions.values()):g}")
        for key in ("seed", "n_folds", "test_fold", "max_train_mutations"):
            _check_type(p, key, getattr(self, key), (int,))
        if self.n_folds < 2:
            raise ConfigError(f"{p}.n_folds: need at least 2 folds, got {self.n_folds}")
        if not 0 <= self.test_fold < self.n_folds:
            raise ConfigError(f"{p}.test_fold: must be in 0..{self.n_folds - 1}, got {self.test_fold}")
        _check_type(p, "valid_fraction", self.valid_fraction, (int, float))
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError(f"{p}.valid_fraction: must be in [0, 1), got {self.valid_fraction}")
        if self.max_train_mutations < 0:
            raise ConfigError(f"{p}.max_train_mutations: must be >= 0, got {self.max_train_mutations}")
        _check_type(p, "threshold", self.threshold, (int, float), allow_none=True)
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError(f"{p}.threshold: must be finite, got {self.threshold}")
        _check_type(p, "threshold_target", self.threshold_target, (str,), allow_none=True)
        if self.test_positions is not None:
            if not isinstance(self.test_positions, (list, tuple)) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in self.test_positions
            ):
                raise ConfigError(f"{p}.test_positions: expected a list of integer positions")
            self.test_positions = [int(x) for x in self.test_positions]
        _check_type(p, "column", self.column, (str,), allow_none=True)
        _check_type(p, "valid_column", self.valid_column, (str,), allow_none=True)
        if self.method == "column" and self.column is None:
            raise ConfigError(f"{p}.column: required with split.method: column")
        if self.mapping is not None:
            if not isinstance(self.mapping, dict):
                raise ConfigError(f"{p}.mapping: expected a mapping of label -> train/valid/test/exclude")
            for k, v in self.mapping.items():
                if v not in SPLITS + ("exclude",):
                    raise ConfigError(f"{p}.mapping.{k}: {v!r} is not one of train, valid, test, exclude")
        if self.method == "index_files":
            if not isinstance(self.index_files, dict) or not self.index_files:
                raise ConfigError(f"{p}.index_files: required with split.method: index_files ({{train: path, ...}})")
            for k, v in self.index_files.items():
                if k not in SPLITS:
                    raise ConfigError(f"{p}.index_files.{k}: unknown split (use train, valid, test)")
                _check_type(p, f"index_files.{k}", v, (str, Path))
            if "train" not in self.index_files or "test" not in self.index_files:
                raise ConfigError(f"{p}.index_files: needs at least train and test")


# --------------------------------------------------------------------------------------------- reading


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """csv | tsv | parquet | fasta | excel, from `fmt` or the file extension (a trailing .gz is looked through)."""
    if fmt != "auto":
        return fmt
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    if suffix == ".xls":  # openpyxl reads only the zipped XML workbooks of Excel 2007 and later
        raise ConfigError(f"data.format: {Path(path).name!r} is an Excel 97-2003 workbook; save it as .xlsx")
    raise ConfigError(
        f"data.format: cannot tell the format of {Path(path).name!r} from its extension; "
        f"set data.format to one of {', '.join(FORMATS)}"
    )


def read_table(path: str | Path, fmt: str = "auto", sheet: str | int | None = None) -> pd.DataFrame:
    """Read a measurement table; the index is the 1-based row a user sees (see the module docstring).

    CSV / TSV / FASTA / Excel cells are strings ('' for empty); Parquet keeps its column types. FASTA gives
    the columns ``id``, ``sequence`` and one per ``key=value`` token of the headers (``>v1 TARGET=1.2 SET=train``).
    Excel reads `sheet` (a name or 0-based index; None: the first) and sets ``attrs["where"]`` (file and
    sheet, for errors) and ``attrs["header_row"]``.
    """
    path = Path(path)
    fmt = detect_format(path, fmt)
    if not path.is_file():
        raise DataError("file not found", str(path))
    if path.stat().st_size == 0:
        raise DataError("the file is empty", str(path), 1)
    if fmt in ("csv", "tsv"):
        frame = _read_delimited(path, "," if fmt == "csv" else "\t")
    elif fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise DataError(f"cannot read as Parquet: {_one_line(e)}", str(path)) from None
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="line")
        frame.columns = [str(c).strip() for c in frame.columns]
    elif fmt == "fasta":
        frame = _read_fasta(path)
    elif fmt == "excel":
        frame = _read_excel(path, sheet)
    else:  # pragma: no cover - detect_format only returns FORMATS
        raise ConfigError(f"data.format: unknown format {fmt!r}")
    if len(frame) == 0:
        if fmt == "fasta":
            raise DataError("no records", str(path), 1)
        raise DataError("no data rows (the file holds only a header)", str(path), 2 if fmt != "parquet" else None)
    return frame


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        return io.StringIO(raw.decode("utf-8-sig"))  # utf-8-sig: an Excel BOM is dropped, not kept in a name
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"byte 0x{raw[e.start]:02x} is not UTF-8 text (save the file as UTF-8)", str(path), line
        ) from None


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    text = _open_text(path)
    if not text.getvalue().strip():
        raise DataError("the file is empty", str(path), 1)
    header = text.getvalue().split("\n", 1)[0]
    if sep not in header:
        _check_delimiter(header, sep, path)
    try:
        frame = pd.read_csv(
            text, sep=sep, dtype=str, keep_default_na=False, na_values=[], skip_blank_lines=False,
            quoting=csv.QUOTE_MINIMAL,
        )
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", str(path), 1) from None
    except pd.errors.ParserError as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(
                f"{m.group(3)} fields but the header has {m.group(1)} "
                f"(a stray {_sep_name(sep)} or an unquoted value holding one?)",
                str(path), int(m.group(2)),
            ) from None
        raise DataError(f"cannot parse: {_one_line(e)}", str(path)) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    # the index is the editor line: header = 1; blank lines are dropped but keep their numbering
    frame.index = _record_lines(text.getvalue(), sep, len(frame))
    blank = (frame == "").all(axis=1)
    if blank.any():
        frame = frame.loc[~blank]
        frame.attrs["blank_lines"] = int(blank.sum())
    return frame


def _record_lines(text: str, sep: str, n: int) -> pd.Index:
    """The editor line each of the n data records starts on (a quoted field may hold line breaks)."""
    if '"' not in text:  # one record per line: no second parse
        return pd.RangeIndex(2, n + 2, name="line")
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    starts, end = [], 0
    for _ in reader:
        starts.append(end + 1)
        end = reader.line_num
    if len(starts) != n + 1:  # the parsers disagree: fall back to one record per line
        return pd.RangeIndex(2, n + 2, name="line")
    return pd.Index(starts[1:], name="line")


def _check_delimiter(header: str, sep: str, path: Path) -> None:
    """A header without the expected delimiter but with another one: the file uses another delimiter."""
    for other in (",", "\t", ";", "|"):
        if other != sep and other in header:
            fmt_hint = {",": " (set data.format: csv)", "\t": " (set data.format: tsv)"}.get(other, "")
            raise DataError(
                f"only one column found with delimiter {_sep_name(sep)}; the header looks "
                f"{_sep_name(other)}-separated: is the delimiter {_sep_name(other)}?{fmt_hint}",
                str(path), 1,
            )


def _sep_name(sep: str) -> str:
    return {",": "','", "\t": "tab", ";": "';'", "|": "'|'"}[sep]


def _read_fasta(path: Path) -> pd.DataFrame:
    from Bio import SeqIO

    text = _open_text(path)
    lines = text.getvalue().splitlines()
    header_lines = [i for i, line in enumerate(lines, start=1) if line.startswith(">")]
    if not header_lines:
        raise DataError("no FASTA header ('>') found: is this a FASTA file?", str(path), 1)
    first = next(i for i, line in enumerate(lines, start=1) if line.strip())
    if first < header_lines[0]:  # Biopython would refuse with a long message about comments
        raise DataError("text before the first '>' header line (remove it)", str(path), first)
    rows: list[dict[str, str]] = []
    try:
        for record, line in zip(SeqIO.parse(text, "fasta"), header_lines):
            row = {"id": record.id, "sequence": str(record.seq)}
            for token in record.description.split()[1:]:
                key, eq, value = token.partition("=")
                if eq and key:
                    if key in row:
                        raise DataError(f"header key {key!r} appears twice", str(path), line)
                    row[key] = value
            rows.append(row)
    except DataError:
        raise
    except Exception as e:  # Biopython's parser errors
        raise DataError(f"cannot parse as FASTA: {_one_line(e)}", str(path)) from None
    frame = pd.DataFrame(rows, index=pd.Index(header_lines[: len(rows)], name="line"), dtype=object)
    return frame.fillna("")


def _read_excel(path: Path, sheet: str | int | None) -> pd.DataFrame:
    """One sheet of a workbook, read as a CSV is: strings, the first non-empty row is the header, blank rows
    are dropped (and counted), and the index is the row number Excel shows. Formulas give their saved values."""
    import openpyxl
    from openpyxl.utils import get_column_letter

    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        book = openpyxl.load_workbook(io.BytesIO(raw), data_only=True)  # data_only: a formula's saved value
    except Exception as e:  # not a zip, or a zip that holds no workbook (often a text table renamed .xlsx)
        raise DataError(
            f"cannot tell the format of {path.name!r}: it is named like an Excel workbook but is not one "
            f"({_one_line(e)}); if it is a text table, set data.format (csv or tsv)", str(path),
        ) from None
    ws = _pick_sheet(book, sheet, path)
    where = f"{path}, sheet {ws.title!r}"
    cells = [list(r) for r in ws.iter_rows(values_only=True)]  # cells[i][j] is Excel row i + 1, column j + 1
    filled = [i for i, r in enumerate(cells) if any(not _empty_cell(v) for v in r)]
    if not filled:
        raise DataError("the sheet is empty", where, 1)
    head, last = filled[0], filled[-1]  # rows above the header and below the last value are not the table
    if head == last:
        raise DataError("no data rows (the sheet holds only a header)", where, head + 2)
    table = cells[head:last + 1]
    columns = [j for j in range(len(cells[head])) if any(not _empty_cell(r[j]) for r in table)]

    if any(r[j] is None for r in table for j in columns):
        _check_formulas(raw, ws.title, cells, head, last, columns, where)
    _check_merged(ws, head, last, columns, where)

    names = []
    for j in columns:
        name = _cell_text(cells[head][j]).strip()
        # no config key can name it, but listing it shows where the table's columns are
        names.append(name or f"Unnamed: {get_column_letter(j + 1)}")
    seen: dict[str, int] = {}
    for j, name in zip(columns, names):
        if name in seen:
            first, second = (f"{get_column_letter(k + 1)}{head + 1}" for k in (seen[name], j))
            raise DataError(f"column name {name!r} is in the header twice ({first} and {second}); "
                            "give each column its own name", where, head + 1)
        seen[name] = j

    frame = pd.DataFrame([[_cell_text(r[j]) for j in columns] for r in table[1:]], columns=names,
                         index=pd.RangeIndex(head + 2, last + 2, name="line"), dtype=object)
    blank = (frame == "").all(axis=1)
    if blank.any():
        frame = frame.loc[~blank]
    frame.attrs.update(where=where, header_row=head + 1, blank_lines=int(blank.sum()))
    return frame


def _pick_sheet(book, sheet: str | int | None, path: Path):
    tables = book.worksheets  # chart sheets hold no cells
    titles = [ws.title for ws in tables]
    if sheet is None:
        return tables[0]
    if isinstance(sheet, int) and sheet < len(tables):
        return tables[sheet]
    if isinstance(sheet, str) and sheet in titles:
        return tables[titles.index(sheet)]
    wanted = (f"sheet at index {sheet} (data.sheet counts from 0)" if isinstance(sheet, int)
              else f"sheet {sheet!r} (data.sheet)")
    raise DataError(f"no {wanted}; the sheets are: {', '.join(map(repr, titles))}", str(path))


def _empty_cell(value: Any) -> bool:
    return value is None or value == ""


def _cell_text(value: Any) -> str:
    """A cell as the string a CSV export would hold, so both formats validate alike."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # Excel stores every number as a float: 3.0 is the 3 the user typed
    return str(value)


def _check_formulas(raw: bytes, title: str, cells: list, head: int, last: int, columns: list[int],
                    where: str) -> None:
    """A formula the workbook holds no saved value for reads as empty: name it instead (files written by
    a program rather than by Excel often have none)."""
    import openpyxl
    from openpyxl.utils import get_column_letter

    book = openpyxl.load_workbook(io.BytesIO(raw), read_only=True, data_only=False)
    try:
        rows = book[title].iter_rows(min_row=head + 1, max_row=last + 1, values_only=True)
        for i, formulas in enumerate(rows, start=head):
            for j in columns:
                f = formulas[j] if j < len(formulas) else None
                if cells[i][j] is None and not _empty_cell(f):
                    shown = f" ({f})" if isinstance(f, str) else ""
                    raise DataError(
                        f"cell {get_column_letter(j + 1)}{i + 1} holds a formula{shown} with no saved value; "
                        "open the workbook in Excel and save it, so the value is calculated and stored", where, i + 1,
                    )
    finally:
        book.close()


def _check_merged(ws, head: int, last: int, columns: list[int], where: str) -> None:
    """openpyxl gives a merged range's value to its top-left cell only; the others would read as empty (a
    header spanning two columns would leave one unnamed), so a merged value inside the table is an error."""
    inside = set(columns)
    for rng in sorted(ws.merged_cells.ranges, key=lambda r: (r.min_row, r.min_col)):
        if rng.max_row < head + 1 or rng.min_row > last + 1:
            continue
        if not inside.intersection(range(rng.min_col - 1, rng.max_col)):
            continue
        value = ws.cell(rng.min_row, rng.min_col).value
        if _empty_cell(value):  # merged blank cells (formatting) lose nothing
            continue
        if rng.min_row == head + 1 and rng.max_col > rng.min_col:
            message = (f"header cells {rng.coord} are merged, so only the first of their columns is named "
                       f"({_cell_text(value)!r}); unmerge them and give each column its own header cell")
        else:
            message = (f"cells {rng.coord} are merged: only the first holds {_cell_text(value)!r}, the others read "
                       "as empty; unmerge them and fill each cell")
        raise DataError(message, where, rng.min_row)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


DEMO_DATA = "package://ewht/example_data/cr6261_h1_mean.csv"  # the demo config's data.path


def demo_data_path() -> Path:
    """The CR6261 antibody landscape shipped in the ``ewht`` package (2,048 variants, ``mutant``/``fitness``),
    found through importlib.resources, as the demo config's ``package://`` path is."""
    from lyra.campaign.config import resolve_path

    return Path(resolve_path(DEMO_DATA))


# --------------------------------------------------------------------------------------------- helpers


def _resolve(path: str | Path, base_dir: str | Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def _text(series: pd.Series) -> list[str]:
    """A column as a list of stripped strings ('' for missing)."""
    out = []
    for v in series.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append("")
        else:
            out.append(str(v).strip())
    return out


def _is_missing(values: list[str]) -> np.ndarray:
    return np.array([v.lower() in MISSING_TOKENS for v in values], dtype=bool)


class _Ctx:
    """One input file: builds errors naming it (and its sheet) and the row (`i` is the position in the file's
    frame)."""

    def __init__(self, path: str | Path, lines: np.ndarray):
        self.path, self.lines = path, lines

    def error(self, i: int, message: str) -> DataError:
        return DataError(message, str(self.path), int(self.lines[i]))


def _numeric(values: pd.Series, column: str, ctx: _Ctx, what: str = "target") -> np.ndarray:
    """Strings (or a numeric Parquet column) -> float64 with NaN for missing; text and +-inf are errors."""
    if isinstance(values, pd.Series) and pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = _text(values)
        missing = _is_missing(text)
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


def _add_counts(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _add_counts(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0) + v


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
    out_dir: str | Path,
    base_dir: str | Path | None = None,
    rounds: list[str | Path] | None = None,
) -> Path:
    """Validate, normalise, aggregate and split a measurement table; write ``dataset.parquet`` + ``report.md``.

    `rounds` are later measurement files of the campaign (same columns as the data file): their rows are
    validated the same way and appended; variants they add go to the training portion (see
    ``_assign_splits``). Relative paths are resolved against `base_dir` (the working directory when a
    config runs through `lyra` or Snakemake).
    Returns the path of ``dataset.parquet``. Nothing is written if any row or key is bad.
    """
    data_cfg = data_cfg if isinstance(data_cfg, DataConfig) else DataConfig.from_dict(data_cfg)
    split_cfg = split_cfg if isinstance(split_cfg, SplitConfig) else SplitConfig.from_dict(split_cfg)
    if not data_cfg.path:
        raise ConfigError("data.path: required (the measurement file)")
    if not data_cfg.targets:
        raise ConfigError("data.target_column: required (the measured value, or a list of them)")
    path = _resolve(data_cfg.path, base_dir)
    if path.is_dir():
        raise ConfigError(f"data.path: {path} is a directory; give the measurement file")
    if not path.is_file():
        raise ConfigError(f"data.path: no such file: {path}")
    round_paths = [_resolve(r, base_dir) for r in rounds or []]
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
    report = _report(prepared, data_cfg, split_cfg, meta)

    out_dir = Path(out_dir)
    out = out_dir / "dataset.parquet"
    with atomic_path(out) as tmp_parquet, atomic_path(out_dir / "report.md") as tmp_report:
        pq.write_table(table, tmp_parquet)
        tmp_report.write_text(report)
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
        rows, c = _read_measurements(path, src, cfg, split_cfg, wild_type, alphabet, base_dir)
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
        keep = (rows["_src"].to_numpy() > 0) | (_count_substitutions(rows["sequence"], wild_type) <= cfg.max_mutations)
        counts["variants_dropped_above_max_mutations"] = int((~keep).sum())
        if not keep.any():
            raise DataError(f"no variant has at most data.max_mutations = {cfg.max_mutations} mutations", wheres[0])
        rows = rows.loc[keep].reset_index(drop=True)

    # ---- duplicate ids must name one sequence; replicates of a sequence are merged
    if "variant_id" in rows.columns:
        _check_ids(rows, wheres)
    rows, merged = _aggregate(rows, cfg, wheres)
    counts["replicate_rows_merged"] = merged

    # ---- canonical mutations against the wild type
    frame = rows.reset_index(drop=True)
    frame["mutations"] = pd.Series([None] * len(frame), dtype=object)
    frame["n_mutations"] = pd.array([pd.NA] * len(frame), dtype="Int32")
    diff = None
    if wild_type is not None:
        diff, on_wt = _diff_against(frame["sequence"].tolist(), wild_type, cfg.first_position, frame)
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
    split, fold, split_info = _assign_splits(frame, split_cfg, cfg, diff, wild_type)
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


def _count_substitutions(seqs: pd.Series, wild_type: str) -> np.ndarray:
    """(n,) float: Hamming distance to the wild type; NaN for another length (compares as False)."""
    out = np.full(len(seqs), np.nan)
    lengths = seqs.str.len().to_numpy()
    same = lengths == len(wild_type)
    if same.any():
        arr = np.frombuffer("".join(seqs[same]).encode("ascii"), dtype=np.uint8).reshape(-1, len(wild_type))
        out[same] = (arr != np.frombuffer(wild_type.encode("ascii"), dtype=np.uint8)).sum(axis=1)
    return out


def _read_measurements(
    path: Path, src: int, cfg: DataConfig, split_cfg: SplitConfig, wild_type: str | None, alphabet, base_dir
) -> tuple[pd.DataFrame, dict]:
    """One file -> validated rows (sequence, targets, ids, counts, split label) and what was done to them.

    `src` 0 is the data file; later ones are campaign rounds (no split column or index files of their own).
    """
    fmt = detect_format(path, cfg.format)
    raw = read_table(path, fmt, cfg.sheet)
    where = raw.attrs.get("where", str(path))  # a workbook's errors also name the sheet
    n = len(raw)
    ctx = _Ctx(where, raw.index.to_numpy())
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
        mut_text = _text(raw[cfg.mutations_column])
        seqs = _sequences_from_mutations(mut_text, wild_type, cfg, ctx)
    if seq_col is not None:
        given = _text(raw[seq_col])
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
        ctx = _Ctx(where, raw.index.to_numpy())
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
            labels = _text(raw[col])
            m = _is_missing(labels)
            v = np.array(labels, dtype=object)
        rows[t] = v
        counts["missing_target"][t] = int(m.sum())
        missing |= m
    if id_col is not None:
        ids = _text(raw[id_col])
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
            labels = (_column_labels(raw, split_cfg, ctx) if use_split_column
                      else _index_file_labels(counts["rows_read"], split_cfg, base_dir)[record])
            excluded = labels == "exclude"
            counts["rows_excluded_by_split"] = int(excluded.sum())
            keep &= ~excluded
        else:
            labels = np.full(n, None, dtype=object)  # round rows: placed by _assign_splits
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


def _sequences_from_mutations(text: list[str], wild_type: str, cfg: DataConfig, ctx: _Ctx) -> list[str]:
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


def _strip_padding(seqs: list[str], pad: str, column: str, ctx: _Ctx) -> list[str]:
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


def _check_residues(seqs: list[str], alphabet, cfg: DataConfig, ctx: _Ctx, mut_text: list[str] | None) -> None:
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


def _check_lengths(seqs: list[str], wild_type: str | None, cfg: DataConfig, ctx: _Ctx,
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


def _row_error(wheres: list[str], row: pd.Series, message: str) -> DataError:
    """`wheres`: each input file as errors name it (a workbook: with its sheet), by `_src`."""
    return DataError(message, wheres[int(row["_src"])], int(row["_line"]))


def _check_ids(rows: pd.DataFrame, wheres: list[str]) -> None:
    """An id used for two different sequences is an error at its second use."""
    n_seqs = rows.groupby("variant_id", sort=False)["sequence"].nunique()
    conflicting = set(n_seqs.index[n_seqs.to_numpy() > 1])
    if not conflicting:
        return
    sub = rows.loc[rows["variant_id"].isin(conflicting)]
    first: dict[str, pd.Series] = {}
    for _, row in sub.iterrows():  # only the (few) conflicting rows
        seen = first.setdefault(row["variant_id"], row)
        if row["sequence"] != seen["sequence"]:
            where = f"{Path(wheres[int(seen['_src'])]).name} row {int(seen['_line'])}" if seen["_src"] != row["_src"] \
                else f"row {int(seen['_line'])}"
            raise _row_error(wheres, row, f"variant id {row['variant_id']!r} was already used for a different sequence at {where}")


def _aggregate(rows: pd.DataFrame, cfg: DataConfig, wheres: list[str]) -> tuple[pd.DataFrame, int]:
    """One row per unique sequence, in order of first appearance: targets averaged (regression),
    n_replicates kept, the first row's id and line, counts summed."""
    groups = rows.groupby("sequence", sort=False)
    size = groups.size()
    merged = int(len(rows) - len(size))
    if merged == 0:
        out = rows.copy()
        out["n_replicates"] = np.ones(len(out), dtype=np.int32)
        return out, 0
    if cfg.aggregate == "error":
        raise _row_error(wheres, rows.loc[rows["sequence"].duplicated()].iloc[0],
                         "the same sequence appears on an earlier row (data.aggregate: error)")
    must_agree = [("_label", "split label")]  # None (a round's row) agrees with anything
    if cfg.task == "classification":
        must_agree.append((cfg.targets[0], "class"))
    for col, what in must_agree:
        if col not in rows.columns:
            continue
        nun = groups[col].nunique()
        if (nun > 1).any():
            seq = nun.index[nun.to_numpy() > 1][0]
            sub = rows.loc[rows["sequence"] == seq]
            raise _row_error(
                wheres, sub.iloc[-1],
                f"replicates of one sequence disagree on the {what} ({', '.join(map(repr, sub[col].dropna().unique()))}); "
                f"first seen at row {int(sub['_line'].iloc[0])}",
            )
    agg: dict[str, Any] = {c: "first" for c in rows.columns if c != "sequence"}
    if cfg.task == "regression" and cfg.aggregate in ("mean", "median"):
        agg.update({t: cfg.aggregate for t in cfg.targets})
    agg["_src"] = "min"  # 0: the variant is in the data file (not only in later rounds)
    if "count" in rows.columns:
        agg["count"] = "sum"
    out = groups.agg(agg).reset_index()
    out["n_replicates"] = size.to_numpy().astype(np.int32)
    return out, merged


def _diff_against(seqs: list[str], wild_type: str, first_position: int, frame: pd.DataFrame):
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


def _column_labels(raw: pd.DataFrame, cfg: SplitConfig, ctx: _Ctx) -> np.ndarray:
    mapping = {str(k).strip().lower(): v for k, v in (cfg.mapping or DEFAULT_COLUMN_MAPPING).items()}
    values = _text(raw[cfg.column])
    labels = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        label = mapping.get(v.lower())
        if label is None:
            shown = repr(v) if v else "an empty value"
            raise ctx.error(
                i, f"column {cfg.column!r} (split.column): {shown} is not in split.mapping "
                   f"({', '.join(map(repr, mapping))})"
            )
        labels[i] = label
    if cfg.valid_column is not None:
        for i, v in enumerate(_text(raw[cfg.valid_column])):
            low = v.lower()
            if low in TRUE_TOKENS:
                if labels[i] == "test":
                    raise ctx.error(i, f"column {cfg.valid_column!r} (split.valid_column) marks a test row as validation")
                if labels[i] == "train":
                    labels[i] = "valid"
            elif low not in FALSE_TOKENS:
                raise ctx.error(i, f"column {cfg.valid_column!r} (split.valid_column): {v!r} is not true/false")
    return labels


def _index_file_labels(n: int, cfg: SplitConfig, base_dir) -> np.ndarray:
    labels = np.full(n, "exclude", dtype=object)  # rows listed in no file are left out (and counted)
    owner: dict[int, str] = {}
    for split, file in cfg.index_files.items():
        p = _resolve(file, base_dir)
        if not p.is_file():
            raise ConfigError(f"split.index_files.{split}: no such file: {p}")
        for line_no, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                k = int(line)
            except ValueError:
                raise DataError(f"{line!r} is not a row index (0-based data rows)", str(p), line_no) from None
            if not 0 <= k < n:
                raise DataError(f"row index {k} is outside the data (0..{n - 1}, 0-based data rows)", str(p), line_no)
            if k in owner:
                raise DataError(f"row index {k} is already listed for {owner[k]}", str(p), line_no)
            owner[k] = split
            labels[k] = split
    return labels


def _assign_splits(frame: pd.DataFrame, cfg: SplitConfig, data_cfg: DataConfig, diff, wild_type):
    """(split labels (N,), fold (N,), info). The label 'drop' marks variants the split cannot place.

    Rule-based methods (n_mutations, threshold, positions) apply their rule to every variant. Methods
    based on chance or on the data file (random, kfold, column, index_files) place the data file's variants
    exactly as without rounds, and variants only seen in later rounds in the training portion.
    """
    n = len(frame)
    rng = np.random.default_rng(cfg.seed)
    base = np.flatnonzero(frame["_src"].to_numpy() == 0)  # variants of the data file, first-appearance order
    split = np.full(n, "train", dtype=object)
    fold = np.full(n, -1, dtype=np.int64)
    info: dict[str, Any] = {"method": cfg.method}
    need_valid = True

    def n_mutations() -> np.ndarray:
        if wild_type is None:
            raise ConfigError(f"split.method: {cfg.method} needs data.wild_type")
        nm = frame["n_mutations"]
        if nm.isna().any():
            i = int(np.flatnonzero(nm.isna().to_numpy())[0])
            raise ConfigError(
                f"split.method: {cfg.method} needs every sequence to have the wild type's length "
                f"(variant {frame['variant_id'].iloc[i]!r} does not)"
            )
        return nm.to_numpy(dtype=np.int64)

    if cfg.method == "random":
        perm = base[rng.permutation(len(base))]
        n_test = int(round(cfg.fractions["test"] * len(base)))
        n_valid = int(round(cfg.fractions["valid"] * len(base)))
        split[perm[:n_test]] = "test"
        split[perm[n_test:n_test + n_valid]] = "valid"
        need_valid = False
    elif cfg.method == "kfold":
        perm = base[rng.permutation(len(base))]
        fold[perm] = np.arange(len(base)) % cfg.n_folds
        split[fold == cfg.test_fold] = "test"
        info.update(n_folds=cfg.n_folds, test_fold=cfg.test_fold)
    elif cfg.method == "n_mutations":
        split[n_mutations() > cfg.max_train_mutations] = "test"
        info["max_train_mutations"] = cfg.max_train_mutations
    elif cfg.method == "threshold":
        if data_cfg.task != "regression":
            raise ConfigError("split.method: threshold needs a regression target (data.task: regression)")
        target = cfg.threshold_target or data_cfg.targets[0]
        if target not in data_cfg.targets:
            raise ConfigError(f"split.threshold_target: {target!r} is not one of data.target_column {data_cfg.targets}")
        threshold = cfg.threshold
        if threshold is None:
            is_wt = frame["mutations"].to_numpy() == ""
            if not is_wt.any():
                raise ConfigError("split.threshold: not set, and the data has no wild-type row to take it from")
            threshold = float(frame.loc[is_wt, target].iloc[0])
        split[frame[target].to_numpy(dtype=np.float64) >= threshold] = "test"  # train: strictly below
        info.update(threshold=threshold, threshold_target=target)
    elif cfg.method == "positions":
        if diff is None:
            raise ConfigError("split.method: positions needs data.wild_type")
        n_mutations()
        L = diff.shape[1]
        if cfg.test_positions is not None:
            index = np.array([p - data_cfg.first_position for p in cfg.test_positions], dtype=np.int64)
            off = [p for p, k in zip(cfg.test_positions, index) if not 0 <= k < L]
            if off:
                raise ConfigError(f"split.test_positions: {off} lie outside the wild type")
        else:
            mutated = np.flatnonzero(diff[base].any(axis=0))
            k = min(len(mutated), max(1, int(round(cfg.fractions["test"] * len(mutated)))))
            index = np.sort(rng.choice(mutated, size=k, replace=False))
        held = np.zeros(L, dtype=bool)
        held[index] = True
        touches_test = (diff & held).any(axis=1)
        mixed = touches_test & (diff & ~held).any(axis=1)
        split[touches_test] = "test"
        split[mixed] = "drop"
        info["test_positions"] = [int(k) + data_cfg.first_position for k in index]
        info["counts"] = {"variants_dropped_mixed_positions": int(mixed.sum())}
    elif cfg.method in ("column", "index_files"):
        labels = frame["_label"].to_numpy()
        placed = np.array([v is not None and v == v for v in labels])  # None/NaN: only in rounds
        split[placed] = labels[placed]
        need_valid = not (split == "valid").any() and not (cfg.method == "column" and cfg.valid_column)
    if need_valid and cfg.valid_fraction > 0:
        # valid comes out of the training portion, drawn with its own seeded stream
        train = np.flatnonzero(split == "train")
        k = int(round(cfg.valid_fraction * len(train)))
        if k:
            chosen = np.random.default_rng([cfg.seed, 1]).choice(train, size=k, replace=False)
            split[chosen] = "valid"
    return split, fold, info


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
        raise DataError(f"cannot read as Parquet: {_one_line(e)}", str(path)) from None


def load_dataset(path: str | Path) -> Dataset:
    """Read a ``dataset.parquet`` written by ``prepare_dataset``."""
    table = _read_parquet(Path(path), pq.read_table)
    return Dataset(frame=table.to_pandas(), meta=_lyra_meta(table.schema, Path(path)))


def load_dataset_meta(path: str | Path) -> dict:
    """Only the metadata of a ``dataset.parquet`` (task, alphabet, wild type...): reads the footer, not the rows."""
    return _lyra_meta(_read_parquet(Path(path), pq.read_schema), Path(path))
