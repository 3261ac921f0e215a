"""Excel workbooks as data and round files: read like the same table saved as CSV, and every error is one
line naming the file, the sheet and the row number Excel shows."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
import yaml

from lyra.campaign.config import load_config
from lyra.data.config import DataConfig
from lyra.data.dataset import load_dataset
from prepared import prepare
from lyra.data.readers import read_table
from lyra.errors import ConfigError, DataError
from lyra.campaign.rounds import completed_rounds

BIN = Path(sys.executable).parent
WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLI"
ROWS = [  # (variant, score): enough rows for a random split of every kind
    ("WT", 0.0), ("M1A", 1.5), ("K2A", -0.25), ("T3V", 2.0), ("A4G", 0.125), ("Y5F", -1.0),
    ("I6L", 0.75), ("A7S", 3.5), ("K8R", -2.0), ("Q9E", 1.0), ("R10K", 0.5), ("M1A:K2A", 1.25),
    ("T3V:A4G", 2.25), ("Y5F:I6L", -0.5), ("A7S:K8R", 1.75), ("Q9E:R10K", 0.0625),
]
TRAIN_ONLY = {"fractions": {"train": 1.0}, "valid_fraction": 0}


def workbook(path: Path, rows: list, sheet: str = "Results", first_row: int = 1, notes_first: bool = True):
    """A workbook with a 'Notes' sheet first (so the sheet is chosen by name) and the table from `first_row`."""
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    book.active["A1"] = "plate 3, read 2026-01-12"
    ws = book.create_sheet(sheet) if notes_first else book.active
    for k, row in enumerate(rows):
        for j, value in enumerate(row, start=1):
            ws.cell(first_row + k, j, value)
    book.save(path)
    return book, ws


def data_cfg(path, **kw) -> dict:
    return {"path": str(path), "mutations_column": "variant", "wild_type": WT, "target_column": "score",
            "sheet": "Results", **kw}


def fail(data: dict, tmp_path: Path, **kw) -> str:
    out = tmp_path / "refused"
    with pytest.raises(DataError) as info:
        prepare(data, TRAIN_ONLY, out, **kw)
    message = str(info.value)
    assert "\n" not in message, message
    assert not out.exists() or not any(out.iterdir())  # nothing written
    return message


def with_saved_values(path: Path, values: dict[str, str]) -> None:
    """Store a saved value for formula cells, as Excel does on saving (openpyxl writes formulas without one)."""
    with zipfile.ZipFile(path) as z:
        parts = {name: z.read(name) for name in z.namelist()}
    for name, data in parts.items():
        if name.startswith("xl/worksheets/sheet"):
            text = data.decode()
            for cell, value in values.items():
                text = re.sub(rf'(<c r="{cell}"[^>]*>)<f>(.*?)</f><v\s*/>', rf"\1<f>\2</f><v>{value}</v>", text)
            parts[name] = text.encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)


def lyra(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lyra"), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ end to end


def test_workbook_through_lyra_preprocess_gives_the_dataset_of_the_same_csv(tmp_path):
    pd.DataFrame(ROWS, columns=["variant", "score"]).to_csv(tmp_path / "plate.csv", index=False)
    # the same table as a lab saves it: a number typed as text, one computed by a formula
    cells = [["variant", "score"], *[list(r) for r in ROWS]]
    cells[2][1] = "1.5"
    cells[4][1] = "=B4*-8"  # T3V: 2.0 = -0.25 * -8
    _, ws = workbook(tmp_path / "plate.xlsx", cells)
    with_saved_values(tmp_path / "plate.xlsx", {"B5": "2"})

    outputs = {}
    for name in ("plate.csv", "plate.xlsx"):
        data = {"path": name, "mutations_column": "variant", "wild_type": WT, "target_column": "score"}
        if name.endswith(".xlsx"):
            data["sheet"] = "Results"
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"campaign": "excel", "data": data, "split": {"seed": 1}}))
        proc = lyra(tmp_path, "preprocess", "--config", config.name, "--out", f"out_{name}/dataset.parquet")
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = load_dataset(tmp_path / f"out_{name}" / "dataset.parquet")
    csv, xlsx = outputs["plate.csv"], outputs["plate.xlsx"]
    pd.testing.assert_frame_equal(csv.frame, xlsx.frame)
    assert len(xlsx.frame) == len(ROWS)
    assert xlsx.meta["data_config"]["sheet"] == "Results"
    assert xlsx.meta["counts"] == csv.meta["counts"]


def test_bad_row_names_the_file_sheet_and_excel_row_in_one_line(tmp_path):
    # header on Excel row 3 (two empty rows above), so the 4th data row is Excel row 7
    cells = [["variant", "score"], *[list(r) for r in ROWS]]
    cells[4][1] = "high"
    workbook(tmp_path / "plate3.xlsx", cells, first_row=3)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"campaign": "excel", "data": data_cfg("plate3.xlsx")}))
    proc = lyra(tmp_path, "preprocess", "--config", "c.yaml", "--out", "out/dataset.parquet")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].endswith("plate3.xlsx, sheet 'Results', row 7: column 'score': target 'high' is not a number")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_column_names_the_header_row_below_empty_rows(tmp_path):
    workbook(tmp_path / "plate.xlsx", [["mutant", "score"], ["WT", 1.0]], first_row=4)
    message = fail(data_cfg(tmp_path / "plate.xlsx"), tmp_path)
    assert "plate.xlsx, sheet 'Results', row 4: no column 'variant' (data.mutations_column)" in message


# ------------------------------------------------------------------------------------------ sheets


def test_missing_sheet_is_one_line_listing_the_sheets(tmp_path):
    workbook(tmp_path / "plate.xlsx", [["variant", "score"], ["WT", 1.0]])
    message = fail(data_cfg(tmp_path / "plate.xlsx", sheet="Plate 9"), tmp_path)
    assert message.endswith("plate.xlsx: no sheet 'Plate 9' (data.sheet); the sheets are: 'Notes', 'Results'")
    message = fail(data_cfg(tmp_path / "plate.xlsx", sheet=2), tmp_path)
    assert "no sheet at index 2 (data.sheet counts from 0); the sheets are: 'Notes', 'Results'" in message


def test_sheet_by_index_and_the_first_sheet_by_default(tmp_path):
    workbook(tmp_path / "plate.xlsx", [["variant", "score"], ["WT", 1.0], ["M1A", 2.0]])
    assert list(read_table(tmp_path / "plate.xlsx", sheet=1)["variant"]) == ["WT", "M1A"]
    with pytest.raises(DataError, match="plate.xlsx, sheet 'Notes', row 2: no data rows"):
        read_table(tmp_path / "plate.xlsx")  # the first sheet holds one line of notes
    workbook(tmp_path / "one.xlsx", [["variant", "score"], ["WT", 1.0], ["M1A", 2.0]], notes_first=False)
    out = prepare(data_cfg(tmp_path / "one.xlsx", sheet=None), TRAIN_ONLY, tmp_path / "out")
    assert len(load_dataset(out).frame) == 2


def test_sheet_key_is_a_name_or_an_index(tmp_path):
    for bad in (-1, "", True, 1.5):
        with pytest.raises(ConfigError, match="data.sheet"):
            DataConfig(**data_cfg("plate.xlsx", sheet=bad))
    for good in ("Results", 0, 3):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"campaign": "x", "data": data_cfg("plate.xlsx", sheet=good)}))
        assert load_config(tmp_path / "c.yaml")["data"]["sheet"] == good
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"campaign": "x", "data": data_cfg("plate.csv", sheet=None)}))
    assert load_config(tmp_path / "c.yaml")["data"]["sheet"] is None


# ------------------------------------------------------------------------------------------ cell contents


def test_numbers_stored_as_text_are_parsed_like_csv(tmp_path):
    text = [("WT", "0"), ("M1A", " 1.5 "), ("K2A", "1e-3"), ("T3V", "-2"), ("A4G", "NA"), ("Y5F", "")]
    workbook(tmp_path / "plate.xlsx", [["variant", "score"], *text])
    pd.DataFrame(text, columns=["variant", "score"]).to_csv(tmp_path / "plate.csv", index=False)
    a = load_dataset(prepare(data_cfg(tmp_path / "plate.xlsx"), TRAIN_ONLY, tmp_path / "a")).frame
    b = load_dataset(prepare(data_cfg(tmp_path / "plate.csv"), TRAIN_ONLY, tmp_path / "b")).frame
    assert list(a["score"]) == [0.0, 1.5, 0.001, -2.0]
    pd.testing.assert_frame_equal(a, b)

    workbook(tmp_path / "comma.xlsx", [["variant", "score"], ("WT", "0"), ("M1A", "1,5")])
    message = fail(data_cfg(tmp_path / "comma.xlsx"), tmp_path)
    assert message.endswith("comma.xlsx, sheet 'Results', row 3: column 'score': target '1,5' is not a number")


def test_formula_without_a_saved_value_names_the_cell(tmp_path):
    workbook(tmp_path / "plate.xlsx", [["variant", "score"], ("WT", 1.0), ("M1A", "=B2*2")])
    message = fail(data_cfg(tmp_path / "plate.xlsx"), tmp_path)
    assert "plate.xlsx, sheet 'Results', row 3: cell B3 holds a formula (=B2*2) with no saved value" in message
    with_saved_values(tmp_path / "plate.xlsx", {"B3": "2"})
    out = prepare(data_cfg(tmp_path / "plate.xlsx"), TRAIN_ONLY, tmp_path / "out")
    assert list(load_dataset(out).frame["score"]) == [1.0, 2.0]


def test_merged_header_cells_are_an_error_naming_the_cells(tmp_path):
    # 'score' spans B1:C1 over two replicate columns: the second would be silently unnamed
    book, ws = workbook(tmp_path / "plate.xlsx", [["variant", "score", None], ("WT", 1.0, 1.1), ("M1A", 2.0, 2.2)])
    ws.merge_cells("B1:C1")
    book.save(tmp_path / "plate.xlsx")
    message = fail(data_cfg(tmp_path / "plate.xlsx"), tmp_path)
    assert message.endswith("plate.xlsx, sheet 'Results', row 1: header cells B1:C1 are merged, so only the first "
                            "of their columns is named ('score'); unmerge them and give each column its own header cell")


def test_merged_data_cells_are_an_error_naming_the_cells(tmp_path):
    book, ws = workbook(tmp_path / "plate.xlsx", [["variant", "score"], ("WT", 1.0), ("M1A", 2.0), (None, 2.1)])
    ws.merge_cells("A3:A4")  # one variant written once over its two replicates
    book.save(tmp_path / "plate.xlsx")
    message = fail(data_cfg(tmp_path / "plate.xlsx"), tmp_path)
    assert "sheet 'Results', row 3: cells A3:A4 are merged: only the first holds 'M1A'" in message


def test_duplicate_and_unnamed_header_cells(tmp_path):
    workbook(tmp_path / "dup.xlsx", [["variant", "score", "score"], ("WT", 1.0, 1.1)])
    message = fail(data_cfg(tmp_path / "dup.xlsx"), tmp_path)
    assert "row 1: column name 'score' is in the header twice (B1 and C1)" in message
    # a column with values but no name is kept under its letter: a config cannot name it, but it is listed
    workbook(tmp_path / "unnamed.xlsx", [["variant", None, "score"], ("WT", "x", 1.0)])
    assert list(read_table(tmp_path / "unnamed.xlsx", sheet="Results").columns) == ["variant", "Unnamed: B", "score"]


def test_empty_trailing_rows_and_columns_are_dropped_and_rows_keep_their_numbers(tmp_path):
    book, ws = workbook(tmp_path / "plate.xlsx", [["variant", "score"], ("WT", 0.0), ("M1A", 1.0), (), ("K2A", 2.0)])
    for row in range(6, 40):  # formatted but empty: part of the sheet's extent, not of the table
        ws.cell(row, 1).number_format = "0.00"
        ws.cell(row, 2).value = ""
    ws.cell(2, 8).number_format = "0.00"
    book.save(tmp_path / "plate.xlsx")
    frame = read_table(tmp_path / "plate.xlsx", sheet="Results")
    assert list(frame.columns) == ["variant", "score"]
    assert list(frame.index) == [2, 3, 5]  # Excel's row numbers; the empty row 4 is skipped
    assert frame.attrs["blank_lines"] == 1
    out = prepare(data_cfg(tmp_path / "plate.xlsx"), TRAIN_ONLY, tmp_path / "out")
    assert "| blank lines skipped | 1 |" in (tmp_path / "out" / "report.md").read_text()
    assert len(load_dataset(out).frame) == 3

    ws.cell(5, 2).value = "?"  # after the skipped row, still named by Excel's number
    book.save(tmp_path / "plate.xlsx")
    assert "sheet 'Results', row 5: column 'score': target '?' is not a number" in fail(
        data_cfg(tmp_path / "plate.xlsx"), tmp_path)


def test_header_only_and_empty_sheet(tmp_path):
    workbook(tmp_path / "head.xlsx", [["variant", "score"]], first_row=2)
    assert fail(data_cfg(tmp_path / "head.xlsx"), tmp_path).endswith(
        "head.xlsx, sheet 'Results', row 3: no data rows (the sheet holds only a header)")
    workbook(tmp_path / "empty.xlsx", [])
    assert fail(data_cfg(tmp_path / "empty.xlsx"), tmp_path).endswith(
        "empty.xlsx, sheet 'Results', row 1: the sheet is empty")


def test_not_a_workbook_and_old_xls(tmp_path):
    (tmp_path / "plate.xlsx").write_text("variant,score\nWT,1.0\nM1A,2.0\n")  # a CSV renamed
    message = fail(data_cfg(tmp_path / "plate.xlsx"), tmp_path)
    assert "named like an Excel workbook but is not one" in message and "set data.format" in message
    out = prepare(data_cfg(tmp_path / "plate.xlsx", format="csv"), TRAIN_ONLY, tmp_path / "out")
    assert len(load_dataset(out).frame) == 2
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(ConfigError, match="Excel 97-2003 workbook; save it as .xlsx"):
        prepare(data_cfg(tmp_path / "old.xls"), TRAIN_ONLY, tmp_path / "out2")


# ------------------------------------------------------------------------------------------ rounds


def test_round_file_in_excel(tmp_path):
    pd.DataFrame(ROWS[:10], columns=["variant", "score"]).to_csv(tmp_path / "plate.csv", index=False)
    (tmp_path / "rounds" / "1").mkdir(parents=True)
    round1 = tmp_path / "rounds" / "1" / "measurements.xlsx"
    workbook(round1, [["variant", "score"], *ROWS[10:]])
    out = prepare(data_cfg(tmp_path / "plate.csv"), TRAIN_ONLY, tmp_path / "out", rounds=[round1])
    dataset = load_dataset(out)
    assert len(dataset.frame) == len(ROWS)
    assert dataset.meta["counts"]["variants_only_in_rounds"] == len(ROWS) - 10

    # a bad round row names the round's file and sheet; so does a replicate that disagrees across files
    workbook(round1, [["variant", "score", "id"], ("M1A:K2A", 1.0, "v1"), ("T3V:A4G", "n/d?", "v2")])
    message = fail(data_cfg(tmp_path / "plate.csv"), tmp_path, rounds=[round1])
    assert message.endswith("rounds/1/measurements.xlsx, sheet 'Results', row 3: column 'score': "
                            "target 'n/d?' is not a number")
    workbook(round1, [["variant", "score", "id"], ("M1A:K2A", 1.0, "v1")])
    pd.DataFrame([("WT", 0.0, "v1")], columns=["variant", "score", "id"]).to_csv(tmp_path / "plate.csv", index=False)
    message = fail(data_cfg(tmp_path / "plate.csv", id_column="id"), tmp_path, rounds=[round1])
    assert "measurements.xlsx, sheet 'Results', row 2: variant id 'v1' was already used" in message
    assert "at plate.csv row 2" in message


def test_an_excel_round_counts_as_a_completed_round(tmp_path):
    (tmp_path / "1").mkdir()
    workbook(tmp_path / "1" / "measurements.xlsx", [["variant", "score"], *ROWS[:3]])
    assert completed_rounds(tmp_path) == [1]
