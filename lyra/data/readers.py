"""Reading measurement files: CSV / TSV (optionally gzipped), Parquet, FASTA and Excel sheets.

``read_table`` gives a frame whose index is the 1-based row a user sees (the line in an editor, the header
being line 1; in a workbook, the row number Excel shows), so every later error can name the file and the
row; ``RowErrors`` builds those errors. Cells of text formats stay strings ('' for empty).
``lyra.io.package_file`` finds a ``package://`` path (data shipped in a Python package, such as the demo data).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lyra.errors import ConfigError, DataError
from lyra.io import package_file

FORMATS = ("csv", "tsv", "parquet", "fasta", "excel")
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none"})
DEMO_DATA = "package://ewht/example_data/cr6261_h1_mean.csv"  # the demo config's data.path

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
            raise DataError(f"cannot read as Parquet: {one_line(e)}", str(path)) from None
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
        raise DataError(f"cannot parse: {one_line(e)}", str(path)) from None
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
        raise DataError(f"cannot parse as FASTA: {one_line(e)}", str(path)) from None
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
            f"({one_line(e)}); if it is a text table, set data.format (csv or tsv)", str(path),
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


def one_line(e: BaseException) -> str:
    """An exception as one short line, for error messages that must stay one line."""
    return " ".join(str(e).split())[:300]


def demo_data_path() -> Path:
    """The CR6261 antibody landscape shipped in the ``ewht`` package (2,048 variants, ``mutant``/``fitness``),
    the demo config's data.path."""
    return package_file(DEMO_DATA)


def input_path(path: str | Path, base_dir: str | Path | None) -> Path:
    """`path` with a relative one taken against `base_dir` (the working directory of a campaign)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def column_text(series: pd.Series) -> list[str]:
    """A column as a list of stripped strings ('' for missing)."""
    out = []
    for v in series.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append("")
        else:
            out.append(str(v).strip())
    return out


def is_missing(values: list[str]) -> np.ndarray:
    """(n,) bool: the cells that spell a missing value ('', NA, NaN, null, ...)."""
    return np.array([v.lower() in MISSING_TOKENS for v in values], dtype=bool)


class RowErrors:
    """One input file: builds errors naming it (and its sheet) and the row (`i` is the position in the file's
    frame)."""

    def __init__(self, path: str | Path, lines: np.ndarray):
        self.path, self.lines = path, lines

    def error(self, i: int, message: str) -> DataError:
        return DataError(message, str(self.path), int(self.lines[i]))
