"""The one definition of every config key: `lyra/schema.yaml` (also at `config/schema.yaml`).

Each key's type, default, bounds and description live there and nowhere else. Config files are
checked against it (`lyra.campaign.config.resolve_config`), and the typed views the code reads, plain
dataclasses such as `TrainConfig`, are derived from it with `@schema_fields("train")`: the decorator
takes each field's default from the schema, refuses a field the schema lacks (or a schema key without
a field), and validates every instance against the schema, so a Python caller gets the same one-line
errors as a config file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from lyra.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def load_schema() -> dict:
    """The whole schema (a copy: callers may change it)."""
    return copy.deepcopy(_schema())


def section_schema(section: str) -> dict:
    """The schema of one dotted section, e.g. 'train' or 'rank.diversity'."""
    node = _schema()
    for part in section.split("."):
        node = node["properties"][part]
    return node


def keys(node: Mapping[str, Any] | None = None, prefix: str = "") -> list[str]:
    """Every key of the schema as a dotted name, sections included ('rank', 'rank.diversity', ...)."""
    node = _schema() if node is None else node
    out = []
    for key, sub in node.get("properties", {}).items():
        out.append(prefix + key)
        if sub.get("type") == "object" and "properties" in sub:
            out += keys(sub, f"{prefix}{key}.")
    return out


def error_message(error: jsonschema.ValidationError, source: str, prefix: str = "") -> str:
    """One line naming the key, for the first error jsonschema reports."""
    path = [p for p in prefix.split(".") if p] + [str(p) for p in error.absolute_path]
    where = f"{source}: " if source else ""
    if error.validator == "required":  # name the missing key itself, not its parent section
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"{where}config key '{'.'.join(path + missing[:1])}' is required"
    key = ".".join(path) or "(top level)"
    hint = ""
    if path and path[-1].endswith("column") and isinstance(error.instance, (int, float)):
        # YAML reads `target_column: 2500` as a number; the column's name is the text "2500"
        hint = f" (a column name that looks like a number must be quoted: {path[-1]}: '{error.instance}')"
    return f"{where}config key '{key}': {error.message}{hint}"


# JSON Schema counts 64.0 as an integer; a config key typed integer means the YAML integer 64.
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


def first_error(instance: Any, schema: Mapping[str, Any]) -> jsonschema.ValidationError | None:
    errors = _Validator(schema).iter_errors(instance)
    return min(errors, key=lambda e: list(map(str, e.absolute_path)), default=None)


def unknown_key_message(key: str, known: Iterable[str], prefix: str, source: str = "") -> str:
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    where = f"{source}: " if source else ""
    return f"{where}unknown config key '{prefix}{key}'{hint}; known keys: {', '.join(known)}"


def _plain(value: Any) -> Any:
    """Tuples as lists, as YAML would give them, for jsonschema's 'array'."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def schema_fields(section: str, derived: Iterable[str] = ()):
    """Class decorator, applied under `@dataclass`: a typed view of one schema section.

    Every key of the section must be an annotated field of the class, without a default of its own
    (it comes from the schema); `derived` names the fields that are not config keys (set by the code,
    e.g. the model's input width). Instances are validated against the section on construction, and
    the class gains `from_dict` (unknown keys are one-line errors) and `to_dict` when it lacks them.
    """
    derived = tuple(derived)

    def wrap(cls):
        node = section_schema(section)
        props = node["properties"]
        fields = list(cls.__dict__.get("__annotations__", {}))
        missing = [k for k in props if k not in fields]
        extra = [f for f in fields if f not in props and f not in derived]
        if missing or extra:
            raise TypeError(f"{cls.__name__} and the schema's '{section}' section disagree: "
                            f"schema keys without a field {missing}, fields not in the schema {extra}")
        for key, sub in props.items():
            if key in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{key}: its default belongs in lyra/schema.yaml, not in the class")
            if "default" in sub:
                default = sub["default"]
                if isinstance(default, (list, dict)):
                    setattr(cls, key, dataclasses.field(default_factory=functools.partial(copy.deepcopy, default)))
                else:
                    setattr(cls, key, default)

        user_post_init = cls.__dict__.get("__post_init__")

        def __post_init__(self) -> None:
            values = _plain({k: getattr(self, k) for k in props})
            error = first_error(values, node)
            if error is not None:
                raise ConfigError(error_message(error, "", prefix=section))
            if user_post_init is not None:
                user_post_init(self)

        cls.__post_init__ = __post_init__
        cls.schema_section = section
        if "from_dict" not in cls.__dict__:
            def from_dict(klass, d: Mapping[str, Any] | None):
                d = dict(d or {})
                for key in d:
                    if key not in props and key not in derived:
                        raise ConfigError(unknown_key_message(key, props, f"{section}."))
                return klass(**d)

            cls.from_dict = classmethod(from_dict)
        if "to_dict" not in cls.__dict__:
            def to_dict(self) -> dict[str, Any]:
                """Plain types only (lists, not tuples), for JSON, YAML and `torch.load(weights_only=True)`."""
                return _plain(dataclasses.asdict(self))

            cls.to_dict = to_dict
        return cls

    return wrap
