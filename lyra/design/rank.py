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

    thompson: slot s of the batch draws f_s = mu + sigma * z_s (z_s ~ N(0, 1) per variant, seeded by the
              campaign seed) and picks the best draw the diversity rules allow (`_Thompson`); its
              acquisition is that f_s, its rank its place in that draw.

Which model's mu and sigma (`rank.model`, `ranking_model`): the ensemble's (`mean`, `std`), or the one-hot
ridge baseline's prediction (the scores' `ridge` column) with sigma = 0, where every strategy reduces
to ranking by mu and so is run as `mean`, or the blend of the two: each member's prediction averaged
with ridge's (w = `lyra.learn.ridge.BLEND_LYRA_WEIGHT`, 1/2),

    blend: mu = w * mean + (1 - w) * ridge,    sigma = w * std

With `rank.ridge_picks: k` the first k picks are one-hot ridge's best predictions (greedy, under the
diversity rules), and the rest come from the model and strategy above, under the same rules, with the
variants ridge took skipped: a hedge between the additive model and Lyra in one plate.

ranking.csv names the model that chose each pick in its `model` column.
"""

from __future__ import annotations

import dataclasses
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
from lyra.design.scoring import RIDGE_COLUMN, open_scores
from lyra.learn.ridge import BLEND_LYRA_WEIGHT, blend
from lyra.errors import ConfigError, DataError
from lyra.io import atomic_path, write_text
from lyra.schema import error_message, first_error, schema_fields, section_schema, unknown_key_message

log = logging.getLogger("lyra.design.rank")

RANK_KEYS = tuple(section_schema("rank")["properties"])
DIVERSITY_DEFAULTS = {k: sub["default"] for k, sub in section_schema("rank.diversity")["properties"].items()}


@dataclass
@schema_fields("rank", derived=("seed",))
class RankConfig:
    """The `rank:` section; defaults, types and bounds come from lyra/schema.yaml. The picking reads
    strategy, kappa, top_n, pool_factor, allow_fewer and diversity; the plate map
    (`lyra.design.plate.PlateConfig`) and the picks' genes (`lyra.design.dna.DnaConfig`) read the others.
    `seed` is the campaign's `seed` (not a key of the section): it seeds the thompson strategy's draws.
    `model` (lyra, ridge, blend or auto) is resolved by `ranking_model`."""

    model: str
    ridge_picks: int
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
    seed: int = 0  # the campaign's `seed`

    def __post_init__(self) -> None:
        error = first_error(self.seed, section_schema("seed"))
        if error is not None:
            raise ConfigError(error_message(error, "", prefix="seed"))
        self.diversity = {**DIVERSITY_DEFAULTS, **self.diversity}  # every rule, None when off

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RankConfig":
        """From the `rank:` section (and the campaign's `seed`); an unknown key, also inside `diversity`,
        is a one-line error."""
        d = dict(d or {})
        diversity = d["diversity"] if isinstance(d.get("diversity"), Mapping) else {}
        for prefix, known, given in (("rank.", (*RANK_KEYS, "seed"), d),
                                     ("rank.diversity.", tuple(DIVERSITY_DEFAULTS), diversity)):
            unknown = next((k for k in given if k not in known), None)
            if unknown is not None:
                raise ConfigError(unknown_key_message(unknown, known, prefix))
        return cls(**d)


def ranking_model(cfg: RankConfig, metrics: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """("lyra", "ridge" or "blend", why): the model that ranks under rank.model; auto compares the three on
    the validation split of `metrics` (models/metrics.json, `lyra.learn.evaluate.auto_model`)."""
    if cfg.model != "auto":
        return cfg.model, f"rank.model: {cfg.model}"
    from lyra.learn.evaluate import auto_model  # imports torch: only when it is needed

    if metrics is None:
        raise ConfigError("rank.model: auto compares the models on models/metrics.json, and none was given")
    model, why = auto_model(metrics)
    return model, f"rank.model: auto chose {model}: {why}"


# the scores' columns each rank.model reads, and what the logs and the report call it
MODEL_COLUMNS = {"lyra": ("mean", "std"), "ridge": (RIDGE_COLUMN,), "blend": ("mean", "std", RIDGE_COLUMN)}
MODEL_NAMES = {"lyra": "the Lyra ensemble", "ridge": "one-hot ridge",
               "blend": "the average of the Lyra ensemble and one-hot ridge"}


def model_predictions(scores: pa.Table | pa.RecordBatch, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma), (n,) float64 each, of scores holding MODEL_COLUMNS[model], under rank.model `model`."""
    def column(name: str) -> np.ndarray:
        return scores.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    if model == "ridge":
        mu = column(RIDGE_COLUMN)
        return mu, np.zeros_like(mu)
    if model == "blend":  # each member averaged with ridge: the mean moves toward ridge, the spread shrinks
        return blend(column("mean"), column(RIDGE_COLUMN)), BLEND_LYRA_WEIGHT * column("std")
    return column("mean"), column("std")


def acquisition(mean: np.ndarray, std: np.ndarray, cfg: RankConfig) -> np.ndarray:
    """(n,) float64 acquisition; NaN scores rank last. thompson has no fixed score (each pick's is its own
    draw): this gives the ceiling mean + Z_MAX * std that no draw exceeds, the order its pool is read in."""
    weight = {"mean": 0.0, "ucb": cfg.kappa, "thompson": Z_MAX}[cfg.strategy]
    a = mean.astype(np.float64) + weight * std.astype(np.float64) if weight else mean.astype(np.float64)
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


def _blocks_with_next(key: np.ndarray, first: int, largest: int = 200_000) -> Iterator[tuple[np.ndarray, int | None]]:
    """`_blocks_in_order`'s blocks of row numbers by `key` (descending), each with the row that comes next
    (None after the last): the first block by one partial sort, the full sort only if more is read."""
    top = _top_rows(key, first + 1)
    if top.size <= first:
        yield top, None
        return
    yield top[:first], int(top[first])
    order = np.argsort(-key, kind="stable")  # the same total order as _top_rows
    pos, size = first, first
    while pos < order.size:
        size = min(size * 4, largest)
        end = pos + size
        yield order[pos:end], (int(order[end]) if end < order.size else None)
        pos = end


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
        self.limit = cfg.top_n  # picks to make; lowered while rank.ridge_picks are taken
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
        return len(self.picks) >= self.limit

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

    def mutated_of(self, rows: np.ndarray) -> np.ndarray | None:
        """(n, L) bool mutated positions of a block's byte rows, None where the mutation rules cannot see them."""
        return self._mutated(rows) if self.wt is not None and rows.shape[1] >= self.wt.size else None

    def admit(self, block_rows: np.ndarray, rows: np.ndarray, mutated, open_: np.ndarray, reason: np.ndarray) -> None:
        """Close the candidates of a new block (row numbers, byte rows) picked already or blocked by the
        rules in force (from the picks so far)."""
        if self.pick_rows:  # one order read after another (rank.ridge_picks): never the same variant twice
            open_ &= ~np.isin(block_rows, self.pick_rows)
        if mutated is not None and self.cap_mut is not None:
            self._block_mut(rows, mutated, open_, reason, self.n_mut >= self.cap_mut)
        if mutated is not None and self.cap_pos is not None:
            self._block_pos(mutated, open_, reason, np.flatnonzero(self.n_pos >= self.cap_pos))
        if self.min_ham is not None:
            for j in range(len(self.picks)):
                self._block_ham(rows, open_, reason, j)

    def take(self, pick: np.ndarray, row: int, rank: int, skipped: Counter) -> None:
        """Record a pick (its byte row, row number in the scores, rank, what was skipped to reach it) and
        count its mutations; `block` then applies what it changed to each block of candidates."""
        self.picks.append(pick.copy())
        self.pick_rows.append(row)
        self.pick_ranks.append(rank)
        self.pick_skipped.append(skipped)
        if self.wt is not None and pick.size >= self.wt.size:
            ps = np.flatnonzero(self._mutated(pick[None, :])[0])
            if self.cap_mut is not None:
                self.n_mut[ps, pick[ps]] += 1
            if self.cap_pos is not None:
                self.n_pos[ps] += 1

    def block(self, rows: np.ndarray, mutated, open_: np.ndarray, reason: np.ndarray) -> None:
        """Close the candidates of a block that the last pick (`take`) blocks: a mutation or position it
        brought to its cap, or a Hamming distance to it below the minimum."""
        pick = self.picks[-1]
        if mutated is not None and pick.size >= self.wt.size:
            ps = np.flatnonzero(self._mutated(pick[None, :])[0])
            if self.cap_mut is not None:
                full = np.zeros_like(self.n_mut, dtype=bool)
                full[ps, pick[ps]] = self.n_mut[ps, pick[ps]] >= self.cap_mut
                if full.any():
                    self._block_mut(rows, mutated, open_, reason, full)
            if self.cap_pos is not None:
                full_pos = ps[self.n_pos[ps] == self.cap_pos]
                if full_pos.size:
                    self._block_pos(mutated, open_, reason, full_pos)
        if self.min_ham is not None:
            self._block_ham(rows, open_, reason, len(self.picks) - 1)

    def scan(self, block_rows: np.ndarray, rows: np.ndarray, first_rank: int) -> None:
        """Pick from one block (row numbers and their byte rows, in acquisition order)."""
        n = len(block_rows)
        open_ = np.ones(n, dtype=bool)  # not (yet) blocked by a rule
        reason = np.full(n, -1, dtype=np.int64)
        mutated = self.mutated_of(rows)
        self.admit(block_rows, rows, mutated, open_, reason)  # rules already in force from earlier blocks
        i = 0
        while not self.done:
            nxt = np.flatnonzero(open_[i:])
            if nxt.size == 0:
                break
            k = i + int(nxt[0])
            self._count_skipped(reason[i:k])
            self.take(rows[k], int(block_rows[k]), first_rank + k, self.skipped)
            self.skipped = Counter()
            open_[k] = False
            reason[k] = -2  # picked
            self.block(rows, mutated, open_, reason)
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


# Thompson draws are standard normal deviates truncated to |z| <= Z_MAX (a draw is changed with
# probability 2e-9), so every draw of a variant lies at or below its ceiling mean + Z_MAX * std.
Z_MAX = 6.0
_THOMPSON_STREAM = 0x7468_6F6D  # mixed into the campaign seed: ranking's stream, apart from training's
_FIRST_CHUNK = 1024  # draws are made in chunks of the pool growing 4-fold from this


class _Segment:
    """One block of the Thompson pool (in ceiling order) with its rule state: the greedy pass's block."""

    def __init__(self, rows: np.ndarray, data: np.ndarray, mean: np.ndarray, std: np.ndarray, ceiling: np.ndarray,
                 greedy: _Greedy):
        self.rows, self.data = rows, data  # row numbers in the scores file; byte rows
        self.mean, self.std, self.ceiling = mean, std, ceiling
        self.open = np.ones(rows.size, dtype=bool)  # neither picked nor blocked by a rule
        self.reason = np.full(rows.size, -1, dtype=np.int64)  # -1 open, -2 picked, else a rule's text code
        self.mutated = greedy.mutated_of(data)
        greedy.admit(rows, data, self.mutated, self.open, self.reason)
        chunks, start, size = [], 0, _FIRST_CHUNK
        while start < rows.size:
            chunks.append((start, min(rows.size, start + size)))
            start, size = start + size, size * 4
        self.chunks = chunks


class _Thompson:
    """Batch Thompson sampling (Kandasamy et al. 2018) with the ensemble's Gaussian approximation: slot s
    draws f_s = mean + std * z_s (z_s independent per variant and slot) and picks the argmax of f_s among
    the candidates not picked yet that the diversity rules (`_Greedy`'s, applied the same way) allow.

    Only a pool is drawn on: the `pool_factor * top_n` variants with the highest ceiling mean + Z_MAX * std
    (one partial sort), in ceiling order. As the draws are truncated at Z_MAX, no variant's draw exceeds
    its ceiling, so a slot stops drawing as soon as its best allowed value is at least the next
    variant's ceiling: nothing further down can beat it, also outside the pool. Such a pick is exactly the
    argmax over the whole library, and for a model that separates the variants (ensemble std small next
    to the spread of the means) that holds after a few thousand draws. A variant outside the pool can only
    win a draw that reaches the pool's end below the next ceiling: many variants of close means and large
    std, each with a small chance, where the pick is still the best of the pool_factor * top_n variants
    most likely to win; such draws are counted in the log (raise rank.pool_factor to draw on more).

    When the diversity rules have closed every variant of the pool, the next block of the ceiling order is
    added, as the greedy pass reads its next block; with none left, the ranking is short (`_short_ranking`).
    Each slot's draws are vectorised over the pool, so a slot costs one pass over (a prefix of) the pool.
    """

    def __init__(self, cfg: RankConfig, greedy: _Greedy, candidates: "_Candidates", mean: np.ndarray,
                 std: np.ndarray):
        self.cfg, self.greedy, self.candidates = cfg, greedy, candidates
        bad = np.isnan(mean) | np.isnan(std)  # rank last, as acquisition() ranks NaN scores
        self.mean = np.where(bad, -np.inf, mean.astype(np.float64))
        self.std = np.where(bad, 0.0, std.astype(np.float64))
        self.ceiling = self.mean + Z_MAX * self.std
        self.blocks = _blocks_with_next(self.ceiling, cfg.pool_factor * cfg.top_n)
        self.segments: list[_Segment] = []
        self.pooled = 0
        self.next_ceiling = -np.inf  # the highest ceiling outside the pool
        self.rng = np.random.default_rng([cfg.seed, _THOMPSON_STREAM])
        self.draws: list[float] = []  # each pick's f_s
        self.z: list[float] = []
        self.uncertain = 0  # draws that reached the pool's end below the next ceiling

    def extend(self) -> bool:
        """Add the next block of the ceiling order to the pool; False when the library is all in it."""
        block, after = next(self.blocks, (None, None))
        if block is None:
            return False
        if self.segments:
            log.info("diversity rules left %d of %d picks after %d candidates; reading more",
                     len(self.greedy.picks), self.cfg.top_n, self.pooled)
        self.segments.append(_Segment(block, self.candidates.rows(block), self.mean[block], self.std[block],
                                      self.ceiling[block], self.greedy))
        self.pooled += block.size
        self.next_ceiling = -np.inf if after is None else float(self.ceiling[after])  # the highest outside
        return True

    def _draw(self):
        """One slot's draw over (a prefix of) the pool: the best allowed (value, segment, position), every
        drawn chunk (segment, start, values), and whether the best is certain to beat everything undrawn;
        best is None when no variant in the pool is open."""
        best, drawn = None, []
        for si, seg in enumerate(self.segments):
            for lo, hi in seg.chunks:
                if best is not None and best[0] >= seg.ceiling[lo]:  # ceilings descend: nothing below wins
                    return best, drawn, True
                f = self.rng.standard_normal(hi - lo)
                np.clip(f, -Z_MAX, Z_MAX, out=f)
                f *= seg.std[lo:hi]
                f += seg.mean[lo:hi]
                drawn.append((si, lo, f))
                open_ = seg.open[lo:hi]
                allowed = np.where(open_, f, -np.inf)
                k = int(np.argmax(allowed))  # ties: the first in ceiling order
                if allowed[k] == -np.inf:  # none open, or only unscored (NaN) ones
                    opened = np.flatnonzero(open_)
                    if opened.size == 0:
                        continue
                    k = int(opened[0])
                if best is None or allowed[k] > best[0]:
                    best = (float(allowed[k]), si, lo + k)
        return best, drawn, best is not None and best[0] >= self.next_ceiling

    def _ahead(self, drawn, value: float, si: int, k: int) -> tuple[int, Counter]:
        """The variants not picked yet that the draw ranks above the pick (all blocked by a rule, as the
        pick is the best open one), and their reasons."""
        ahead, skipped = 0, Counter()
        for sj, lo, f in drawn:
            cand = np.flatnonzero(f >= value)  # few: the earlier picks and blocked variants above the pick
            cand = cand[(f[cand] > value) | (sj < si) | ((sj == si) & (lo + cand < k))]  # ties: order
            codes = self.segments[sj].reason[lo + cand]
            codes = codes[codes >= 0]
            ahead += codes.size
            for c in codes.tolist():
                skipped[self.greedy.texts[c]] += 1
        return ahead, skipped

    def run(self) -> None:
        greedy = self.greedy
        if not self.extend():
            return
        while not greedy.done:
            best, drawn, certain = self._draw()
            if best is None:  # the rules closed the whole pool: read on, as the greedy pass does
                if self.extend():
                    continue
                break
            value, si, k = best
            self.uncertain += not certain
            ahead, skipped = self._ahead(drawn, value, si, k)
            seg = self.segments[si]
            greedy.take(seg.data[k], int(seg.rows[k]), ahead + 1, skipped)
            seg.open[k] = False
            seg.reason[k] = -2
            for other in self.segments:
                greedy.block(other.data, other.mutated, other.open, other.reason)
            self.draws.append(value)
            self.z.append((value - seg.mean[k]) / seg.std[k] if seg.std[k] > 0 else 0.0)
        if self.uncertain:
            log.info("thompson: %d of %d draws reached the end of the pool (%d variants) below the best "
                     "ceiling outside it; a larger rank.pool_factor draws on more", self.uncertain,
                     len(greedy.picks), self.pooled)


def _greedy_pass(greedy: _Greedy, candidates: "_Candidates", key: np.ndarray, first: int) -> None:
    """Pick in `key` order (descending) until `greedy.limit` picks: the best `first` candidates, then
    more blocks only when the diversity rules reject that many."""
    seen = 0
    for block in _blocks_in_order(key, first):
        greedy.scan(block, candidates.rows(block), first_rank=seen + 1)
        seen += block.size
        if greedy.done:
            break
        log.info("diversity rules left %d of %d picks after %d candidates; reading more", len(greedy.picks),
                 greedy.limit, seen)


def _ridge_picks(greedy: _Greedy, candidates: "_Candidates", ridge: np.ndarray, cfg: RankConfig) -> int:
    """rank.ridge_picks: the first picks, in one-hot ridge's prediction order under the diversity rules;
    returns how many were taken (fewer when the rules close ridge's whole order)."""
    greedy.limit = min(cfg.ridge_picks, cfg.top_n)
    _greedy_pass(greedy, candidates, np.where(np.isnan(ridge), -np.inf, ridge), cfg.pool_factor * greedy.limit)
    greedy.limit = cfg.top_n
    return len(greedy.picks)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _reason(mu: float, sd: float, a: float, acq_rank: int, skipped: Counter, cfg: RankConfig,
            slot: int = 0, z: float = 0.0, model: str = "lyra") -> str:
    if model == "ridge":
        text = f"one-hot ridge prediction {_fmt(mu)}; rank {acq_rank} by prediction"
    elif cfg.strategy == "thompson":
        text = (f"Thompson draw {slot}: {_fmt(a)} = mean {_fmt(mu)} + std {_fmt(sd)} * z {z:.3f}; "
                f"rank {acq_rank} in the draw")
    elif cfg.strategy == "ucb":
        text = f"UCB {_fmt(a)} = mean {_fmt(mu)} + {cfg.kappa:g}*std {_fmt(sd)}; rank {acq_rank} by acquisition"
    else:
        text = f"mean {_fmt(mu)} (ensemble std {_fmt(sd)}); rank {acq_rank} by acquisition"
    if model == "blend":
        text = f"Lyra and ridge averaged, {text}"
    n = sum(skipped.values())
    if len(skipped) == 1:
        text += f"; skipped {n} higher-scoring variant{'s' if n > 1 else ''} {next(iter(skipped))}"
    elif skipped:
        parts = [f"{c} {why}" for why, c in list(skipped.items())[:3]]
        more = f", and {len(skipped) - 3} other reasons" if len(skipped) > 3 else ""
        text += f"; skipped {n} higher-scoring variants: " + ", ".join(parts) + more
    return text


RANK_COLUMNS = ["rank", "variant_id", "mutations", "n_mutations", "sequence", "mean", "std", "acquisition",
                "acquisition_rank", "model", "reason"]


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


def rank_variants(scores_path: str | Path, rank_cfg: RankConfig | Mapping[str, Any],
                  metrics: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Pick `top_n` variants from a scores file; see the module docstring. Columns: RANK_COLUMNS.
    `metrics` (models/metrics.json) is read only by rank.model: auto.

    Memory: the mean, std and index columns (16 bytes per variant) plus one block of candidates; the
    string columns are read for the picks only.
    """
    cfg = rank_cfg if isinstance(rank_cfg, RankConfig) else RankConfig.from_dict(rank_cfg)
    model, why = ranking_model(cfg, metrics)
    scores_path = Path(scores_path)
    pf, meta, _ = open_scores(scores_path)
    names = pf.schema_arrow.names
    for col in ("index", "mean", "std", "variant_id", "mutations"):
        if col not in names:
            raise DataError(f"scores have no {col!r} column", str(scores_path))
    columns = list(dict.fromkeys([*MODEL_COLUMNS[model], *([RIDGE_COLUMN] if cfg.ridge_picks else [])]))
    if RIDGE_COLUMN in columns and RIDGE_COLUMN not in names:
        needs = why if RIDGE_COLUMN in MODEL_COLUMNS[model] else f"rank.ridge_picks: {cfg.ridge_picks}"
        raise ConfigError(f"{needs}, but {scores_path} has no one-hot ridge scores: the baseline is fitted for "
                          "regression on one target only")
    stats = pf.read(columns=["index", *columns])
    mean, std = model_predictions(stats, model)
    ridge = model_predictions(stats, "ridge")[0] if cfg.ridge_picks else None
    if model == "ridge":  # no uncertainty: every strategy ranks by the prediction
        cfg = dataclasses.replace(cfg, strategy="mean")
    log.info("ranking by %s (%s)", MODEL_NAMES[model], why)
    if cfg.ridge_picks:
        log.info("the first %d picks by %s (rank.ridge_picks)", min(cfg.ridge_picks, cfg.top_n), MODEL_NAMES["ridge"])
    index = stats.column("index").to_numpy()
    del stats
    if mean.size == 0:
        raise DataError("the library has no scored variants (all excluded?)", str(scores_path))
    candidates = _Candidates(pf, meta, index)
    greedy = _Greedy(cfg, meta.get("wild_type"), meta.get("first_position", 1))
    n_ridge = 0 if ridge is None else _ridge_picks(greedy, candidates, ridge, cfg)
    if cfg.strategy == "thompson":
        thompson = _Thompson(cfg, greedy, candidates, mean, std)
        thompson.run()
        acq = np.array(thompson.draws, dtype=np.float64)  # per pick after ridge's, not per variant
    else:
        acq = acquisition(mean, std, cfg)
        _greedy_pass(greedy, candidates, acq, cfg.pool_factor * cfg.top_n)
    if not greedy.done:
        _short_ranking(len(greedy.picks), mean.size, cfg)
    rows = np.array(greedy.pick_rows, dtype=np.int64)
    columns = [c for c in ("variant_id", "mutations", "n_mutations") if c in names]
    out = _read_rows(pf, rows, columns).reset_index(drop=True)
    if "n_mutations" not in out:
        out["n_mutations"] = pd.array([None] * len(out), dtype="Int32")
    out["sequence"] = [p[p > 0].tobytes().decode() for p in greedy.picks]
    out["mean"] = mean[rows].astype(np.float64)
    out["std"] = std[rows].astype(np.float64)
    ridge_acq = [] if ridge is None else ridge[rows[:n_ridge]].tolist()  # ridge's picks: its prediction
    if cfg.strategy == "thompson":
        out["acquisition"] = [*ridge_acq, *acq]  # each later pick's own draw f_s
        z = [0.0] * n_ridge + thompson.z
    else:
        out["acquisition"] = [*ridge_acq, *acq[rows[n_ridge:]]]
        z = [0.0] * len(rows)
    out["acquisition_rank"] = greedy.pick_ranks  # ties ranked by file order
    out["model"] = ["ridge"] * n_ridge + [model] * (len(rows) - n_ridge)
    out["reason"] = [_reason(a if m_ == "ridge" else m, s, a, k, skipped, cfg, slot - n_ridge, zz, m_)
                     for slot, (m, s, a, k, skipped, zz, m_) in
                     enumerate(zip(out["mean"], out["std"], out["acquisition"], out["acquisition_rank"],
                                   greedy.pick_skipped, z, out["model"]), 1)]
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
