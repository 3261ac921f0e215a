"""The plate map: which pick goes in which well, as a lab fills a plate.

Wells are filled in rank order, down the columns (`rank.fill: column`: A1, B1, ..., H1, A2, ...) or
along the rows (`row`: A1, A2, ..., A12, B1, ...), of 96-well (8 x 12) or 384-well (16 x 24) plates
(`rank.plate`). The controls (`rank.controls`, e.g. the wild type in two wells) go on every plate, in
its last wells in fill order, so each plate carries its own controls at the same positions: a plate
holds `wells - control wells` picks, and more picks spill over to further plates. Wells left between
the last pick and the controls are listed as `empty`, so the file shows the whole of every plate.

plate.csv columns: plate (1, 2, ...), well (A1), row (A), column (1), content (pick, control or
empty), rank (picks only), variant_id, mutations (the control's mutations; empty for the wild type).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from lyra.design.rank import RankConfig
from lyra.errors import ConfigError
from lyra.schema import section_schema

PLATES = {96: (8, 12), 384: (16, 24)}  # wells -> (rows, columns); rank.plate's enum in lyra/schema.yaml
CONTROL_WELLS = section_schema("rank")["properties"]["controls"]["items"]["properties"]["wells"]["default"]
PLATE_COLUMNS = ["plate", "well", "row", "column", "content", "rank", "variant_id", "mutations"]


@dataclass(frozen=True)
class Control:
    variant_id: str  # 'WT' or the canonical mutation string, as in ranking.csv
    mutations: str  # '' for the wild type
    wells: int


@dataclass
class PlateConfig:
    """The plate keys of the rank section (rank.plate, rank.fill, rank.controls). Build it with
    `from_rank`, which checks them against the schema through `RankConfig`."""

    plate: int  # wells per plate: a key of PLATES
    fill: str  # column | row
    controls: list  # [{variant: WT, wells: 2}, ...]

    def __post_init__(self) -> None:
        if self.control_wells >= self.plate:
            raise ConfigError(f"rank.controls: {self.control_wells} control wells leave no well of a "
                              f"{self.plate}-well plate for the picks")

    @property
    def control_wells(self) -> int:
        return sum(c.get("wells", CONTROL_WELLS) for c in self.controls)

    @property
    def picks_per_plate(self) -> int:
        return self.plate - self.control_wells

    @classmethod
    def from_rank(cls, rank: RankConfig | Mapping[str, Any] | None) -> "PlateConfig":
        """From the rank section (a mapping, checked, or a RankConfig)."""
        rank = rank if isinstance(rank, RankConfig) else RankConfig.from_dict(rank)
        return cls(plate=rank.plate, fill=rank.fill, controls=list(rank.controls))

    def resolve_controls(self, wild_type: str | None, first_position: int = 1,
                         separators: str = ":,;") -> list[Control]:
        """The controls as variants of the campaign: 'WT' (any spelling of the wild type) or mutations
        of the wild type, each checked against it and written canonically."""
        from lyra.data.variants import format_mutations, is_wild_type_token, parse_mutations

        out: list[Control] = []
        for k, c in enumerate(self.controls):
            text = str(c["variant"]).strip()
            if wild_type is None:
                raise ConfigError(f"rank.controls[{k}]: {text!r} needs the wild type (data.wild_type)")
            try:
                mutations = "" if is_wild_type_token(text) else format_mutations(
                    parse_mutations(text, wild_type, first_position, separators))
            except ValueError as e:
                raise ConfigError(f"rank.controls[{k}].variant: {e}") from None
            variant_id = mutations or "WT"
            if any(o.variant_id == variant_id for o in out):
                raise ConfigError(f"rank.controls[{k}]: {variant_id} is listed twice; give its number of wells instead")
            out.append(Control(variant_id, mutations, int(c.get("wells", CONTROL_WELLS))))
        return out


def well_names(plate: int = 96, fill: str = "column") -> list[str]:
    """Every well of a plate in fill order: column (A1, B1, ..., A2, ...) or row (A1, A2, ..., B1, ...)."""
    n_rows, n_cols = PLATES[plate]
    rows = string.ascii_uppercase[:n_rows]
    if fill == "column":
        return [f"{r}{c}" for c in range(1, n_cols + 1) for r in rows]
    return [f"{r}{c}" for r in rows for c in range(1, n_cols + 1)]


def plate_map(picks: pd.DataFrame, cfg: PlateConfig, controls: Sequence[Control] = ()) -> pd.DataFrame:
    """One row per well of every plate needed (columns PLATE_COLUMNS), the picks (columns rank,
    variant_id, mutations) in rank order."""
    wells = well_names(cfg.plate, cfg.fill)
    per_plate = cfg.plate - sum(c.wells for c in controls)
    control_wells = [c for c in controls for _ in range(c.wells)]
    n_plates = max(1, -(-len(picks) // per_plate))
    records = picks[["rank", "variant_id", "mutations"]].to_dict("records")
    rows = []
    for p in range(n_plates):
        batch = records[p * per_plate: (p + 1) * per_plate]
        for k, well in enumerate(wells):
            row = {"plate": p + 1, "well": well, "row": well[0], "column": int(well[1:])}
            if k < len(batch):
                pick = batch[k]
                row.update(content="pick", rank=pick["rank"], variant_id=pick["variant_id"],
                           mutations=pick["mutations"])
            elif k >= per_plate:
                c = control_wells[k - per_plate]
                row.update(content="control", variant_id=c.variant_id, mutations=c.mutations)
            else:
                row.update(content="empty")
            rows.append(row)
    out = pd.DataFrame(rows, columns=PLATE_COLUMNS)
    out["rank"] = out["rank"].astype("Int64")  # blank, not NaN, for controls and empty wells
    return out


def write_plate(table: pd.DataFrame, path: str | Path) -> Path:
    from lyra.io import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    return Path(path)
