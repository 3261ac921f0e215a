"""The plate map: wells in the order a lab fills them, controls on every plate, overflow onto more plates."""

from __future__ import annotations

import struct

import pandas as pd
import pytest

from lyra.errors import ConfigError
from lyra.design.plate import PlateConfig, plate_map, well_names

WT = "MKTAYIAKQRQISFVKSHFS"


def picks(n: int) -> pd.DataFrame:
    muts = [f"T3{aa}:Y5{bb}" for aa in "ACDEFGHIKLMNPQRSVW" for bb in "ACDEFGHIKLMNPQRSTVW"][:n]
    return pd.DataFrame({"rank": range(1, n + 1), "variant_id": muts, "mutations": muts})


def test_wells_in_column_and_row_order():
    col = well_names(96, "column")
    assert col[:10] == ["A1", "B1", "C1", "D1", "E1", "F1", "G1", "H1", "A2", "B2"] and col[-1] == "H12"
    row = well_names(96, "row")
    assert row[:13] == [f"A{c}" for c in range(1, 13)] + ["B1"] and row[-1] == "H12"
    assert len(set(col)) == len(set(row)) == 96 and set(col) == set(row)
    big = well_names(384, "column")
    assert len(set(big)) == 384 and big[:17] == [f"{r}1" for r in "ABCDEFGHIJKLMNOP"] + ["A2"] and big[-1] == "P24"
    assert well_names(384, "row")[23:25] == ["A24", "B1"]


@pytest.mark.parametrize("fill", ["column", "row"])
def test_picks_fill_in_rank_order_and_controls_take_the_last_wells(fill):
    cfg = PlateConfig.from_rank({"plate": 96, "fill": fill, "controls": [{"variant": "WT", "wells": 2}, {"variant": "y5f:t3a"}]})
    controls = cfg.resolve_controls(WT)
    assert [(c.variant_id, c.mutations, c.wells) for c in controls] == [("WT", "", 2), ("T3A:Y5F", "T3A:Y5F", 1)]
    table = plate_map(picks(10), cfg, controls)
    assert list(table.columns) == ["plate", "well", "row", "column", "content", "rank", "variant_id", "mutations"]
    assert len(table) == 96 and set(table["plate"]) == {1}
    assert table["well"].tolist() == well_names(96, fill)  # every well listed, in fill order
    got = table[table["content"] == "pick"]
    assert got["rank"].tolist() == list(range(1, 11))
    assert got["well"].tolist() == well_names(96, fill)[:10]
    assert got["variant_id"].tolist() == picks(10)["variant_id"].tolist()
    ctrl = table[table["content"] == "control"]
    assert ctrl["well"].tolist() == well_names(96, fill)[-3:]  # the last 3 in fill order
    assert ctrl["variant_id"].tolist() == ["WT", "WT", "T3A:Y5F"] and ctrl["rank"].isna().all()
    assert (table["content"] == "empty").sum() == 96 - 10 - 3
    assert table.loc[table["well"] == "A1", ["row", "column"]].values.tolist() == [["A", 1]]


def test_more_picks_than_wells_go_on_further_plates_each_with_its_controls():
    cfg = PlateConfig.from_rank({"plate": 96, "controls": [{"variant": "WT", "wells": 2}]})
    table = plate_map(picks(200), cfg, cfg.resolve_controls(WT))
    assert sorted(set(table["plate"])) == [1, 2, 3] and len(table) == 3 * 96
    for p in (1, 2, 3):
        plate = table[table["plate"] == p]
        assert plate["well"].tolist() == well_names(96, "column")
        assert plate.loc[plate["content"] == "control", "well"].tolist() == ["G12", "H12"]
    ranks = table.loc[table["content"] == "pick", ["plate", "rank"]]
    assert ranks["rank"].tolist() == list(range(1, 201))
    assert ranks.groupby("plate")["rank"].agg(["min", "max"]).values.tolist() == [[1, 94], [95, 188], [189, 200]]
    assert (table.loc[table["plate"] == 3, "content"] == "empty").sum() == 96 - 12 - 2
    # exactly full: no third plate
    assert set(plate_map(picks(188), cfg, cfg.resolve_controls(WT))["plate"]) == {1, 2}
    # no controls: a 384-well plate holds 384 picks
    big = plate_map(picks(300), PlateConfig.from_rank({"plate": 384, "fill": "row"}))
    assert set(big["plate"]) == {1} and (big["content"] == "empty").sum() == 84 and big["well"].iloc[-1] == "P24"


def test_written_plate_keeps_blank_ranks(tmp_path):
    from lyra.design.plate import write_plate

    cfg = PlateConfig.from_rank({"controls": [{"variant": "WT", "wells": 1}]})
    path = write_plate(plate_map(picks(2), cfg, cfg.resolve_controls(WT)), tmp_path / "plate.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "plate,well,row,column,content,rank,variant_id,mutations"
    assert lines[1] == "1,A1,A,1,pick,1,T3A:Y5A,T3A:Y5A"
    assert lines[3] == "1,C1,C,1,empty,,," and lines[-1] == "1,H12,H,12,control,,WT,"


def test_control_settings_are_checked():
    with pytest.raises(ConfigError, match=r"'rank.plate': 100 is not one of \[96, 384\]"):
        PlateConfig.from_rank({"plate": 100})
    with pytest.raises(ConfigError, match="'rank.fill'"):
        PlateConfig.from_rank({"fill": "diagonal"})
    with pytest.raises(ConfigError, match=r"'rank.controls.0.wells': 0 is less than the minimum of 1"):
        PlateConfig.from_rank({"controls": [{"variant": "WT", "wells": 0}]})
    with pytest.raises(ConfigError, match=r"'rank.controls.0.variant'"):
        PlateConfig.from_rank({"controls": [{"variant": " "}]})
    with pytest.raises(ConfigError, match="96 control wells leave no well"):
        PlateConfig.from_rank({"controls": [{"variant": "WT", "wells": 96}]})
    with pytest.raises(ConfigError, match=r"rank.controls\[0\].variant: mutation K3A: the wild type has T at position 3"):
        PlateConfig.from_rank({"controls": [{"variant": "K3A"}]}).resolve_controls(WT)
    with pytest.raises(ConfigError, match=r"rank.controls\[1\]: WT is listed twice"):
        PlateConfig.from_rank({"controls": [{"variant": "WT"}, {"variant": "wt"}]}).resolve_controls(WT)
    with pytest.raises(ConfigError, match="needs the wild type"):
        PlateConfig.from_rank({"controls": [{"variant": "WT"}]}).resolve_controls(None)


@pytest.mark.parametrize("plate, n", [(96, 100), (384, 30)])
def test_plate_picture(tmp_path, plate, n):
    from lyra.report.figures import plot_plate

    cfg = PlateConfig.from_rank({"plate": plate, "controls": [{"variant": "WT", "wells": 2}]})
    out = plot_plate(plate_map(picks(n), cfg, cfg.resolve_controls(WT)), tmp_path / "plate.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert w > 1000 and h > 600  # the grid, not the 840x312 'not available' panel
