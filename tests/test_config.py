"""The campaign config: defaults, validation errors that name the key, paths, stage subsets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lyra.schema import load_schema
from lyra.campaign.config import load_config, parse_overrides, resolve_config, stage_config
from lyra.io import resolve_path
from lyra.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"campaign": "c1", "data": {"path": "x.csv", "target_column": "y"}}


def test_demo_config_is_valid_and_gets_defaults():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg["campaign"] == "cr6261_demo"
    assert cfg["train"]["batch_size"] == 32 and cfg["train"]["lr"] == 1e-3  # set, and a default filled in
    assert cfg["rank"]["diversity"]["max_per_mutation"] is None
    assert cfg["rank"]["diversity"]["min_hamming"] == 2
    assert cfg["data"]["max_mutations"] == 3 and cfg["rounds"]["dir"] == "rounds/cr6261_demo"


def test_config_dir_schema_is_the_package_schema():
    assert (ROOT / "config" / "schema.yaml").read_text() == (ROOT / "lyra" / "schema.yaml").read_text()


def test_unknown_key_is_named_with_suggestion():
    raw = {**MINIMAL, "train": {"max_epoch": 3}}
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_epoch' \(did you mean 'train.max_epochs'\?\)"):
        resolve_config(raw)


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        resolve_config({**MINIMAL, "trian": {}})


def test_bad_value_names_the_key():
    raw = {**MINIMAL, "split": {"method": "stratified"}}
    with pytest.raises(ConfigError, match="config key 'split.method'"):
        resolve_config(raw)
    with pytest.raises(ConfigError, match="config key 'train.seeds'"):
        resolve_config({**MINIMAL, "train": {"seeds": 0}})


def test_missing_required_key():
    with pytest.raises(ConfigError, match="config key 'data' is required"):
        resolve_config({"campaign": "c1"})
    with pytest.raises(ConfigError, match="config key 'data.target_column' is required"):
        resolve_config({"campaign": "c1", "data": {"path": "x.csv"}})


def test_campaign_name_cannot_escape_results(tmp_path):
    with pytest.raises(ConfigError, match="config key 'campaign'"):
        resolve_config({**MINIMAL, "campaign": "../etc"})


def test_overrides_are_parsed_as_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(p, parse_overrides(["train.max_epochs=7", "model.bidirectional=true", "rank.kappa=0.5"]))
    assert cfg["train"]["max_epochs"] == 7 and cfg["model"]["bidirectional"] is True and cfg["rank"]["kappa"] == 0.5
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.max_epochs"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("campaign: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+: not valid YAML"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_package_path_resolves_to_shipped_demo_data():
    path = resolve_path("package://ewht/example_data/cr6261_h1_mean.csv")
    assert Path(path).is_file() and Path(path).read_text().startswith("mutant")
    with pytest.raises(ConfigError, match="no file"):
        resolve_path("package://ewht/example_data/missing.csv")
    with pytest.raises(ConfigError, match="not installed"):
        resolve_path("package://no_such_pkg_xyz/file.csv")


def test_stage_config_holds_only_its_sections():
    cfg = resolve_config(MINIMAL)
    rank = stage_config(cfg, "rank")
    assert set(rank) == {"campaign", "seed", "data", "library", "rank", "_base_dir", "_stage"}  # data.wild_type_dna
    train = stage_config(cfg, "train")
    assert "rank" not in train and "model" in train
    # A stage config written to disk loads back on its own (no 'data' section needed for training).
    again = resolve_config(train)
    assert again["train"] == cfg["train"] and "data" not in again and "rank" not in again


def _schema_defaults(section: str) -> dict:
    props = load_schema()["properties"][section]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


@pytest.mark.parametrize(
    "section, module, cls, skip",
    [
        ("data", "lyra.data.config", "DataConfig", {"path", "target_column"}),
        ("split", "lyra.data.config", "SplitConfig", set()),
        ("model", "lyra.model.lyra", "LyraConfig", {"d_input", "d_output", "token_level", "ssm_lr", "dt_min", "dt_max"}),
        ("train", "lyra.learn.train", "TrainConfig", set()),
        ("tune", "lyra.tune.study", "TuneConfig", {"seed", "search_space"}),
        ("library", "lyra.design.library", "LibraryConfig", set()),
        ("rank", "lyra.design.rank", "RankConfig", set()),
    ],
)
def test_schema_defaults_match_the_dataclasses(section, module, cls, skip):
    """One default per key: the schema (what users read) and the code must agree."""
    import importlib

    dc = getattr(importlib.import_module(module), cls)
    fields = {f.name: f for f in dataclasses.fields(dc)}
    for key, default in _schema_defaults(section).items():
        if key in skip or key not in fields:
            continue
        f = fields[key]
        code_default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(code_default, tuple):
            code_default = list(code_default)
        assert code_default == default, f"{section}.{key}: schema {default!r} != {cls} {code_default!r}"
