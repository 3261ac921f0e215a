"""The `data:` and `split:` sections as typed views (`DataConfig`, `SplitConfig`).

Types, defaults, bounds and enums come from lyra/schema.yaml; the checks here are the ones the schema
cannot express, each between two keys (e.g. data.mutations_column needs data.wild_type).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from lyra.data.alphabet import get_alphabet
from lyra.errors import ConfigError
from lyra.schema import schema_fields, section_schema, unknown_key_message

SPLITS = ("train", "valid", "test")


@dataclass
@schema_fields("data")
class DataConfig:
    """How to read a measurement file. `target_column` is None only for a file of variants without
    measurements (a design library read like the data); a config's data section must name it."""

    path: str
    target_column: str | list[str] | None
    format: str
    sheet: str | int | None
    sequence_column: str | None
    mutations_column: str | None
    wild_type: str | None
    wild_type_dna: str | None  # read by lyra.design.dna (the picks' genes), not here
    first_position: int
    task: str
    alphabet: str
    id_column: str | None
    mutation_separators: str
    uppercase: bool
    equal_length: bool
    aggregate: str
    fasta_label_key: str | None
    count_column: str | None
    min_count: int
    max_mutations: int | None
    drop_variants: list[str]
    padding: str | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DataConfig":
        """A config's data section: unknown keys, and a missing path or target column, are one-line errors."""
        d = dict(d or {})
        known = section_schema("data")["properties"]
        for key in d:
            if key not in known:
                raise ConfigError(unknown_key_message(key, known, "data."))
        for key in ("path", "target_column"):
            if d.get(key) is None:
                raise ConfigError(f"config key 'data.{key}' is required")
        return cls(**d)

    def __post_init__(self) -> None:
        if self.max_mutations is not None and self.wild_type is None:
            raise ConfigError("data.wild_type: required with data.max_mutations (mutations are counted against it)")
        if self.mutations_column is not None and self.wild_type is None:
            raise ConfigError("data.wild_type: required with data.mutations_column (a FASTA path or the sequence)")
        # in a sequence column a synonymous variant is indistinguishable from the wild type
        if "synonymous" in self.drop_variants and self.mutations_column is None:
            raise ConfigError("data.drop_variants: 'synonymous' is recognised in data.mutations_column (A24A); "
                              "set that column or leave 'synonymous' out")
        if self.task == "classification" and len(self.targets) > 1:
            raise ConfigError(f"data.target_column: classification takes one class column, got {self.targets}")
        if self.fasta_label_key is not None and len(self.targets) > 1:
            raise ConfigError(f"data.fasta_label_key: names the header key of one target, but there are "
                              f"{len(self.targets)}")
        if self.padding is not None:
            if self.uppercase:  # compared with the sequences after they are upper-cased
                self.padding = self.padding.upper()
            ab = get_alphabet(self.alphabet)
            if self.padding in ab.letters + ab.ambiguous:
                raise ConfigError(f"data.padding: {self.padding!r} is a residue of the {ab.name} alphabet, "
                                  "so stripping it would cut real residues")

    @property
    def targets(self) -> list[str]:
        if self.target_column is None:
            return []
        return [self.target_column] if isinstance(self.target_column, str) else list(self.target_column)


@dataclass
@schema_fields("split")
class SplitConfig:
    """How the unique variants are assigned to train / valid / test (lyra.data.splits)."""

    method: str
    fractions: dict
    seed: int
    valid_fraction: float
    n_folds: int
    test_fold: int
    max_train_mutations: int
    threshold: float | None
    threshold_target: str | None
    test_positions: list[int] | None
    column: str | None
    mapping: dict | None
    valid_column: str | None
    index_files: dict | None

    def __post_init__(self) -> None:
        self.fractions = {s: float(self.fractions.get(s, 0.0)) for s in SPLITS}
        if abs(sum(self.fractions.values()) - 1) > 1e-6:
            raise ConfigError(f"split.fractions: must sum to 1, got {sum(self.fractions.values()):g}")
        if self.test_fold >= self.n_folds:
            raise ConfigError(f"split.test_fold: must be in 0..{self.n_folds - 1}, got {self.test_fold}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError(f"split.threshold: must be finite, got {self.threshold}")
        if self.method == "column" and self.column is None:
            raise ConfigError("split.column: required with split.method: column")
        if self.method == "index_files" and not self.index_files:
            raise ConfigError("split.index_files: required with split.method: index_files ({train: path, ...})")
