"""Score a design library with the ensemble, and pick what to order next.

Scoring streams a library shard chunk by chunk through every ensemble member and appends one Parquet row
group per chunk, so memory stays flat whatever the library size. Each shard file records, in its
metadata, which library and index range it covers and how many variants it skipped (measured, wild
type), so `gather_scores` can prove the shards are disjoint and complete before concatenating them.

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

import dataclasses
import json
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lyra.data.alphabet import Alphabet, get_alphabet
from lyra.errors import ConfigError, DataError, LyraError
from lyra.io import atomic_path, write_text
from lyra.design.library import Exclusion, LibraryConfig, _iter_layout, _layout, make_exclusion

log = logging.getLogger("lyra.design.rank")

STRATEGIES = ("mean", "ucb")
DIVERSITY_KEYS = ("max_per_mutation", "min_hamming", "max_per_position")
# rank-section keys about the order itself, read by lyra.design.plate and lyra.design.dna, not by the picking
ORDER_KEYS = ("plate", "fill", "controls", "codon_table", "avoid_sites")
META_KEY = b"lyra"
COUNTS_KEY = b"lyra_counts"  # written when a shard is complete


# --- scoring -------------------------------------------------------------------------------------------


def _score_schema(n_models: int, write_sequences: bool, meta: dict) -> pa.Schema:
    fields = [
        pa.field("index", pa.int64()),  # global variant index in the library
        pa.field("variant_id", pa.string()),
        pa.field("mutations", pa.string()),
        pa.field("n_mutations", pa.int32()),
    ]
    if write_sequences:
        fields.append(pa.field("sequence", pa.string()))
    fields += [pa.field(f"score_{k}", pa.float32()) for k in range(n_models)]
    fields += [pa.field("mean", pa.float32()), pa.field("std", pa.float32())]
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta, sort_keys=True).encode()})


def _score_column(info: Mapping[str, Any], path: Any) -> int:
    """Which output column is 'the score': the first target (regression) or the last class's probability."""
    if info["task"] == "classification":
        classes = info.get("classes") or []
        log.info("%s: classification model; the score is the probability of class %r", path,
                 classes[-1] if classes else "last")
        return max(len(classes), 1) - 1
    if len(info["targets"]) > 1:
        log.info("%s: %d targets; scoring on the first, %r", path, len(info["targets"]), info["targets"][0])
    return 0


def score_shard(
    checkpoints: Sequence[str | Path],
    library_cfg: LibraryConfig | Mapping[str, Any],
    wild_type: str | None,
    first_position: int,
    alphabet: Alphabet | str,
    shard: int,
    n_shards: int,
    out_path: str | Path,
    device: str = "cpu",
    exclude: Iterable[str] | Exclusion | None = None,
    progress: bool = True,
    write_sequences: bool | None = None,
    batch_size: int = 2048,
    padding: str | None = None,
) -> Path:
    """Score shard `shard` of `n_shards` with every checkpoint and write it to `out_path` (Parquet).

    Columns: index, variant_id, mutations, n_mutations, [sequence], score_<k> per checkpoint, mean, std
    (float32; std is the population std over members, 0 for one model). `write_sequences` defaults to
    True only when sequences cannot be rebuilt from the wild type and the mutations. `padding`
    (data.padding) is stripped from the sequences of a `file` library, as from the training data.
    """
    from lyra.learn.train import load_checkpoint, predict_tokens

    if not checkpoints:
        raise ConfigError("score: no checkpoints given")
    cfg = library_cfg if isinstance(library_cfg, LibraryConfig) else LibraryConfig.from_dict(library_cfg)
    ab = alphabet if isinstance(alphabet, Alphabet) else get_alphabet(alphabet)
    started = time.perf_counter()
    members = []
    for path in checkpoints:
        model, info = load_checkpoint(path, device)
        if info["alphabet"] != ab.name:
            raise LyraError(f"{path}: checkpoint alphabet {info['alphabet']!r} differs from the data's {ab.name!r}")
        members.append((model, info, _score_column(info, path)))
    lay = _layout(cfg, wild_type, ab, first_position, padding)
    lay.build()
    exclusion = make_exclusion(exclude, wild_type, first_position, ab)
    if write_sequences is None:
        write_sequences = wild_type is None
    start, stop = _shard_bounds(lay.space, shard, n_shards)
    meta = {
        "library": dataclasses.asdict(cfg), "wild_type": wild_type, "first_position": first_position,
        "alphabet": ab.name, "checkpoints": [str(p) for p in checkpoints],
        "targets": list(members[0][1]["targets"]), "task": members[0][1]["task"],
        "shard": shard, "n_shards": n_shards, "space": int(lay.space), "library_size": int(lay.size),
        "index_range": [start, stop],
    }
    schema = _score_schema(len(members), write_sequences, meta)
    n_chunks = math.ceil((stop - start) / cfg.chunk_size) if stop > start else 0
    n_rows = 0
    out_path = Path(out_path)
    from tqdm import tqdm

    bar = tqdm(total=n_chunks, desc=f"shard {shard}/{n_shards}", unit="chunk",
               disable=not (progress and sys.stderr.isatty()))
    import torch

    with atomic_path(out_path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            for chunk in _iter_layout(lay, shard, n_shards, cfg.chunk_size, exclusion):
                tokens = torch.from_numpy(chunk.tokens.astype(np.int64))  # (n, L)
                mask = None if chunk.mask is None else torch.from_numpy(chunk.mask)
                scores = np.stack(
                    [predict_tokens(model, info, tokens, mask, batch_size)[:, col] for model, info, col in members],
                    axis=1,
                )  # (n, M)
                writer.write_table(_chunk_table(chunk, scores, schema, write_sequences))
                n_rows += len(chunk)
                bar.update(max(1, round(len(chunk) / cfg.chunk_size)))
            skipped = (stop - start) - n_rows
            writer.add_key_value_metadata({COUNTS_KEY: json.dumps({"rows": n_rows, "skipped": skipped}).encode()})
        finally:
            writer.close()
            bar.close()
    log.info("shard %d/%d: %d variants scored by %d models (%d skipped) in %.1f s -> %s", shard, n_shards, n_rows,
             len(members), skipped, time.perf_counter() - started, out_path)
    return out_path


def _shard_bounds(space: int, shard: int, n_shards: int) -> tuple[int, int]:
    from lyra.design.library import shard_range

    return shard_range(space, shard, n_shards)


def _chunk_table(chunk, scores: np.ndarray, schema: pa.Schema, write_sequences: bool) -> pa.Table:
    """One chunk -> a table in `schema`; scores (n, M) float64."""
    n = len(chunk)
    has_mutations = chunk.n_mutations is not None
    muts = chunk.mutations() if has_mutations else None
    cols: dict[str, Any] = {
        "index": pa.array(chunk.index, pa.int64()),
        "variant_id": pa.array(chunk.variant_ids(muts) if has_mutations else chunk.variant_ids(), pa.string()),
        "mutations": pa.array(muts, pa.string()) if has_mutations else pa.nulls(n, pa.string()),
        "n_mutations": pa.array(chunk.n_mutations, pa.int32()) if has_mutations else pa.nulls(n, pa.int32()),
    }
    if write_sequences:
        cols["sequence"] = pa.array(chunk.sequences(), pa.string())
    for k in range(scores.shape[1]):
        cols[f"score_{k}"] = pa.array(scores[:, k].astype(np.float32))
    cols["mean"] = pa.array(scores.mean(axis=1).astype(np.float32))
    cols["std"] = pa.array(scores.std(axis=1).astype(np.float32))
    return pa.Table.from_pydict(cols, schema=schema)


# --- gathering -----------------------------------------------------------------------------------------


def _file_meta(path: Path) -> tuple[pq.ParquetFile, dict, dict | None]:
    if not path.is_file():
        raise DataError("score shard not found (run `lyra score` for it)", str(path))
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"cannot read as Parquet: {' '.join(str(e).split())[:200]}", str(path)) from None
    kv = pf.metadata.metadata or {}
    if META_KEY not in kv:
        raise DataError("not a lyra score file (no 'lyra' metadata)", str(path))
    counts = json.loads(kv[COUNTS_KEY]) if COUNTS_KEY in kv else None
    return pf, json.loads(kv[META_KEY]), counts


def scores_meta(path: str | Path) -> dict:
    """The metadata of a scores file: the library, wild type and numbering its variants came from."""
    return _file_meta(Path(path))[1]


_SAME_LIBRARY_KEYS = ("library", "wild_type", "first_position", "alphabet", "checkpoints", "space", "n_shards")


def gather_scores(shard_paths: Sequence[str | Path], out_path: str | Path, batch_size: int = 65536) -> Path:
    """Concatenate shard files into one (streaming), after checking that they are the shards of one
    library and model set, disjoint, and complete (every index scored or counted as skipped)."""
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise ConfigError("gather: no shard files given")
    shards = [(p, *_file_meta(p)) for p in paths]
    first_path, first_pf, first_meta, _ = shards[0]
    for p, pf, meta, counts in shards:
        for key in _SAME_LIBRARY_KEYS:
            if meta.get(key) != first_meta.get(key):
                raise DataError(f"shard differs from {first_path} in {key!r}: not the same library run", str(p))
        if pf.schema_arrow.remove_metadata() != first_pf.schema_arrow.remove_metadata():
            raise DataError(f"columns differ from {first_path}", str(p))
        if counts is None:
            raise DataError("shard is incomplete (no final counts): rerun `lyra score` for it", str(p))
        lo, hi = meta["index_range"]
        if counts["rows"] + counts["skipped"] != hi - lo or pf.metadata.num_rows != counts["rows"]:
            raise DataError(f"shard rows ({counts['rows']}) + skipped ({counts['skipped']}) do not cover its "
                            f"index range {lo}..{hi}", str(p))
    n_shards = first_meta["n_shards"]
    by_shard: dict[int, Path] = {}
    for p, _, meta, _ in shards:
        if meta["shard"] in by_shard:
            raise DataError(f"shard {meta['shard']} is given twice (also {by_shard[meta['shard']]})", str(p))
        by_shard[meta["shard"]] = p
    missing = [k for k in range(n_shards) if k not in by_shard]
    if missing:
        raise DataError(f"shard {missing[0]} of {n_shards} is missing; got {sorted(by_shard)}", str(first_path))
    shards.sort(key=lambda s: s[2]["shard"])
    expected = 0
    for _, _, meta, _ in shards:  # contiguous ranges that tile [0, space)
        lo, hi = meta["index_range"]
        if lo != expected:
            raise DataError(f"shard {meta['shard']} starts at index {lo}, expected {expected}", str(by_shard[meta["shard"]]))
        expected = hi
    if expected != first_meta["space"]:
        raise DataError(f"shards end at index {expected} of {first_meta['space']}", str(first_path))

    total = {"rows": sum(s[3]["rows"] for s in shards), "skipped": sum(s[3]["skipped"] for s in shards)}
    meta = {k: v for k, v in first_meta.items() if k not in ("shard", "index_range")}
    meta["index_range"] = [0, first_meta["space"]]
    schema = first_pf.schema_arrow.with_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            for p, pf, meta_k, _ in shards:
                lo, hi = meta_k["index_range"]
                last = lo - 1
                for batch in pf.iter_batches(batch_size=batch_size):
                    idx = batch.column("index").to_numpy()
                    if idx.size and (idx[0] <= last or np.any(np.diff(idx) <= 0) or idx[-1] >= hi):
                        raise DataError(f"indices are not increasing inside the shard's range {lo}..{hi}", str(p))
                    last = int(idx[-1]) if idx.size else last
                    writer.write_table(pa.Table.from_batches([batch]).replace_schema_metadata(schema.metadata))
            writer.add_key_value_metadata({COUNTS_KEY: json.dumps(total).encode()})
        finally:
            writer.close()
    log.info("gathered %d shards: %d variants (%d skipped) -> %s", len(shards), total["rows"], total["skipped"], out_path)
    return out_path


# --- ranking -------------------------------------------------------------------------------------------


@dataclass
class RankConfig:
    strategy: str = "ucb"  # mean | ucb
    kappa: float = 1.0  # ucb: mean + kappa * std
    top_n: int = 96  # one plate
    diversity: dict = field(default_factory=dict)  # max_per_mutation, min_hamming, max_per_position (None = off)
    pool_factor: int = 50  # candidates considered before diversity: pool_factor * top_n, widened if needed
    allow_fewer: bool = False  # a ranking shorter than top_n is an error unless this is true

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"rank.strategy: must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if isinstance(self.kappa, bool) or not isinstance(self.kappa, (int, float)) or not self.kappa >= 0:
            raise ConfigError(f"rank.kappa: must be a number >= 0, got {self.kappa!r}")
        if not isinstance(self.allow_fewer, bool):
            raise ConfigError(f"rank.allow_fewer: must be true or false, got {self.allow_fewer!r}")
        for key in ("top_n", "pool_factor"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"rank.{key}: must be an integer >= 1, got {v!r}")
        div = dict(self.diversity or {})
        for key, v in div.items():
            if key not in DIVERSITY_KEYS:
                raise ConfigError(f"rank.diversity.{key}: unknown key; expected one of {list(DIVERSITY_KEYS)}")
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"rank.diversity.{key}: must be an integer >= 1 or null, got {v!r}")
        self.diversity = {k: div.get(k) for k in DIVERSITY_KEYS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RankConfig":
        d = {k: v for k, v in dict(d or {}).items() if k not in ORDER_KEYS}
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"rank.{key}: unknown key; expected one of {sorted(known)}")
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
        from lyra.design.library import _Layout

        self.pf, self.meta, self.index = pf, meta, index
        self.wt = meta.get("wild_type")
        self.names = pf.schema_arrow.names
        self.layout = None
        lib = meta.get("library") or {}
        if self.wt and lib.get("kind") in ("combinatorial", "saturation", "pairs") and "sequence" not in self.names:
            ab = get_alphabet(meta["alphabet"])
            self.layout = _Layout(LibraryConfig(**lib), self.wt, ab, meta["first_position"])
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
    pf, meta, _ = _file_meta(scores_path)
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
