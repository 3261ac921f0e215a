"""Pick what to order next from a scores file (`lyra.design.scoring`).

Ranking reads only the `index`, `mean` and `std` columns of the scores, computes the acquisition

    mean:  a = mu
    ucb:   a = mu + kappa * sigma        (sigma: the spread of the ensemble members)

and walks the candidates in acquisition order, picking one unless it breaks a diversity rule (a mutation
already used `max_per_mutation` times, a position already mutated `max_per_position` times, or a Hamming
distance below `min_hamming` to an earlier pick). Candidates arrive in blocks: the best
`pool_factor * top_n` from a partial sort, then (only if the rules reject that many) growing blocks of a
full sort, so a 10-million-variant table is never turned into Python objects. Each pick gets a one-line
reason: its acquisition, its rank before diversity, and what was skipped to reach it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lyra.data.alphabet import get_alphabet
from lyra.design.library import EnumeratedLayout, LibraryConfig
from lyra.design.scoring import open_scores
from lyra.errors import ConfigError, DataError
from lyra.io import atomic_path, write_text
from lyra.schema import schema_fields, section_schema, unknown_key_message

log = logging.getLogger("lyra.design.rank")

RANK_KEYS = tuple(section_schema("rank")["properties"])
DIVERSITY_DEFAULTS = {k: sub["default"] for k, sub in section_schema("rank.diversity")["properties"].items()}


@dataclass
@schema_fields("rank")
class RankConfig:
    """The `rank:` section; defaults, types and bounds come from lyra/schema.yaml. The picking reads
    strategy, kappa, top_n, pool_factor, allow_fewer and diversity; the plate map
    (`lyra.design.plate.PlateConfig`) and the picks' genes (`lyra.design.dna.DnaConfig`) read the others."""

    strategy: str
    kappa: float
    top_n: int
    pool_factor: int
    allow_fewer: bool
    diversity: dict  # max_per_mutation, min_hamming, max_per_position (None = off)
    plate: int
    fill: str
    controls: list
    codon_table: str
    avoid_sites: list

    def __post_init__(self) -> None:
        self.diversity = {**DIVERSITY_DEFAULTS, **self.diversity}  # every rule, None when off

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RankConfig":
        """From the `rank:` section; an unknown key, also inside `diversity`, is a one-line error."""
        d = dict(d or {})
        diversity = d["diversity"] if isinstance(d.get("diversity"), Mapping) else {}
        for prefix, known, given in (("rank.", RANK_KEYS, d), ("rank.diversity.", tuple(DIVERSITY_DEFAULTS), diversity)):
            unknown = next((k for k in given if k not in known), None)
            if unknown is not None:
                raise ConfigError(unknown_key_message(unknown, known, prefix))
        return cls(**d)


def acquisition(mean: np.ndarray, std: np.ndarray, cfg: RankConfig) -> np.ndarray:
    """(n,) float64 acquisition; NaN scores rank last."""
    a = mean.astype(np.float64) if cfg.strategy == "mean" else mean.astype(np.float64) + cfg.kappa * std.astype(np.float64)
    return np.where(np.isnan(a), -np.inf, a)


def _top_rows(acq: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k best, in the total order (acquisition descending, ties by row number)."""
    k = min(k, acq.size)
    if k == acq.size:
        return np.argsort(-acq, kind="stable")
    part = np.argpartition(-acq, k - 1)[:k]
    # argpartition picks an arbitrary subset of the rows tied with the k-th: take them all, then cut
    part = np.union1d(part, np.flatnonzero(acq == acq[part].min()))
    return part[np.lexsort((part, -acq[part]))][:k]


def _blocks_in_order(acq: np.ndarray, first: int, largest: int = 200_000) -> Iterator[np.ndarray]:
    """Row numbers in acquisition order, in blocks: the first `first` by a partial sort; the rest (only
    when diversity rules reject that many) from one full sort, in blocks growing to `largest`."""
    top = _top_rows(acq, first)
    yield top
    if top.size == acq.size:
        return
    order = np.argsort(-acq, kind="stable")  # the same total order as _top_rows
    pos, size = top.size, top.size
    while pos < order.size:
        size = min(size * 4, largest)
        yield order[pos: pos + size]
        pos += size


def _read_rows(pf: pq.ParquetFile, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """Selected row numbers of a Parquet file, in the order given, read row group by row group."""
    want = np.sort(rows)
    parts = []
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = np.searchsorted(want, [start, start + n])
        if hi > lo:
            table = pf.read_row_group(g, columns=columns)
            parts.append(table.take(pa.array(want[lo:hi] - start)).to_pandas())
        start += n
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    frame.index = want
    return frame.loc[rows]


class _Candidates:
    """Byte rows (n, L) (ASCII letters, 0 = past the end) of scored variants, from the cheapest source:
    the library's index decoder (enumerated libraries), else the stored sequences, else the mutations."""

    def __init__(self, pf: pq.ParquetFile, meta: dict, index: np.ndarray):
        self.pf, self.meta, self.index = pf, meta, index
        self.wt = meta.get("wild_type")
        self.names = pf.schema_arrow.names
        self.layout = None
        lib = meta.get("library") or {}
        if self.wt and lib.get("kind") in ("combinatorial", "saturation", "pairs") and "sequence" not in self.names:
            ab = get_alphabet(meta["alphabet"])
            self.layout = EnumeratedLayout(LibraryConfig(**lib), self.wt, ab, meta["first_position"])
            self.layout.build()
            self.lut = np.frombuffer((ab.letters + (ab.ambiguous[:1] or "?") + "\0").encode(), dtype=np.uint8)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        if self.layout is not None:
            tokens, _, _ = self.layout.decode_indices(self.index[rows])
            return self.lut[tokens]  # (n, L) ASCII
        if "sequence" in self.names:
            seqs = _read_rows(self.pf, rows, ["sequence"])["sequence"].tolist()
        else:
            seqs = _sequences_from_mutations(_read_rows(self.pf, rows, ["mutations"])["mutations"].tolist(), self.meta)
        return _to_bytes(seqs)


def _to_bytes(seqs: Sequence[str]) -> np.ndarray:
    L = max((len(s) for s in seqs), default=0)
    out = np.zeros((len(seqs), L), dtype=np.uint8)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = np.frombuffer(s.encode(), dtype=np.uint8)
    return out


def _pad(a: np.ndarray, L: int) -> np.ndarray:
    return a if a.shape[-1] >= L else np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, L - a.shape[-1])])


def _sequences_from_mutations(mutations: Sequence[str], meta: dict) -> list[str]:
    from lyra.data.variants import MutationParser

    wt, first = meta.get("wild_type"), meta.get("first_position", 1)
    if wt is None:
        raise DataError("scores hold neither sequences nor a wild type to rebuild them from")
    parse = MutationParser(wt, first)
    out = []
    for text in mutations:
        seq = bytearray(wt.encode())
        for m in parse(text):
            seq[m.position - first] = ord(m.mt)
        out.append(seq.decode())
    return out


class _Greedy:
    """Greedy diversity-aware selection over candidates streamed in acquisition order.

    Every rule is monotone (once a candidate breaks it, it stays broken), so after each pick the rules are
    applied to the whole current block at once with numpy: the Python loop runs once per pick, not once
    per candidate. Each blocked candidate keeps the first reason that blocked it, for the picks' reasons.
    """

    def __init__(self, cfg: RankConfig, wild_type: str | None, first_position: int):
        div = cfg.diversity
        self.cfg = cfg
        self.cap_mut, self.cap_pos, self.min_ham = div["max_per_mutation"], div["max_per_position"], div["min_hamming"]
        if wild_type is None and (self.cap_mut or self.cap_pos):
            log.warning("no wild type: rank.diversity max_per_mutation / max_per_position are ignored")
            self.cap_mut = self.cap_pos = None
        self.wt = None if wild_type is None else np.frombuffer(wild_type.encode(), dtype=np.uint8)
        self.first_position = first_position
        L = 0 if self.wt is None else self.wt.size
        self.n_mut = np.zeros((L, 256), dtype=np.int32)  # picks using residue c at position p
        self.n_pos = np.zeros(L, dtype=np.int32)  # picks mutating position p
        self.picks: list[np.ndarray] = []  # byte rows
        self.pick_rows: list[int] = []  # row numbers in the scores file
        self.pick_ranks: list[int] = []  # 1-based rank by acquisition
        self.pick_skipped: list[Counter] = []
        self.texts: list[str] = []  # reason code -> text
        self._codes: dict[str, int] = {}
        self.skipped: Counter = Counter()  # since the last pick

    @property
    def done(self) -> bool:
        return len(self.picks) >= self.cfg.top_n

    def _code(self, text: str) -> int:
        if text not in self._codes:
            self._codes[text] = len(self.texts)
            self.texts.append(text)
        return self._codes[text]

    def _mutated(self, rows: np.ndarray) -> np.ndarray:
        """(n, L) bool: positions differing from the wild type."""
        return rows[:, : self.wt.size] != self.wt[None, :]

    def _block_mut(self, rows, mutated, open_, reason, saturated: np.ndarray) -> None:
        """Block open candidates using a saturated (position, residue); `saturated` (L, 256) bool."""
        hit = saturated[np.arange(mutated.shape[1])[None, :], rows[:, : mutated.shape[1]]] & mutated  # (n, L)
        new = np.flatnonzero(open_ & hit.any(axis=1))
        if new.size == 0:
            return
        p = np.argmax(hit[new], axis=1)  # each labelled by its first saturated mutation
        key = p * 256 + rows[new, p]
        for k in np.unique(key):  # distinct reasons are few
            q, c = divmod(int(k), 256)
            reason[new[key == k]] = self._code(f"repeating {chr(self.wt[q])}{q + self.first_position}{chr(c)} "
                                               f"(cap {self.cap_mut})")
        open_[new] = False

    def _block_pos(self, mutated, open_, reason, positions: np.ndarray) -> None:
        hit = mutated[:, positions]  # (n, k)
        new = np.flatnonzero(open_ & hit.any(axis=1))
        if new.size == 0:
            return
        p = positions[np.argmax(hit[new], axis=1)]
        for q in np.unique(p):
            reason[new[p == q]] = self._code(f"mutating position {int(q) + self.first_position} again "
                                             f"(cap {self.cap_pos})")
        open_[new] = False

    def _block_ham(self, rows, open_, reason, j: int) -> None:
        pick = self.picks[j]
        L = max(rows.shape[1], pick.size)
        d = (_pad(rows, L) != _pad(pick[None, :], L)).sum(axis=1)  # (n,)
        new = open_ & (d < self.min_ham)
        for dist in np.unique(d[new]):
            reason[new & (d == dist)] = self._code(
                f"within Hamming distance {int(dist)} of pick {j + 1} (min {self.min_ham})")
        open_ &= ~new

    def scan(self, block_rows: np.ndarray, rows: np.ndarray, first_rank: int) -> None:
        """Pick from one block (row numbers and their byte rows, in acquisition order)."""
        n = len(block_rows)
        open_ = np.ones(n, dtype=bool)  # not (yet) blocked by a rule
        reason = np.full(n, -1, dtype=np.int64)
        mutated = self._mutated(rows) if self.wt is not None and rows.shape[1] >= self.wt.size else None
        if mutated is not None and self.cap_mut is not None:  # rules already in force from earlier blocks
            self._block_mut(rows, mutated, open_, reason, self.n_mut >= self.cap_mut)
        if mutated is not None and self.cap_pos is not None:
            self._block_pos(mutated, open_, reason, np.flatnonzero(self.n_pos >= self.cap_pos))
        if self.min_ham is not None:
            for j in range(len(self.picks)):
                self._block_ham(rows, open_, reason, j)
        i = 0
        while not self.done:
            nxt = np.flatnonzero(open_[i:])
            if nxt.size == 0:
                break
            k = i + int(nxt[0])
            self._count_skipped(reason[i:k])
            self.picks.append(rows[k].copy())
            self.pick_rows.append(int(block_rows[k]))
            self.pick_ranks.append(first_rank + k)
            self.pick_skipped.append(self.skipped)
            self.skipped = Counter()
            open_[k] = False
            reason[k] = -2  # picked
            if mutated is not None:
                ps = np.flatnonzero(mutated[k])
                if self.cap_mut is not None:
                    self.n_mut[ps, rows[k, ps]] += 1
                    full = np.zeros_like(self.n_mut, dtype=bool)
                    full[ps, rows[k, ps]] = self.n_mut[ps, rows[k, ps]] >= self.cap_mut
                    if full.any():
                        self._block_mut(rows, mutated, open_, reason, full)
                if self.cap_pos is not None:
                    self.n_pos[ps] += 1
                    full_pos = ps[self.n_pos[ps] == self.cap_pos]
                    if full_pos.size:
                        self._block_pos(mutated, open_, reason, full_pos)
            if self.min_ham is not None:
                self._block_ham(rows, open_, reason, len(self.picks) - 1)
            i = k + 1
        if not self.done:
            self._count_skipped(reason[i:])

    def _count_skipped(self, codes: np.ndarray) -> None:
        codes = codes[codes >= 0]
        if codes.size:
            first_seen = {}
            for c in codes.tolist():  # keep the order in which reasons first appear
                first_seen[c] = first_seen.get(c, 0) + 1
            for c, count in first_seen.items():
                self.skipped[self.texts[c]] += count


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _reason(mu: float, sd: float, a: float, acq_rank: int, skipped: Counter, cfg: RankConfig) -> str:
    if cfg.strategy == "ucb":
        head = f"UCB {_fmt(a)} = mean {_fmt(mu)} + {cfg.kappa:g}*std {_fmt(sd)}"
    else:
        head = f"mean {_fmt(mu)} (ensemble std {_fmt(sd)})"
    text = f"{head}; rank {acq_rank} by acquisition"
    n = sum(skipped.values())
    if len(skipped) == 1:
        text += f"; skipped {n} higher-scoring variant{'s' if n > 1 else ''} {next(iter(skipped))}"
    elif skipped:
        parts = [f"{c} {why}" for why, c in list(skipped.items())[:3]]
        more = f", and {len(skipped) - 3} other reasons" if len(skipped) > 3 else ""
        text += f"; skipped {n} higher-scoring variants: " + ", ".join(parts) + more
    return text


RANK_COLUMNS = ["rank", "variant_id", "mutations", "n_mutations", "sequence", "mean", "std", "acquisition",
                "acquisition_rank", "reason"]


def _short_ranking(n_picks: int, n_scored: int, cfg: RankConfig) -> None:
    """Fewer picks than rank.top_n: an error that says why and what to change, or a warning when the
    config allows it (rank.allow_fewer)."""
    if n_scored < cfg.top_n:
        why = (f"the library has only {n_scored:,} scored variants (after excluding measured ones); "
               "widen the library (library.positions, library.max_mutations) or lower rank.top_n")
    else:
        rules = ", ".join(f"rank.diversity.{k}: {v}" for k, v in cfg.diversity.items() if v is not None)
        why = (f"the diversity rules ({rules}) leave no more among {n_scored:,} scored variants; "
               "relax them or lower rank.top_n")
    message = f"ranking: {n_picks} picks, fewer than rank.top_n = {cfg.top_n}: {why}"
    if not cfg.allow_fewer:
        raise ConfigError(f"{message}, or set rank.allow_fewer: true to accept a shorter ranking")
    log.warning(message)


def rank_variants(scores_path: str | Path, rank_cfg: RankConfig | Mapping[str, Any]) -> pd.DataFrame:
    """Pick `top_n` variants from a scores file; see the module docstring. Columns: RANK_COLUMNS.

    Memory: the mean, std and index columns (16 bytes per variant) plus one block of candidates; the
    string columns are read for the picks only.
    """
    cfg = rank_cfg if isinstance(rank_cfg, RankConfig) else RankConfig.from_dict(rank_cfg)
    scores_path = Path(scores_path)
    pf, meta, _ = open_scores(scores_path)
    names = pf.schema_arrow.names
    for col in ("index", "mean", "std", "variant_id", "mutations"):
        if col not in names:
            raise DataError(f"scores have no {col!r} column", str(scores_path))
    stats = pf.read(columns=["index", "mean", "std"])
    index = stats.column("index").to_numpy()
    mean = stats.column("mean").to_numpy()
    std = stats.column("std").to_numpy()
    del stats
    acq = acquisition(mean, std, cfg)
    if acq.size == 0:
        raise DataError("the library has no scored variants (all excluded?)", str(scores_path))
    candidates = _Candidates(pf, meta, index)
    greedy = _Greedy(cfg, meta.get("wild_type"), meta.get("first_position", 1))
    seen = 0
    for block in _blocks_in_order(acq, cfg.pool_factor * cfg.top_n):
        greedy.scan(block, candidates.rows(block), first_rank=seen + 1)
        seen += block.size
        if greedy.done:
            break
        log.info("diversity rules left %d of %d picks after %d candidates; reading more", len(greedy.picks),
                 cfg.top_n, seen)
    if not greedy.done:
        _short_ranking(len(greedy.picks), acq.size, cfg)
    rows = np.array(greedy.pick_rows, dtype=np.int64)
    columns = [c for c in ("variant_id", "mutations", "n_mutations") if c in names]
    out = _read_rows(pf, rows, columns).reset_index(drop=True)
    if "n_mutations" not in out:
        out["n_mutations"] = pd.array([None] * len(out), dtype="Int32")
    out["sequence"] = [p[p > 0].tobytes().decode() for p in greedy.picks]
    out["mean"] = mean[rows].astype(np.float64)
    out["std"] = std[rows].astype(np.float64)
    out["acquisition"] = acq[rows]
    out["acquisition_rank"] = greedy.pick_ranks  # ties ranked by file order
    out["reason"] = [_reason(m, s, a, k, why, cfg) for m, s, a, k, why in
                     zip(out["mean"], out["std"], out["acquisition"], out["acquisition_rank"], greedy.pick_skipped)]
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out[RANK_COLUMNS]


def add_measured(df: pd.DataFrame, dataset: str | Path) -> pd.DataFrame:
    """The ranking with a `measured_<target>` column per target: the dataset's value for a pick that was
    measured already (a library with exclude_measured: false), empty for the others. Matched by sequence."""
    from lyra.data.dataset import load_dataset_meta

    targets = list(load_dataset_meta(dataset).get("targets") or [])
    measured = pd.read_parquet(dataset, columns=["sequence", *targets]).drop_duplicates("sequence")
    measured = measured.set_index("sequence")
    out = df.copy()
    for t in targets:
        out[f"measured_{t}"] = out["sequence"].map(measured[t]).to_numpy()
    return out


def write_ranking(df: pd.DataFrame, csv_path: str | Path, fasta_path: str | Path | None = None) -> None:
    """ranking.csv (fixed 6-decimal floats, so reruns are byte-identical) and ranking.fasta for synthesis."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f", lineterminator="\n")
    if fasta_path is not None:
        lines = []
        for r in df.itertuples(index=False):
            lines.append(f">rank{r.rank}|{r.variant_id}|mean={r.mean:.6f}|std={r.std:.6f}")
            lines.append(str(r.sequence))
        write_text(fasta_path, "\n".join(lines) + "\n")
