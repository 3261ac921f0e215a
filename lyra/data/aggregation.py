"""Merging repeated measurements of one variant (replicates) into one row, per data.aggregate.

Rows of every input file arrive together (the data file, then campaign rounds), each with `_src` (its
file) and `_line` (its row there), so a conflict names the row that breaks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lyra.data.config import DataConfig
from lyra.errors import DataError


def _row_error(wheres: list[str], row: pd.Series, message: str) -> DataError:
    """`wheres`: each input file as errors name it (a workbook: with its sheet), by `_src`."""
    return DataError(message, wheres[int(row["_src"])], int(row["_line"]))


def check_ids(rows: pd.DataFrame, wheres: list[str]) -> None:
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


def aggregate(rows: pd.DataFrame, cfg: DataConfig, wheres: list[str]) -> tuple[pd.DataFrame, int]:
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
