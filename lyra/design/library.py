"""Design libraries: what to score before ordering the next plate.

A library spec (`library:` in the campaign config, or a YAML file under `resources/libraries/`) is one of

- ``file``: an explicit list of sequences or mutation strings, read and validated like training data;
- ``combinatorial``: positions x allowed residues (GB1's 39/40/41/54 x 20 = 160,000 variants), optionally
  with at most ``max_mutations`` simultaneous mutations;
- ``saturation``: every single mutant over a position range;
- ``pairs``: every double mutant over chosen positions.

A library is never held as a list. Every variant has a global index in ``[0, space)``, and a chunk of
consecutive indices is decoded straight into tokens with numpy (mixed-radix digits, one per mutated site),
so scoring streams ``chunk_size`` variants at a time whatever the library size. Shard k of n owns the
contiguous index range ``[k * space // n, (k + 1) * space // n)``: shards are disjoint and together cover
the library.

Two index layouts:

- *full* (a combinatorial library without a mutation cap): one mixed-radix number over all k sites, digit i
  choosing among the residues allowed at site i (the last site varies fastest, as in
  ``itertools.product``). The wild type is one of the combinations; it is skipped while streaming unless
  ``include_wild_type``.
- *subsets* (saturation, pairs, capped combinatorial): blocks, one per set T of mutated sites (by size,
  then lexicographically), each block a mixed-radix number over the non-wild-type residues of the sites in
  T. ``library_size`` counts them with a polynomial product instead of enumerating.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from lyra.data.alphabet import Alphabet, get_alphabet
from lyra.errors import ConfigError, DataError
from lyra.schema import schema_fields, unknown_key_message

log = logging.getLogger("lyra.design.library")

SPEC_DIR = Path(__file__).resolve().parents[2] / "resources" / "libraries"
SPEC_ONLY_KEYS = ("description",)  # documentation keys a spec file may carry


@dataclass
@schema_fields("library")
class LibraryConfig:
    """The `library:` section; defaults, types and bounds come from lyra/schema.yaml."""

    kind: str
    spec: str | None
    path: str | None
    positions: Any  # list, "10-50" / "39,40,41,54", or {position: residues}; numbered like the WT
    residues: str
    max_mutations: int | None
    exclude_measured: bool
    include_wild_type: bool
    n_shards: int
    chunk_size: int
    max_size: int

    def __post_init__(self) -> None:
        if self.kind == "file" and not self.path:
            raise ConfigError("library.path: required for library.kind 'file'")
        if self.kind == "combinatorial" and self.positions is None:
            raise ConfigError("library.positions: required for library.kind 'combinatorial'")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, base_dir: str | Path | None = None) -> "LibraryConfig":
        """From the `library:` config section; `spec` (a YAML file) fills the keys left at their default.

        Relative `path` and `spec` are resolved against `base_dir` (the working directory when a config
        runs through `lyra` or Snakemake); a bare spec name like ``gb1_four_site`` is looked up in
        ``resources/libraries/``.
        """
        d = dict(d or {})
        d.pop("_base_dir", None)
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ConfigError(unknown_key_message(key, known, "library."))
        if d.get("spec"):
            spec_path = resolve_spec(d["spec"], base_dir)
            spec = _read_spec(spec_path, known)
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            for key, value in spec.items():  # the campaign config wins where it sets a non-default value
                if key not in d or d[key] == defaults[key]:
                    d[key] = value
            d["spec"] = str(spec_path)
            base_for_path = spec_path.parent if "path" in spec and d.get("path") == spec.get("path") else base_dir
        else:
            base_for_path = base_dir
        if d.get("path") and base_for_path is not None and not Path(d["path"]).expanduser().is_absolute():
            d["path"] = str((Path(base_for_path) / Path(d["path"]).expanduser()).resolve())
        return cls(**d)


def resolve_spec(value: str, base_dir: str | Path | None = None) -> Path:
    """A spec path as given, relative to `base_dir`, or a name in resources/libraries/ (".yaml" optional)."""
    raw = Path(str(value)).expanduser()
    candidates = [raw] if raw.is_absolute() else [Path(base_dir or ".") / raw, raw]
    candidates += [SPEC_DIR / raw.name, SPEC_DIR / f"{raw.name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ConfigError(f"library.spec: file {value!r} not found (looked in {base_dir or '.'} and {SPEC_DIR})")


def _read_spec(path: Path, known: list[str]) -> dict:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"library.spec: {path} is not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"library.spec: {path} must hold a mapping of library keys")
    spec = {k: v for k, v in spec.items() if k not in SPEC_ONLY_KEYS}
    for key in spec:
        if key not in known or key == "spec":
            raise ConfigError(f"library.spec: {path}: unknown key 'library.{key}'")
    return spec


# --- positions and sites -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    position: int  # numbered like the wild type
    index: int  # 0-based index into the sequence
    wt: str  # wild-type residue
    residues: str  # allowed residues (may or may not include the wild type)

    @property
    def mutants(self) -> str:
        return "".join(r for r in self.residues if r != self.wt)

    @property
    def wt_allowed(self) -> bool:
        return self.wt in self.residues


_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:(?:-|\.\.)\s*(-?\d+))?\s*$")


def parse_positions(value: Any, wild_type: str, first_position: int = 1) -> list[int]:
    """`"10-50"`, `"39,40,41,54"`, `[39, "50-52"]`, `{39: "FW"}`, or None (every position) -> sorted list."""
    last = first_position + len(wild_type) - 1
    if value is None:
        return list(range(first_position, last + 1))
    items: list[Any]
    if isinstance(value, Mapping):
        items = list(value.keys())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    positions: list[int] = []
    for item in items:
        parts = str(item).split(",") if isinstance(item, str) else [item]
        for part in parts:
            if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
                positions.append(int(part))
                continue
            m = _RANGE.match(str(part))
            if m is None:
                raise ConfigError(f"library.positions: cannot read {part!r} (expected e.g. 39, '10-50' or '39,40,41')")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ConfigError(f"library.positions: empty range {part!r}")
            positions.extend(range(lo, hi + 1))
    if not positions:
        raise ConfigError("library.positions: no positions given")
    dup = sorted({p for p in positions if positions.count(p) > 1})
    if dup:
        raise ConfigError(f"library.positions: position {dup[0]} is listed twice")
    for p in positions:
        if not first_position <= p <= last:
            raise ConfigError(
                f"library.positions: position {p} is outside the wild type (positions {first_position}..{last}; "
                f"check data.first_position)"
            )
    return sorted(positions)


def library_sites(cfg: LibraryConfig, wild_type: str, alphabet: Alphabet, first_position: int = 1) -> list[Site]:
    """The design sites, sorted by position, each with its allowed residues (validated against the alphabet)."""
    positions = parse_positions(cfg.positions, wild_type, first_position)
    per_site = {}
    if isinstance(cfg.positions, Mapping):
        per_site = {int(k): v for k, v in cfg.positions.items()}
    sites = []
    for p in positions:
        residues = per_site.get(p, cfg.residues)
        key = f"library.positions.{p}" if p in per_site else "library.residues"
        if residues is None:
            residues = cfg.residues
        if not isinstance(residues, str) or not residues.strip():
            raise ConfigError(f"{key}: expected a string of residues like 'ACDE', got {residues!r}")
        residues = "".join(dict.fromkeys(residues.replace(" ", "").upper()))  # de-duplicate, keep order
        bad = [r for r in residues if r not in alphabet.letters]
        if bad:
            raise ConfigError(f"{key}: residue {bad[0]!r} is not in the {alphabet.name} alphabet ({alphabet.letters})")
        i = p - first_position
        sites.append(Site(position=p, index=i, wt=wild_type[i], residues=residues))
    return sites


# --- the index layout ---------------------------------------------------------------------------------


class EnumeratedLayout:
    """Global index <-> variant for the enumerated kinds (combinatorial, saturation, pairs; see the
    module docstring). `decode_indices` turns any indices into tokens, so a ranking can rebuild the
    sequences of its picks without storing them."""

    def __init__(self, cfg: LibraryConfig, wild_type: str, alphabet: Alphabet, first_position: int):
        self.cfg, self.alphabet = cfg, alphabet
        self.wild_type, self.first_position = wild_type, first_position
        self.sites = library_sites(cfg, wild_type, alphabet, first_position)
        for s in self.sites:
            if not s.residues:
                raise ConfigError(f"library.positions.{s.position}: no residues allowed")
        self.k = len(self.sites)
        self.wt_tokens = alphabet.encode(wild_type).astype(np.uint8)  # (L,)
        self.site_index = np.array([s.index for s in self.sites], dtype=np.int64)  # (k,)
        n_mut = [len(s.mutants) for s in self.sites]
        kind = cfg.kind
        # combinatorial: a site whose residues omit the wild-type one is always mutated ("forced");
        # saturation / pairs: the residues are the substitutions to try, the other sites stay wild type
        forced = [kind == "combinatorial" and not s.wt_allowed for s in self.sites]
        cap = cfg.max_mutations
        self.mode = "full" if kind == "combinatorial" and (cap is None or cap >= self.k) else "subsets"
        if kind == "pairs" and self.k < 2:
            raise ConfigError("library.positions: 'pairs' needs at least two positions")

        # coef[j] = variants with exactly j mutations: the coefficients of prod_i (w_i + n_i x), where
        # w_i = 1 if site i may stay wild type and n_i is its number of mutant residues (exact Python ints)
        coef = [1]
        for w, n in zip([not f for f in forced], n_mut):
            nxt = [0] * (len(coef) + 1)
            for j, c in enumerate(coef):
                nxt[j] += c * int(w)
                nxt[j + 1] += c * n
            coef = nxt
        if kind == "saturation":
            self.sizes_by_n = {1: coef[1]}
        elif kind == "pairs":
            self.sizes_by_n = {2: coef[2]}
        else:
            top = self.k if cap is None else min(cap, self.k)
            self.sizes_by_n = {j: coef[j] for j in range(0, top + 1) if coef[j]}
        wt_possible = not any(forced)
        if self.mode == "subsets":
            self.sizes_by_n.pop(0, None)
            if cfg.include_wild_type and wt_possible:  # block 0: the wild type alone
                self.sizes_by_n = {0: 1, **self.sizes_by_n}
            self.space = sum(self.sizes_by_n.values())
            self.has_wt = 0 in self.sizes_by_n
        else:
            self.space = math.prod(len(s.residues) for s in self.sites)
            self.has_wt = wt_possible  # the wild type is one of the combinations
        self.size = self.space - (1 if self.mode == "full" and self.has_wt and not cfg.include_wild_type else 0)
        self._tables_built = False

    def check_size(self) -> None:
        if self.size > self.cfg.max_size:
            raise ConfigError(
                f"library: {self.size:,} variants exceed library.max_size = {self.cfg.max_size:,}; "
                f"raise library.max_size to score it anyway"
            )

    def build(self) -> None:
        """Decoding tables; only once the size is known to be acceptable."""
        if self._tables_built:
            return
        self.check_size()
        A = self.alphabet.size + 2  # letters, uniform, pad
        k = self.k
        wt_tok = self.wt_tokens[self.site_index]  # (k,)
        if self.mode == "full":
            R = max(len(s.residues) for s in self.sites)
            self.choices = np.zeros((k, R), dtype=np.uint8)  # (k, R) token of digit r at site i
            for i, s in enumerate(self.sites):
                self.choices[i, : len(s.residues)] = self.alphabet.encode(s.residues)
            self.radix = np.array([len(s.residues) for s in self.sites], dtype=np.int64)  # (k,)
            self.wt_index = -1
            if self.has_wt:
                digits = [s.residues.index(s.wt) for s in self.sites]
                self.wt_index = int(np.ravel_multi_index(digits, self.radix)) if k else 0
        else:
            R = max(1, max(len(s.mutants) for s in self.sites))
            self.choices = np.zeros((k, R), dtype=np.uint8)  # (k, R) token of mutant digit r at site i
            for i, s in enumerate(self.sites):
                if s.mutants:
                    self.choices[i, : len(s.mutants)] = self.alphabet.encode(s.mutants)
            blocks: list[tuple[int, ...]] = []
            forced = [i for i, s in enumerate(self.sites) if self.cfg.kind == "combinatorial" and not s.wt_allowed]
            rest = [i for i, s in enumerate(self.sites) if s.mutants and i not in forced]
            for n in self.sizes_by_n:  # one block per set of mutated sites, by size then lexicographically
                if n == 0:
                    blocks.append(())
                    continue
                for extra in itertools.combinations(rest, n - len(forced)):
                    blocks.append(tuple(sorted(forced + list(extra))))
            m = max((len(b) for b in blocks), default=0)
            self.block_sites = np.full((len(blocks), max(m, 1)), -1, dtype=np.int64)  # (nb, m), -1 = none
            for b, T in enumerate(blocks):
                self.block_sites[b, : len(T)] = T
            n_choices = np.array([len(s.mutants) for s in self.sites] + [1], dtype=np.int64)  # site -1 -> 1
            self.block_radix = n_choices[self.block_sites]  # (nb, m)
            block_sizes = self.block_radix.prod(axis=1)  # (nb,)
            self.block_offsets = np.concatenate([[0], np.cumsum(block_sizes)]).astype(np.int64)  # (nb + 1,)
            assert int(self.block_offsets[-1]) == self.space, "block sizes disagree with the count"
            self.block_n = (self.block_sites >= 0).sum(axis=1).astype(np.int32)  # (nb,)
            self.wt_index = 0 if self.sizes_by_n and 0 in self.sizes_by_n else -1
        # label[i, token] = "V39W" for site i (row k: no site -> ""), "" where the token is the WT residue
        letters = self.alphabet.letters + "X?"
        width = max((len(str(s.position)) for s in self.sites), default=1) + 2
        self.labels = np.full((k + 1, A), "", dtype=f"<U{width}")
        for i, s in enumerate(self.sites):
            for t in range(self.alphabet.size):
                if t != wt_tok[i]:
                    self.labels[i, t] = f"{s.wt}{s.position}{letters[t]}"
        self._tables_built = True

    def decode(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices [start, stop) -> tokens (n, L) uint8, n_mutations (n,) int32, slots (n, m) site ids."""
        return self.decode_indices(np.arange(start, stop, dtype=np.int64))

    def decode_indices(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Any global indices (n,) -> tokens (n, L) uint8, n_mutations (n,) int32, slots (n, m) site ids."""
        idx = np.asarray(idx, dtype=np.int64)
        n = idx.size
        tokens = np.repeat(self.wt_tokens[None, :], n, axis=0)  # (n, L)
        rows = np.arange(n)
        if self.mode == "full":
            rest = idx.copy()
            for i in range(self.k - 1, -1, -1):  # last site fastest, like itertools.product
                digit = rest % self.radix[i]
                rest //= self.radix[i]
                tokens[:, self.site_index[i]] = self.choices[i, digit]
            n_mut = (tokens[:, self.site_index] != self.wt_tokens[self.site_index]).sum(axis=1).astype(np.int32)
            slots = np.broadcast_to(np.arange(self.k, dtype=np.int64), (n, self.k))  # (n, k)
            return tokens, n_mut, slots
        block = np.searchsorted(self.block_offsets, idx, side="right") - 1  # (n,)
        rest = idx - self.block_offsets[block]  # (n,) offset inside the block
        slots = self.block_sites[block]  # (n, m)
        radix = self.block_radix[block]  # (n, m)
        for j in range(slots.shape[1] - 1, -1, -1):
            digit = rest % radix[:, j]
            rest //= radix[:, j]
            site = slots[:, j]
            on = site >= 0
            tokens[rows[on], self.site_index[site[on]]] = self.choices[site[on], digit[on]]
        return tokens, self.block_n[block], slots

    def mutation_strings(self, tokens: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Canonical 'V39W:D40A' strings (n,), '' for the wild type; vectorised over rows."""
        n = tokens.shape[0]
        rows = np.arange(n)
        out = np.full(n, "", dtype=self.labels.dtype)
        for j in range(slots.shape[1]):  # slots are sorted by position within each row
            site = slots[:, j]
            tok = tokens[rows, self.site_index[site]] if self.k else np.zeros(n, dtype=np.uint8)
            label = self.labels[site, tok]  # site -1 -> the empty last row
            sep = np.where((out != "") & (label != ""), ":", "")
            out = np.strings.add(np.strings.add(out, sep), label)
        return out


# --- file libraries ------------------------------------------------------------------------------------


SEQUENCE_COLUMNS = ("sequence", "seq", "sequences", "mutated_sequence")
MUTATION_COLUMNS = ("mutations", "mutation", "mutant", "mutants", "variant", "variants", "aamutations")
ID_COLUMNS = ("variant_id", "id", "name")


def _pick_column(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


class FileLayout:
    """An explicit list, read and validated by the data layer exactly like training data; indices are
    its rows in file order. Columns are found by name: a sequence column (``sequence``...) and/or a
    mutations column (``mutations``, ``mutant``...), optionally ids (``variant_id``, ``id``, ``name``);
    FASTA records give ids and sequences. The list is held in memory (it came from a file).
    `padding` is the data's filler letter (data.padding): the file comes in the user's format, so it is
    stripped from the sequence ends as in the training data."""

    def __init__(self, cfg: LibraryConfig, wild_type: str | None, alphabet: Alphabet, first_position: int,
                 padding: str | None = None):
        from lyra.data.config import DataConfig
        from lyra.data.readers import detect_format, read_table
        from lyra.data.validation import read_measurements
        from lyra.data.variants import mutation_strings

        self.cfg, self.alphabet = cfg, alphabet
        self.wild_type, self.first_position = wild_type, first_position
        path = Path(cfg.path)
        fmt = detect_format(path)
        columns = list(read_table(path, fmt).columns)
        seq_col = _pick_column(columns, SEQUENCE_COLUMNS)
        mut_col = _pick_column(columns, MUTATION_COLUMNS) if wild_type is not None else None
        id_col = _pick_column(columns, ID_COLUMNS) if fmt != "fasta" else None
        if fmt != "fasta" and seq_col is None and mut_col is None:
            if len(columns) == 1:  # a bare list: mutation strings when there is a wild type
                mut_col, seq_col = (columns[0], None) if wild_type is not None else (None, columns[0])
            else:
                raise DataError(
                    f"no sequence column ({', '.join(SEQUENCE_COLUMNS)}) or mutations column "
                    f"({', '.join(MUTATION_COLUMNS)}); the columns are: {', '.join(map(repr, columns))}", str(path))
        data_cfg = DataConfig(
            path=str(path), target_column=None, format=fmt, sequence_column=seq_col, mutations_column=mut_col,
            wild_type=wild_type, first_position=first_position, alphabet=alphabet.name, id_column=id_col,
            equal_length=wild_type is not None, padding=padding,
        )
        rows, _ = read_measurements(path, data_cfg, wild_type)
        seqs = rows["sequence"].tolist()
        lines = rows["_line"].to_numpy()
        if len(set(seqs)) < len(seqs):  # a library lists each variant once
            seen: dict[str, int] = {}
            for s, line in zip(seqs, lines):
                if s in seen:
                    raise DataError(f"variant repeats row {seen[s]} (the same sequence)", str(path), int(line))
                seen[s] = int(line)
        if wild_type is not None:
            muts = mutation_strings(wild_type, seqs, first_position)
            self.mutations = np.array(muts, dtype=object)
            self.n_mut = np.array([m.count(":") + 1 if m else 0 for m in muts], dtype=np.int32)
        else:
            self.mutations, self.n_mut = None, None
        if "variant_id" in rows:
            ids = rows["variant_id"].to_numpy(dtype=object)
        elif self.mutations is not None:
            ids = np.where(self.mutations == "", "WT", self.mutations).astype(object)
        else:
            ids = np.array([f"seq{int(line)}" for line in lines], dtype=object)
        self.ids = ids
        self.sequences = np.array(seqs, dtype=object)
        self.space = len(seqs)
        self.has_wt = wild_type is not None and wild_type in set(seqs)
        self.wt_index = seqs.index(wild_type) if self.has_wt else -1
        self.size = self.space - (1 if self.has_wt and not cfg.include_wild_type else 0)

    def check_size(self) -> None:
        if self.size > self.cfg.max_size:
            raise ConfigError(
                f"library: {self.size:,} variants in {self.cfg.path} exceed library.max_size = "
                f"{self.cfg.max_size:,}; raise library.max_size to score it anyway"
            )

    def build(self) -> None:
        self.check_size()


def make_layout(cfg: LibraryConfig, wild_type: str | None, alphabet: Alphabet | str, first_position: int,
                padding: str | None = None) -> EnumeratedLayout | FileLayout:
    """The library's index layout: `space` (the global index range), `size`, `build()` (checks
    library.max_size, then makes the decoding tables); stream it with `iter_layout`."""
    ab = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
    if cfg.kind == "file":
        return FileLayout(cfg, wild_type, ab, first_position, padding)
    if wild_type is None:
        raise ConfigError(f"library.kind: {cfg.kind!r} libraries are built around a wild type; set data.wild_type")
    return EnumeratedLayout(cfg, wild_type, ab, first_position)


def library_size(cfg: LibraryConfig, wild_type: str | None, first_position: int = 1,
                 alphabet: Alphabet | str = "protein", padding: str | None = None) -> int:
    """Number of variants the library holds (before excluding measured ones), counted without enumerating.

    The wild type counts only with `include_wild_type`. A `file` library is read to count its rows
    (`padding`: data.padding, stripped from its sequences).
    """
    return int(make_layout(cfg, wild_type, alphabet, first_position, padding).size)


# --- streaming -----------------------------------------------------------------------------------------


@dataclass
class LibraryChunk:
    """Consecutive variants of one shard. Strings are built only when asked for (i.e. when written)."""

    tokens: np.ndarray  # (n, L) uint8
    index: np.ndarray  # (n,) int64 global variant index
    n_mutations: np.ndarray | None  # (n,) int32, None without a wild type
    mask: np.ndarray | None = None  # (n, L) bool; None when every row is full length
    _layout: Any = dataclasses.field(default=None, repr=False)
    _slots: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (n, m) mutated site ids

    def __len__(self) -> int:
        return int(self.index.size)

    def mutations(self) -> np.ndarray:
        """Canonical mutation strings (n,): 'V39W:D40A', '' for the wild type."""
        lay = self._layout
        if isinstance(lay, FileLayout):
            if lay.mutations is None:
                raise DataError("library has no wild type, so variants have no mutation strings", lay.cfg.path)
            return lay.mutations[self.index].astype(str)
        return lay.mutation_strings(self.tokens, self._slots)

    def variant_ids(self, mutations: np.ndarray | None = None) -> np.ndarray:
        """The file's ids, else the mutation string ('WT' for the wild type), as in dataset.parquet."""
        lay = self._layout
        if isinstance(lay, FileLayout):
            return lay.ids[self.index].astype(str)
        muts = self.mutations() if mutations is None else mutations
        return np.where(muts == "", "WT", muts)

    def sequences(self) -> np.ndarray:
        """Full sequences (n,), decoded from the tokens in one numpy pass."""
        lay = self._layout
        if isinstance(lay, FileLayout):
            return lay.sequences[self.index].astype(str)
        return decode_tokens(self.tokens, lay.alphabet)


def decode_tokens(tokens: np.ndarray, alphabet: Alphabet) -> np.ndarray:
    """(n, L) tokens of equal-length rows -> (n,) strings."""
    n, L = tokens.shape
    lut = np.frombuffer((alphabet.letters + (alphabet.ambiguous[:1] or "?") + "-").encode(), dtype=np.uint8)
    chars = np.ascontiguousarray(lut[tokens])  # (n, L) bytes
    return chars.view(f"S{L}").ravel().astype(f"U{L}") if L else np.full(n, "", dtype="U1")


def shard_range(space: int, shard: int, n_shards: int) -> tuple[int, int]:
    """The contiguous global index range [start, stop) owned by `shard` of `n_shards`."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ConfigError(f"library.n_shards: shard {shard} is not in 0..{n_shards - 1}")
    return space * shard // n_shards, space * (shard + 1) // n_shards


class Exclusion:
    """Variants to skip (already measured): exact match on the token rows.

    Each row is hashed to 64 bits with numpy (h = sum_j (token_j + 1) * m_j mod 2^64, m_j odd and
    position-specific); rows whose hash is in the set are then confirmed byte for byte, so the test is exact.
    """

    def __init__(self, sequences: Iterable[str], alphabet: Alphabet | str = "protein"):
        self.alphabet = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
        rows = {self.alphabet.encode(s).astype(np.uint8).tobytes() for s in sequences}
        self.rows = rows
        by_len: dict[int, list[bytes]] = {}  # equal lengths are hashed together, vectorised
        for r in rows:
            by_len.setdefault(len(r), []).append(r)
        parts = [_hash_rows(np.frombuffer(b"".join(rs), dtype=np.uint8).reshape(len(rs), L))
                 for L, rs in by_len.items()]
        self.hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.rows)

    def contains(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(n,) bool: which token rows are excluded."""
        h = _hash_rows(tokens, mask)
        hit = np.isin(h, self.hashes)
        for i in np.flatnonzero(hit):  # confirm exactly (only rows already in the set get here)
            row = tokens[i] if mask is None else tokens[i][mask[i]]
            hit[i] = row.astype(np.uint8).tobytes() in self.rows
        return hit


def _position_multipliers(L: int) -> np.ndarray:
    """Odd 64-bit multipliers, one per position (splitmix64 of the position)."""
    with np.errstate(over="ignore"):
        z = np.arange(1, L + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z | np.uint64(1)


def _hash_rows(tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, L) tokens -> (n,) uint64; padding (mask False) contributes nothing."""
    t = tokens.astype(np.uint64) + np.uint64(1)  # (n, L); +1 so token 0 still counts
    if mask is not None:
        t *= mask.astype(np.uint64)
    with np.errstate(over="ignore"):
        return (t * _position_multipliers(tokens.shape[1])).sum(axis=1, dtype=np.uint64)


def make_exclusion(values: Iterable[str] | Exclusion | None, wild_type: str | None, first_position: int = 1,
                   alphabet: Alphabet | str = "protein") -> Exclusion | None:
    """Sequences and/or mutation strings ('V39W:D40A', 'WT', '') -> an Exclusion."""
    if values is None or isinstance(values, Exclusion):
        return values
    from lyra.data.variants import apply_mutations, is_wild_type_token, parse_mutations

    seqs = []
    for v in values:
        text = "" if v is None else str(v)
        if wild_type is not None and (is_wild_type_token(text) or any(c.isdigit() for c in text)):
            seqs.append(apply_mutations(wild_type, parse_mutations(text, wild_type, first_position), first_position))
        else:
            seqs.append(text.upper())
    return Exclusion(seqs, alphabet)


def measured_sequences(dataset_path: str | Path) -> list[str]:
    """The sequences of a prepared dataset.parquet (what `exclude_measured` skips)."""
    import pyarrow.parquet as pq

    return pq.read_table(dataset_path, columns=["sequence"]).column("sequence").to_pylist()


def iter_library(
    cfg: LibraryConfig,
    wild_type: str | None,
    first_position: int = 1,
    alphabet: Alphabet | str = "protein",
    shard: int = 0,
    n_shards: int = 1,
    chunk_size: int | None = None,
    exclude: Iterable[str] | Exclusion | None = None,
    padding: str | None = None,
) -> Iterator[LibraryChunk]:
    """Stream the variants of one shard as chunks of at most `chunk_size` (default cfg.chunk_size).

    `exclude` (sequences or mutation strings, e.g. the measured variants when cfg.exclude_measured) is
    filtered out chunk by chunk; so is the wild type unless cfg.include_wild_type. `padding` (data.padding)
    is stripped from the sequences of a `file` library.
    """
    ab = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
    lay = make_layout(cfg, wild_type, ab, first_position, padding)
    lay.build()
    yield from iter_layout(lay, shard, n_shards, chunk_size or cfg.chunk_size,
                            make_exclusion(exclude, wild_type, first_position, ab))


def iter_layout(lay: EnumeratedLayout | FileLayout, shard: int, n_shards: int, chunk_size: int,
                exclusion: Exclusion | None) -> Iterator[LibraryChunk]:
    """The chunks of shard `shard` of a built layout (see `iter_library`): the wild type dropped unless
    library.include_wild_type, the `exclusion` rows dropped."""
    start, stop = shard_range(lay.space, shard, n_shards)
    drop_wt = lay.has_wt and not lay.cfg.include_wild_type
    for a in range(start, stop, chunk_size):
        b = min(a + chunk_size, stop)
        if isinstance(lay, FileLayout):
            index = np.arange(a, b, dtype=np.int64)
            seqs = lay.sequences[a:b]
            tokens, mask = lay.alphabet.encode_batch(list(seqs))
            tokens = tokens.astype(np.uint8)
            if mask.all():
                mask = None
            chunk = LibraryChunk(tokens, index, None if lay.n_mut is None else lay.n_mut[a:b], mask, lay)
        else:
            tokens, n_mut, slots = lay.decode(a, b)
            index = np.arange(a, b, dtype=np.int64)
            chunk = LibraryChunk(tokens, index, n_mut, None, lay, slots)
        keep = np.ones(len(chunk), dtype=bool)
        if drop_wt and a <= lay.wt_index < b:
            keep[lay.wt_index - a] = False
        if exclusion is not None and len(exclusion):
            keep &= ~exclusion.contains(chunk.tokens, chunk.mask)
        if not keep.all():
            chunk = _take(chunk, keep)
        if len(chunk):
            yield chunk


def _take(chunk: LibraryChunk, keep: np.ndarray) -> LibraryChunk:
    return LibraryChunk(
        tokens=chunk.tokens[keep],
        index=chunk.index[keep],
        n_mutations=None if chunk.n_mutations is None else chunk.n_mutations[keep],
        mask=None if chunk.mask is None else chunk.mask[keep],
        _layout=chunk._layout,
        _slots=None if chunk._slots is None else chunk._slots[keep],
    )


def library_space(cfg: LibraryConfig, wild_type: str | None, first_position: int = 1,
                  alphabet: Alphabet | str = "protein", padding: str | None = None) -> int:
    """Size of the global index range (the library plus a skipped wild type, if any)."""
    return int(make_layout(cfg, wild_type, alphabet, first_position, padding).space)
