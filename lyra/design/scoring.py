"""Score a design library with the ensemble, and gather the shards' scores into one file.

Scoring streams a library shard chunk by chunk through every ensemble member (and, when given, the
one-hot ridge baseline, `lyra.learn.ridge`) and appends one Parquet row group per chunk, so memory stays
flat whatever the library size. Each shard file records, in its metadata, which library and index range
it covers and how many variants it skipped (measured, wild type), so `gather_scores` can prove the
shards are disjoint and complete before concatenating them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lyra.data.alphabet import Alphabet, get_alphabet
from lyra.design.library import Exclusion, LibraryConfig, iter_layout, make_exclusion, make_layout, shard_range
from lyra.errors import ConfigError, DataError, LyraError
from lyra.io import atomic_path

log = logging.getLogger("lyra.design.scoring")

META_KEY = b"lyra"
COUNTS_KEY = b"lyra_counts"  # written when a shard is complete


# --- scoring -------------------------------------------------------------------------------------------


RIDGE_COLUMN = "ridge"  # the one-hot ridge baseline's prediction, when the shard was scored with one


def score_schema(n_models: int, write_sequences: bool, meta: dict, ridge: bool = False) -> pa.Schema:
    """The columns of a scores file (see `score_shard`), with `meta` as its 'lyra' metadata."""
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
    if ridge:
        fields.append(pa.field(RIDGE_COLUMN, pa.float32()))
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
    ridge: str | Path | None = None,
) -> Path:
    """Score shard `shard` of `n_shards` with every checkpoint and write it to `out_path` (Parquet).

    Columns: index, variant_id, mutations, n_mutations, [sequence], score_<k> per checkpoint, mean, std
    (float32; std is the population std over members, 0 for one model), and with `ridge` (a model file
    of `lyra.learn.ridge.save_ridge`) that model's prediction, `ridge`. `write_sequences` defaults to
    True only when sequences cannot be rebuilt from the wild type and the mutations. `padding`
    (data.padding) is stripped from the sequences of a `file` library, as from the training data.
    """
    from lyra.learn.checkpoints import load_checkpoint, predict_tokens
    from lyra.learn.ridge import load_ridge

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
    baseline = None
    if ridge is not None:
        baseline = load_ridge(ridge)
        if baseline.alphabet.name != ab.name:
            raise LyraError(f"{ridge}: ridge model alphabet {baseline.alphabet.name!r} differs from the data's "
                            f"{ab.name!r}")
    lay = make_layout(cfg, wild_type, ab, first_position, padding)
    lay.build()
    exclusion = make_exclusion(exclude, wild_type, first_position, ab)
    if write_sequences is None:
        write_sequences = wild_type is None
    start, stop = shard_range(lay.space, shard, n_shards)
    meta = {
        "library": dataclasses.asdict(cfg), "wild_type": wild_type, "first_position": first_position,
        "alphabet": ab.name, "checkpoints": [str(p) for p in checkpoints],
        "targets": list(members[0][1]["targets"]), "task": members[0][1]["task"],
        "shard": shard, "n_shards": n_shards, "space": int(lay.space), "library_size": int(lay.size),
        "index_range": [start, stop], "ridge": None if ridge is None else str(ridge),
    }
    schema = score_schema(len(members), write_sequences, meta, ridge=baseline is not None)
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
            for chunk in iter_layout(lay, shard, n_shards, cfg.chunk_size, exclusion):
                tokens = torch.from_numpy(chunk.tokens.astype(np.int64))  # (n, L)
                mask = None if chunk.mask is None else torch.from_numpy(chunk.mask)
                scores = np.stack(
                    [predict_tokens(model, info, tokens, mask, batch_size)[:, col] for model, info, col in members],
                    axis=1,
                )  # (n, M)
                ridge_scores = None
                if baseline is not None:
                    baseline = baseline.with_length(chunk.tokens.shape[1])  # a longer library variant: zero weights
                    ridge_tokens = chunk.tokens  # (n, L)
                    if chunk.mask is not None:  # past a shorter variant's end: padding, no weight
                        ridge_tokens = np.where(chunk.mask, ridge_tokens, ab.pad_token)  # (n, L)
                    ridge_scores = baseline.predict_tokens(ridge_tokens)  # (n,)
                writer.write_table(_chunk_table(chunk, scores, schema, write_sequences, ridge_scores))
                n_rows += len(chunk)
                bar.update(max(1, round(len(chunk) / cfg.chunk_size)))
            skipped = (stop - start) - n_rows
            writer.add_key_value_metadata({COUNTS_KEY: json.dumps({"rows": n_rows, "skipped": skipped}).encode()})
        finally:
            writer.close()
            bar.close()
    log.info("shard %d/%d: %d variants scored by %d models%s (%d skipped) in %.1f s -> %s", shard, n_shards, n_rows,
             len(members), "" if baseline is None else " and one-hot ridge", skipped, time.perf_counter() - started,
             out_path)
    return out_path


def _chunk_table(chunk, scores: np.ndarray, schema: pa.Schema, write_sequences: bool,
                 ridge_scores: np.ndarray | None = None) -> pa.Table:
    """One chunk -> a table in `schema`; scores (n, M) float64, ridge_scores (n,) or None."""
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
    if ridge_scores is not None:
        cols[RIDGE_COLUMN] = pa.array(ridge_scores.astype(np.float32))
    return pa.Table.from_pydict(cols, schema=schema)


# --- gathering -----------------------------------------------------------------------------------------


def open_scores(path: str | Path) -> tuple[pq.ParquetFile, dict, dict | None]:
    """A scores file (a shard or the gathered scores): the open Parquet file, its metadata (library,
    wild type, numbering, index range) and its final counts {rows, skipped} (None while incomplete)."""
    path = Path(path)
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
    return open_scores(path)[1]


_SAME_LIBRARY_KEYS = ("library", "wild_type", "first_position", "alphabet", "checkpoints", "ridge", "space",
                      "n_shards")


def gather_scores(shard_paths: Sequence[str | Path], out_path: str | Path, batch_size: int = 65536) -> Path:
    """Concatenate shard files into one (streaming), after checking that they are the shards of one
    library and model set, disjoint, and complete (every index scored or counted as skipped)."""
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise ConfigError("gather: no shard files given")
    shards = [(p, *open_scores(p)) for p in paths]
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
