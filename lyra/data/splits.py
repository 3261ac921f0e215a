"""The split methods: which unique variants train, validate and test (split.method).

  random        seeded fractions of the unique variants
  kfold         seeded folds; ``test_fold`` is the test set
  n_mutations   train on <= ``max_train_mutations`` substitutions, test on more (FLIP's n_vs_rest)
  threshold     train on target < threshold, test on >= (FLIP's low_vs_high; default threshold = WT)
  positions     test variants only mutate held-out positions, train/valid variants never do
  column        a column of the file says train / valid / test (e.g. FLIP's ``set`` + ``validation``)
  index_files   files of 0-based data-row numbers per split (e.g. METL's published splits)

Each method is one function of ``METHODS``; ``assign_splits`` runs the configured one, then draws the
validation set out of the training portion unless the method chose it. Methods based on chance or on the
data file (random, kfold, column, index_files) place the data file's variants exactly as without campaign
rounds, and variants only seen in later rounds in training; rule-based ones (n_mutations, threshold,
positions) apply their rule to every variant. The labels of column and index_files belong to input rows,
so ``column_labels`` and ``index_file_labels`` read them before replicates merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from lyra.data.config import DataConfig, SplitConfig
from lyra.data.readers import MISSING_TOKENS, RowErrors, column_text, input_path
from lyra.errors import ConfigError, DataError

TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0"}) | MISSING_TOKENS
DEFAULT_COLUMN_MAPPING = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}


@dataclass
class VariantTable:
    """What a split method sees: the unique variants, in order of first appearance."""

    frame: pd.DataFrame  # variant_id, mutations, n_mutations, the targets, _src (0: the data file), _label
    data_cfg: DataConfig
    diff: np.ndarray | None  # (N, L) bool: substituted positions, for rows of the wild type's length
    wild_type: str | None

    @property
    def from_data_file(self) -> np.ndarray:
        """Indices of the variants of the data file (not only measured in later rounds)."""
        return np.flatnonzero(self.frame["_src"].to_numpy() == 0)


@dataclass
class Placement:
    split: np.ndarray  # (N,) object: train / valid / test; 'drop' marks a variant the method cannot place
    fold: np.ndarray | None = None  # (N,) int: kfold's fold of each variant
    info: dict[str, Any] = field(default_factory=dict)  # what report.md and the metadata show
    chose_valid: bool = False  # the method chose the validation set itself


def _all_train(v: VariantTable) -> np.ndarray:
    return np.full(len(v.frame), "train", dtype=object)


def _n_mutations(v: VariantTable, cfg: SplitConfig) -> np.ndarray:
    """(N,) int: every variant's substitutions; the method needs the wild type and variants of its length."""
    if v.wild_type is None:
        raise ConfigError(f"split.method: {cfg.method} needs data.wild_type")
    nm = v.frame["n_mutations"]
    if nm.isna().any():
        i = int(np.flatnonzero(nm.isna().to_numpy())[0])
        raise ConfigError(
            f"split.method: {cfg.method} needs every sequence to have the wild type's length "
            f"(variant {v.frame['variant_id'].iloc[i]!r} does not)"
        )
    return nm.to_numpy(dtype=np.int64)


def random_split(v: VariantTable, cfg: SplitConfig) -> Placement:
    base = v.from_data_file
    perm = base[np.random.default_rng(cfg.seed).permutation(len(base))]
    n_test = int(round(cfg.fractions["test"] * len(base)))
    n_valid = int(round(cfg.fractions["valid"] * len(base)))
    split = _all_train(v)
    split[perm[:n_test]] = "test"
    split[perm[n_test:n_test + n_valid]] = "valid"
    return Placement(split, chose_valid=True)


def kfold_split(v: VariantTable, cfg: SplitConfig) -> Placement:
    base = v.from_data_file
    perm = base[np.random.default_rng(cfg.seed).permutation(len(base))]
    fold = np.full(len(v.frame), -1, dtype=np.int64)
    fold[perm] = np.arange(len(base)) % cfg.n_folds
    split = _all_train(v)
    split[fold == cfg.test_fold] = "test"
    return Placement(split, fold, {"n_folds": cfg.n_folds, "test_fold": cfg.test_fold})


def n_mutations_split(v: VariantTable, cfg: SplitConfig) -> Placement:
    split = _all_train(v)
    split[_n_mutations(v, cfg) > cfg.max_train_mutations] = "test"
    return Placement(split, info={"max_train_mutations": cfg.max_train_mutations})


def threshold_split(v: VariantTable, cfg: SplitConfig) -> Placement:
    data_cfg, frame = v.data_cfg, v.frame
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
    split = _all_train(v)
    split[frame[target].to_numpy(dtype=np.float64) >= threshold] = "test"  # train: strictly below
    return Placement(split, info={"threshold": threshold, "threshold_target": target})


def positions_split(v: VariantTable, cfg: SplitConfig) -> Placement:
    if v.diff is None:
        raise ConfigError("split.method: positions needs data.wild_type")
    _n_mutations(v, cfg)
    diff, first = v.diff, v.data_cfg.first_position
    L = diff.shape[1]
    if cfg.test_positions is not None:
        index = np.array([p - first for p in cfg.test_positions], dtype=np.int64)
        off = [p for p, k in zip(cfg.test_positions, index) if not 0 <= k < L]
        if off:
            raise ConfigError(f"split.test_positions: {off} lie outside the wild type")
    else:
        mutated = np.flatnonzero(diff[v.from_data_file].any(axis=0))
        k = min(len(mutated), max(1, int(round(cfg.fractions["test"] * len(mutated)))))
        index = np.sort(np.random.default_rng(cfg.seed).choice(mutated, size=k, replace=False))
    held = np.zeros(L, dtype=bool)
    held[index] = True
    touches_test = (diff & held).any(axis=1)
    mixed = touches_test & (diff & ~held).any(axis=1)
    split = _all_train(v)
    split[touches_test] = "test"
    split[mixed] = "drop"
    return Placement(split, info={"test_positions": [int(k) + first for k in index],
                                  "counts": {"variants_dropped_mixed_positions": int(mixed.sum())}})


def _from_row_labels(v: VariantTable) -> np.ndarray:
    """The labels read from the data file's rows (column / index_files); variants only in rounds: train."""
    labels = v.frame["_label"].to_numpy()
    placed = np.array([x is not None and x == x for x in labels])  # None/NaN: only in rounds
    split = _all_train(v)
    split[placed] = labels[placed]
    return split


def column_split(v: VariantTable, cfg: SplitConfig) -> Placement:
    split = _from_row_labels(v)
    return Placement(split, chose_valid=bool((split == "valid").any() or cfg.valid_column))


def index_files_split(v: VariantTable, cfg: SplitConfig) -> Placement:
    split = _from_row_labels(v)
    return Placement(split, chose_valid=bool((split == "valid").any()))


METHODS: dict[str, Callable[[VariantTable, SplitConfig], Placement]] = {
    "random": random_split,
    "kfold": kfold_split,
    "n_mutations": n_mutations_split,
    "threshold": threshold_split,
    "positions": positions_split,
    "column": column_split,
    "index_files": index_files_split,
}


def assign_splits(
    frame: pd.DataFrame, cfg: SplitConfig, data_cfg: DataConfig, diff: np.ndarray | None, wild_type: str | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(split labels (N,), fold (N,), info). The label 'drop' marks variants the split cannot place."""
    placed = METHODS[cfg.method](VariantTable(frame, data_cfg, diff, wild_type), cfg)
    split = placed.split
    if not placed.chose_valid and cfg.valid_fraction > 0:
        # valid comes out of the training portion, drawn with its own seeded stream
        train = np.flatnonzero(split == "train")
        k = int(round(cfg.valid_fraction * len(train)))
        if k:
            chosen = np.random.default_rng([cfg.seed, 1]).choice(train, size=k, replace=False)
            split[chosen] = "valid"
    fold = placed.fold if placed.fold is not None else np.full(len(frame), -1, dtype=np.int64)
    return split, fold, {"method": cfg.method, **placed.info}


def column_labels(raw: pd.DataFrame, cfg: SplitConfig, ctx: RowErrors) -> np.ndarray:
    """(n,) object: each row's split from split.column (through split.mapping), and split.valid_column."""
    mapping = {str(k).strip().lower(): v for k, v in (cfg.mapping or DEFAULT_COLUMN_MAPPING).items()}
    values = column_text(raw[cfg.column])
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
        for i, v in enumerate(column_text(raw[cfg.valid_column])):
            low = v.lower()
            if low in TRUE_TOKENS:
                if labels[i] == "test":
                    raise ctx.error(i, f"column {cfg.valid_column!r} (split.valid_column) marks a test row as validation")
                if labels[i] == "train":
                    labels[i] = "valid"
            elif low not in FALSE_TOKENS:
                raise ctx.error(i, f"column {cfg.valid_column!r} (split.valid_column): {v!r} is not true/false")
    return labels


def index_file_labels(n: int, cfg: SplitConfig, base_dir: str | Path | None) -> np.ndarray:
    """(n,) object: the split of each of the n data rows from split.index_files; rows in no file: 'exclude'."""
    labels = np.full(n, "exclude", dtype=object)  # left out (and counted)
    owner: dict[int, str] = {}
    for split, file in cfg.index_files.items():
        p = input_path(file, base_dir)
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
