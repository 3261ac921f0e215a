"""Score a design library with the ensemble, and pick what to order next.

Scoring streams a library shard chunk by chunk through every ensemble member and appends one Parquet row
group per chunk, so memory stays flat whatever the library size. Each shard file records, in its
metadata, which library and index range it covers and how many variants it skipped (measured, wild
type), so `gather_scores` can prove the shards are disjoint and complete before concatenating them.

Ranking reads only the `mean` and `std` columns of the scores, computes the acquisition

    mean:  a = mu
    ucb:   a = mu + kappa * sigma        (sigma: the spread of the ensemble members)

takes the best `pool_factor * top_n` candidates, and walks them in order, picking a candidate unless it
breaks a diversity rule (a mutation already used `max_per_mutation` times, a position already mutated
`max_per_position` times, or a Hamming distance below `min_hamming` to an earlier pick). Each pick gets a
one-line reason: its acquisition, its rank before diversity, and what was skipped to reach it.
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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lyra.alphabet import Alphabet, get_alphabet
from lyra.errors import ConfigError, DataError, LyraError
from lyra.io import atomic_path, write_text
from lyra.library import Exclusion, LibraryConfig, _iter_layout, _layout, make_exclusion

log = logging.getLogger("lyra.rank")

STRATEGIES = ("mean", "ucb")
DIVERSITY_KEYS = ("max_per_mutation", "min_hamming", "max_per_position")
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
) -> Path:
    """Score shard `shard` of `n_shards` with every checkpoint and write it to `out_path` (Parquet).

    Columns: index, variant_id, mutations, n_mutations, [sequence], score_<k> per checkpoint, mean, std
    (float32; std is the population std over members, 0 for one model). `write_sequences` defaults to
    True only when sequences cannot be rebuilt from the wild type and the mutations.
    """
    from lyra.train import load_checkpoint, predict_tokens

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
    lay = _layout(cfg, wild_type, ab, first_position)
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
    from lyra.library import shard_range

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

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"rank.strategy: must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if isinstance(self.kappa, bool) or not isinstance(self.kappa, (int, float)) or not self.kappa >= 0:
            raise ConfigError(f"rank.kappa: must be a number >= 0, got {self.kappa!r}")
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
        d = dict(d or {})
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
    """Row numbers of the k best, sorted by acquisition (descending), ties by row number."""
    k = min(k, acq.size)
    part = np.argpartition(-acq, k - 1)[:k] if k < acq.size else np.arange(acq.size)
    # argpartition picks an arbitrary subset among ties at the boundary: take every row tied with the k-th
    kth = acq[part].min() if part.size else -np.inf
    part = np.union1d(part, np.flatnonzero(acq == kth)) if part.size else part
    order = np.lexsort((part, -acq[part]))
    return part[order][:k]


def _read_rows(pf: pq.ParquetFile, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """Selected row numbers of a Parquet file, row group by row group (never the whole string columns)."""
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


def _sequences_for(frame: pd.DataFrame, meta: dict) -> list[str]:
    if "sequence" in frame.columns:
        return frame["sequence"].tolist()
    from lyra.variants import MutationParser

    wt, first = meta["wild_type"], meta["first_position"]
    if wt is None:
        raise DataError("scores hold neither sequences nor a wild type to rebuild them from")
    parse = MutationParser(wt, first)
    out = []
    for text in frame["mutations"].tolist():
        seq = bytearray(wt.encode())
        for m in parse(text):
            seq[m.position - first] = ord(m.mt)
        out.append(seq.decode())
    return out


def _hamming_to_picks(row: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Hamming distances (n_picks,) from one padded byte row to the picked rows (padding counts)."""
    return (picks != row[None, :]).sum(axis=1)


def _greedy(cand: pd.DataFrame, seqs: list[str], cfg: RankConfig) -> tuple[list[int], list[Counter]]:
    """Walk candidates in acquisition order; -> (positions of picks in `cand`, per pick the skip reasons)."""
    div = cfg.diversity
    cap_mut, cap_pos, min_ham = div["max_per_mutation"], div["max_per_position"], div["min_hamming"]
    L = max((len(s) for s in seqs), default=0)
    rows = np.zeros((len(seqs), L), dtype=np.uint8)  # padded bytes, 0 = past the end
    for i, s in enumerate(seqs):
        rows[i, : len(s)] = np.frombuffer(s.encode(), dtype=np.uint8)
    muts = [m.split(":") if isinstance(m, str) and m else [] for m in cand["mutations"].tolist()]
    used_mut: Counter = Counter()
    used_pos: Counter = Counter()
    picks: list[int] = []
    reasons: list[Counter] = []
    skipped: Counter = Counter()
    for i in range(len(cand)):
        if len(picks) >= cfg.top_n:
            break
        why = None
        if cap_mut is not None:
            full = next((m for m in muts[i] if used_mut[m] >= cap_mut), None)
            if full is not None:
                why = f"repeating {full} (cap {cap_mut})"
        if why is None and cap_pos is not None:
            full = next((m[1:-1] for m in muts[i] if used_pos[m[1:-1]] >= cap_pos), None)
            if full is not None:
                why = f"mutating position {full} again (cap {cap_pos})"
        if why is None and min_ham is not None and picks:
            d = _hamming_to_picks(rows[i], rows[picks])
            close = np.flatnonzero(d < min_ham)
            if close.size:
                j = int(close[0])
                why = f"within Hamming distance {int(d[j])} of pick {j + 1} (min {min_ham})"
        if why is not None:
            skipped[why] += 1
            continue
        picks.append(i)
        reasons.append(skipped)
        skipped = Counter()
        used_mut.update(muts[i])
        used_pos.update(m[1:-1] for m in muts[i])
    return picks, reasons


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _reason(row: Mapping[str, Any], acq_rank: int, skipped: Counter, cfg: RankConfig) -> str:
    mu, sd, a = float(row["mean"]), float(row["std"]), float(row["acquisition"])
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


def rank_variants(scores_path: str | Path, rank_cfg: RankConfig | Mapping[str, Any]) -> pd.DataFrame:
    """Pick `top_n` variants from a scores file; see the module docstring. Columns: rank, variant_id,
    mutations, n_mutations, sequence, mean, std, acquisition, acquisition_rank, reason."""
    cfg = rank_cfg if isinstance(rank_cfg, RankConfig) else RankConfig.from_dict(rank_cfg)
    scores_path = Path(scores_path)
    pf, meta, _ = _file_meta(scores_path)
    names = pf.schema_arrow.names
    for col in ("mean", "std", "variant_id", "mutations"):
        if col not in names:
            raise DataError(f"scores have no {col!r} column", str(scores_path))
    stats = pf.read(columns=["mean", "std"])
    mean = stats.column("mean").to_numpy()
    std = stats.column("std").to_numpy()
    del stats
    acq = acquisition(mean, std, cfg)
    n = acq.size
    if n == 0:
        raise DataError("the library has no scored variants (all excluded?)", str(scores_path))
    columns = [c for c in ("variant_id", "mutations", "n_mutations", "sequence") if c in names]
    pool = cfg.pool_factor * cfg.top_n
    while True:
        rows = _top_rows(acq, pool)  # (k,) sorted by acquisition
        cand = _read_rows(pf, rows, columns).reset_index(drop=True)
        cand["mean"], cand["std"], cand["acquisition"] = mean[rows], std[rows], acq[rows]
        seqs = _sequences_for(cand, meta)
        picks, reasons = _greedy(cand, seqs, cfg)
        if len(picks) >= cfg.top_n or rows.size >= n:
            break
        pool *= 4  # diversity rules rejected too many: widen the pool (the greedy prefix is unchanged)
        log.info("diversity rules left %d of %d picks; widening the candidate pool to %d", len(picks), cfg.top_n, pool)
    if len(picks) < cfg.top_n:
        log.warning("only %d variants satisfy the diversity rules (top_n %d)", len(picks), cfg.top_n)
    out = cand.iloc[picks].copy()
    out["sequence"] = [seqs[i] for i in picks]
    out["acquisition_rank"] = [i + 1 for i in picks]  # ties ranked by file order
    out["reason"] = [_reason(r, int(k), why, cfg) for (_, r), k, why in zip(out.iterrows(), out["acquisition_rank"], reasons)]
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    if "n_mutations" not in out:
        out["n_mutations"] = pd.array([None] * len(out), dtype="Int32")
    cols = ["rank", "variant_id", "mutations", "n_mutations", "sequence", "mean", "std", "acquisition",
            "acquisition_rank", "reason"]
    out = out[cols].reset_index(drop=True)
    out["mean"] = out["mean"].astype(np.float64)
    out["std"] = out["std"].astype(np.float64)
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
