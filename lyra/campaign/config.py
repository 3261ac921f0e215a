"""The campaign config: load YAML, fill defaults from the schema, validate, resolve paths.

One schema (`lyra/schema.yaml`, also at `config/schema.yaml`) is the single description of every key,
its default and its meaning. The Snakefile and the `lyra` CLI both go through `resolve_config`, so a
campaign behaves the same with and without Snakemake.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from lyra.errors import ConfigError
from lyra.schema import error_message, first_error, load_schema, unknown_key_message


# Which config sections each stage reads; a stage reruns only when its own sections change.
STAGE_SECTIONS = {
    "preprocess": ("campaign", "seed", "data", "split", "rounds"),
    "tune": ("campaign", "seed", "model", "train", "tune", "prior"),
    "train": ("campaign", "seed", "model", "train", "prior"),
    "score": ("campaign", "seed", "library", "train"),  # train.device
    "rank": ("campaign", "seed", "data", "library", "rank"),  # data.wild_type_dna
    "report": ("campaign", "seed", "report"),
    # retrospective campaigns (snakemake simulate): not part of a campaign's own run or report
    "simulate": ("campaign", "seed", "data", "model", "train", "prior", "rank", "simulate"),
}
CAMPAIGN_STAGES = ("preprocess", "tune", "train", "score", "rank", "report")


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read a campaign YAML, apply `section.key=value` overrides, fill defaults and validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    if not path.is_file():
        raise ConfigError(f"{path}: is not a file (give the campaign's YAML config)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a campaign config is a mapping of keys, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    # Relative paths resolve against the working directory, as in Snakemake, so one config means the
    # same files whichever way it is run.
    return resolve_config(raw, base_dir=Path.cwd(), source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice (YAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def resolve_config(raw: Mapping[str, Any], base_dir: str | os.PathLike = ".", source: str = "config") -> dict:
    """Defaults filled in, schema-validated, relative data paths made absolute against `base_dir`."""
    schema = load_schema()
    config = copy.deepcopy(dict(raw))
    # A stage config written by the workflow carries the directory its paths were resolved against.
    base_dir = config.pop("_base_dir", base_dir)
    stage = config.pop("_stage", None)  # a stage config holds only that stage's sections
    source = config.pop("_source", None) or source  # the user's file, which errors should name
    _check_unknown_keys(config, schema, source, prefix="")
    _fill_defaults(config, schema)
    if stage is not None:  # a stage config holds only its own sections: check those
        schema = {**schema, "required": [k for k in schema.get("required", []) if k in config]}
    error = first_error(config, schema)
    if error is not None:
        raise ConfigError(error_message(error, source))
    config["_base_dir"] = str(Path(base_dir).resolve())
    config["_source"] = source
    if stage is not None:
        config = {k: v for k, v in config.items() if k in STAGE_SECTIONS[stage] or k.startswith("_")}
    return config


def stage_config(config: Mapping[str, Any], stage: str) -> dict:
    """The subset of the config a stage reads (what its rerun trigger should watch)."""
    sections = STAGE_SECTIONS[stage]
    sub = {k: copy.deepcopy(config[k]) for k in sections if k in config}
    sub["_base_dir"] = config.get("_base_dir", ".")
    sub["_stage"] = stage
    return sub


def write_stage_config(config: Mapping[str, Any], stage: str, path: str | os.PathLike) -> bool:
    """Write the stage's config file unless it already holds the same settings; return whether it was
    written. A rewritten file is newer than the stage's outputs, so that stage and every later one
    rerun (the workflow's params trigger does the same). The user's file name (`_source`, named in
    errors) is recorded but is no setting: a renamed config file reruns nothing."""
    from lyra.io import write_text

    new = stage_config(config, stage)
    path = Path(path)
    if path.is_file():
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            old = None
        if isinstance(old, dict) and _settings(old) == _settings(new):
            return False
    write_text(path, dump({**new, "_source": config.get("_source")}))
    return True


def _settings(stage_cfg: Mapping[str, Any]) -> dict:
    return {k: v for k, v in stage_cfg.items() if k != "_source"}


def dump(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """CLI `--set train.max_epochs=5` pairs; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.max_epochs=5")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML (quote it, e.g. key='[1'") from None
    return out


# --- schema helpers ---------------------------------------------------------------------------------


def _set_dotted(config: dict, dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is not a section")
    node[leaf] = value


def _fill_defaults(node: Any, schema: dict) -> None:
    if not isinstance(node, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        if key in node:
            _fill_defaults(node[key], sub)


def _check_unknown_keys(node: Any, schema: dict, source: str, prefix: str) -> None:
    """jsonschema reports additionalProperties without naming the key well; do it ourselves."""
    if not isinstance(node, dict) or schema.get("type") != "object":
        return
    props = schema.get("properties", {})
    if schema.get("additionalProperties", True) is False:
        for key in node:
            if key not in props and not str(key).startswith("_"):
                raise ConfigError(unknown_key_message(key, props, prefix, source))
    for key, sub in props.items():
        if key in node:
            _check_unknown_keys(node[key], sub, source, f"{prefix}{key}.")
