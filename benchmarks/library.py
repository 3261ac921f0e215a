"""Library scoring throughput and memory.

(a) The 160,000-variant GB1 four-site library (positions 39, 40, 41, 54 of the 56-aa 2GI9 domain x 20
    residues, wild type included) is enumerated, scored by ONE default Lyra model (random init: timing
    only), gathered and ranked (UCB, top 96, diversity caps), and the ranking written: total wall time.
(b) A 10,000,000-variant combinatorial library (`resources/libraries/gb1_ten_million.yaml`: 7 GB1
    positions x 10 residues) streamed through the scorer in 2 shards, each in its own process, then
    gathered and ranked in their own processes; peak RSS of every process (VmHWM, and ru_maxrss, which on
    Linux also counts the parent's peak: see `peak_rss_mb`). The full stream
    uses a small Lyra (`--stream-d-model`, default 8) so that it finishes on a shared CPU; the default
    model's throughput and RSS are measured on a slice (`--default-fraction` of the library) and the
    full-library time extrapolated from it. The table says which number is which.

    python benchmarks/library.py                 # both parts
    python benchmarks/library.py --skip-10m      # part (a) only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WT_FASTA = ROOT.parent / "shared" / "data" / "gb1_wu2016" / "2GI9.fasta"
GB1_WT = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"


def wild_type() -> str:
    if WT_FASTA.is_file():
        from lyra.data.variants import read_wild_type

        return read_wild_type(str(WT_FASTA))
    return GB1_WT  # the same 56 residues, for machines without the shared data


def make_checkpoint(path: Path, d_model: int = 64, d_state: int = 64, seed: int = 0) -> Path:
    """A randomly initialised Lyra in the checkpoint format of docs/architecture.md."""
    import torch

    from lyra.model.lyra import Lyra, LyraConfig

    torch.manual_seed(seed)
    cfg = LyraConfig(d_model=d_model, d_state=d_state)
    torch.save({"model_config": cfg.to_dict(), "state_dict": Lyra.from_config(cfg).state_dict(),
                "alphabet": "protein", "targets": ["fitness"], "task": "regression",
                "target_transform": {"kind": "none"}, "seed": seed}, path)
    return path


def peak_rss_mb() -> float:
    """Peak resident set of this process in MB: VmHWM where /proc has it, else ru_maxrss.

    On Linux ru_maxrss survives execve, so a child started by a big parent reports at least the
    parent's peak; VmHWM belongs to the process's own address space. Both are recorded (`ru_maxrss_mb`).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- one step per process (so that ru_maxrss is that step's peak) -------------------------------------


def step(kind: str, spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from lyra.design.library import LibraryConfig
    from lyra.design.rank import RankConfig, rank_variants, write_ranking
    from lyra.design.scoring import gather_scores, score_shard

    t0, c0 = time.perf_counter(), time.process_time()
    out: dict = {}
    if kind == "score":
        path = score_shard(spec["checkpoints"], LibraryConfig.from_dict(spec["library"]), spec["wild_type"], 1,
                           "protein", spec["shard"], spec["n_shards"], spec["out"], progress=False,
                           batch_size=spec["batch_size"])
        import pyarrow.parquet as pq

        out["rows"] = pq.ParquetFile(path).metadata.num_rows
        out["mb_on_disk"] = Path(path).stat().st_size / 2**20
    elif kind == "gather":
        gather_scores(spec["shards"], spec["out"])
    elif kind == "rank":
        df = rank_variants(spec["scores"], RankConfig.from_dict(spec["rank"]))
        write_ranking(df, spec["csv"], spec["fasta"])
        out["picks"] = len(df)
        out["top"] = df["variant_id"].iloc[0]
    out.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, peak_rss_mb=peak_rss_mb(),
               ru_maxrss_mb=ru_maxrss_mb())
    return out


def run_step(kind: str, spec: dict) -> dict:
    """Run `step` in a fresh Python process and return its numbers (peak RSS of that process only)."""
    cmd = [sys.executable, __file__, "--step", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"step {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the benchmarks -----------------------------------------------------------------------------------


RANK = {"strategy": "ucb", "kappa": 1.0, "top_n": 96, "diversity": {"max_per_mutation": 24, "min_hamming": 2}}


def gb1_160k(tmp: Path, threads: int, batch_size: int) -> list[dict]:
    """(a): everything in one process, timed stage by stage (the < 60 s target is the total)."""
    import torch

    torch.set_num_threads(threads)
    from lyra.design.library import LibraryConfig, library_size
    from lyra.design.rank import RankConfig, rank_variants, write_ranking
    from lyra.design.scoring import gather_scores, score_shard

    wt = wild_type()
    ckpt = make_checkpoint(tmp / "default.pt")
    lib = LibraryConfig.from_dict({"spec": "gb1_four_site"})
    rows = []
    t_all, c_all = time.perf_counter(), time.process_time()
    t, c = time.perf_counter(), time.process_time()
    size = library_size(lib, wt)
    shard = score_shard([ckpt], lib, wt, 1, "protein", 0, 1, tmp / "shard0.parquet", progress=False,
                        batch_size=batch_size)
    rows.append({"stage": "enumerate + score (1 default Lyra)", "variants": size, "wall_s": time.perf_counter() - t,
                 "cpu_s": time.process_time() - c})
    t, c = time.perf_counter(), time.process_time()
    scores = gather_scores([shard], tmp / "scores.parquet")
    rows.append({"stage": "gather", "variants": size, "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c})
    t, c = time.perf_counter(), time.process_time()
    df = rank_variants(scores, RankConfig.from_dict(RANK))
    write_ranking(df, tmp / "ranking.csv", tmp / "ranking.fasta")
    rows.append({"stage": "rank (UCB, top 96, diversity) + write", "variants": size, "wall_s": time.perf_counter() - t,
                 "cpu_s": time.process_time() - c})
    rows.append({"stage": "total", "variants": size, "wall_s": time.perf_counter() - t_all,
                 "cpu_s": time.process_time() - c_all, "peak_rss_mb": peak_rss_mb(), "ru_maxrss_mb": ru_maxrss_mb()})
    return rows


def ten_million(tmp: Path, threads: int, batch_size: int, stream_d_model: int, default_fraction: int) -> list[dict]:
    from lyra.design.library import LibraryConfig, library_size

    wt = wild_type()
    lib = LibraryConfig.from_dict({"spec": "gb1_ten_million"})
    size = library_size(lib, wt)
    lib_dict = {"spec": "gb1_ten_million"}
    small = make_checkpoint(tmp / "small.pt", d_model=stream_d_model, d_state=stream_d_model)
    default = make_checkpoint(tmp / "default.pt")
    rows = []
    shards = []
    for k in range(2):
        out = tmp / f"shard{k}.parquet"
        r = run_step("score", {"checkpoints": [str(small)], "library": lib_dict, "wild_type": wt, "shard": k,
                               "n_shards": 2, "out": str(out), "threads": threads, "batch_size": batch_size})
        rows.append({"stage": f"score shard {k}/2 (d_model {stream_d_model}, full stream)", "variants": r["rows"],
                     **r})
        shards.append(str(out))
    r = run_step("gather", {"shards": shards, "out": str(tmp / "scores.parquet"), "threads": threads})
    rows.append({"stage": "gather 2 shards", "variants": size, **r})
    r = run_step("rank", {"scores": str(tmp / "scores.parquet"), "rank": RANK, "csv": str(tmp / "ranking.csv"),
                          "fasta": str(tmp / "ranking.fasta"), "threads": threads})
    rows.append({"stage": "rank 10M (UCB, top 96, diversity)", "variants": size, **r})
    for p in shards:
        Path(p).unlink()
    r = run_step("score", {"checkpoints": [str(default)], "library": lib_dict, "wild_type": wt, "shard": 0,
                           "n_shards": default_fraction, "out": str(tmp / "default.parquet"), "threads": threads,
                           "batch_size": batch_size})
    rows.append({"stage": f"score 1/{default_fraction} slice (default Lyra)", "variants": r["rows"], **r})
    rows.append({"stage": "score 10M (default Lyra), extrapolated", "variants": size,
                 "wall_s": r["wall_s"] * size / r["rows"], "cpu_s": r["cpu_s"] * size / r["rows"]})
    return rows


def table(title: str, rows: list[dict]) -> str:
    lines = [f"### {title}", "", "| stage | variants | wall s | CPU s | variants/s (wall) | peak RSS MB (VmHWM) "
             "| ru_maxrss MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rate = f"{r['variants'] / r['wall_s']:,.0f}" if "score" in r["stage"] else ""
        cpu = f"{r['cpu_s']:.1f}" if "cpu_s" in r else ""
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else ""
        ru = f"{r['ru_maxrss_mb']:.0f}" if "ru_maxrss_mb" in r else ""
        lines.append(f"| {r['stage']} | {r['variants']:,} | {r['wall_s']:.1f} | {cpu} | {rate} | {rss} | {ru} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--step":
        print(json.dumps(step(sys.argv[2], json.loads(sys.argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core CPU)")
    ap.add_argument("--batch-size", type=int, default=1024, help="variants per forward pass")
    ap.add_argument("--skip-160k", action="store_true")
    ap.add_argument("--skip-10m", action="store_true")
    ap.add_argument("--stream-d-model", type=int, default=8)
    ap.add_argument("--default-fraction", type=int, default=50, help="time the default model on 1/k of 10M")
    args = ap.parse_args(argv)
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_160k:
            print(table("GB1 four-site library, 160,000 variants (one process)", gb1_160k(Path(tmp), args.threads,
                                                                                      args.batch_size)), flush=True)
        if not args.skip_10m:
            rows = ten_million(Path(tmp), args.threads, args.batch_size, args.stream_d_model, args.default_fraction)
            print(table("10,000,000-variant library (one process per step)", rows), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
