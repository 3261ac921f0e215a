"""`lyra <stage>`: every campaign stage from the command line, without Snakemake.

    lyra run --config config/config.yaml                 # the whole campaign in one process
    lyra preprocess --config C --out data.parquet        # one stage, explicit paths (what the rules call)
    lyra simulate-round --config C                       # replay: the lab's results for the current picks

Errors in the user's input print one line (`error: ...`) and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Before torch loads: idle OpenMP threads sleep instead of spinning. On a shared node (or with two jobs
# on two cores) spinning threads starve each other: a training step measured 20x slower. Override by
# setting OMP_WAIT_POLICY yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Any, Sequence


def keep_freed_memory() -> None:
    """glibc: keep up to 1 GB of freed heap and serve blocks up to 32 MB from it, so the same-sized
    tensors of every scoring batch are not page-faulted in afresh (benchmarks/speed.py's "tuned"
    setting calls this too)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


keep_freed_memory()

from lyra.campaign import checks, run, stages
from lyra.campaign.config import load_config, parse_overrides
from lyra.errors import LyraError, one_line

log = logging.getLogger("lyra")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="campaign config (YAML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.max_epochs=5")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lyra", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="all stages in one process")
    _common(p)
    p.add_argument("--results", default="results", help="results root (default: results)")

    p = sub.add_parser("check-config", help="validate a config and print it with defaults filled in")
    _common(p)

    p = sub.add_parser("preprocess", help="measurements -> the Parquet dataset, and a Markdown summary")
    _common(p)
    p.add_argument("--out", required=True, help="the dataset (Parquet) to write")
    p.add_argument("--report", help="where to write the summary of what was read, dropped and split")

    p = sub.add_parser("tune-worker", help="one Optuna worker on the shared journal")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--done", help="file to touch when the worker has finished")

    p = sub.add_parser("tune-collect", help="best trial -> best.json + trials table")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--trials", required=True)

    p = sub.add_parser("train", help="one ensemble member")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--member", type=int, required=True, help="ensemble member k (its seed derives from the campaign seed)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("evaluate", help="ensemble metrics on the validation and test splits, and the one-hot "
                                        "ridge baseline's beside them")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ridge", help="the one-hot ridge baseline's model file, for regression on one target "
                                   "(default: ridge.npz next to --out)")
    p.add_argument("checkpoints", nargs="+")

    p = sub.add_parser("score", help="score one shard of the design library")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ridge", help="the one-hot ridge baseline (lyra evaluate --ridge) that also scores the "
                                   "library, for regression on one target (default: ridge.npz next to the checkpoints)")
    p.add_argument("checkpoints", nargs="+")

    p = sub.add_parser("gather", help="concatenate library shards")
    p.add_argument("--out", required=True)
    p.add_argument("shards", nargs="+")
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("rank", help="pick the variants to order next")
    _common(p)
    p.add_argument("--scores", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--fasta", required=True)
    p.add_argument("--dataset", help="dataset.parquet: ranking.csv gains the measured value of picks measured already")
    p.add_argument("--plate", help="the plate map (default: plate.csv next to --csv)")
    p.add_argument("--dna", help="the picks' genes, with data.wild_type_dna (default: ranking_dna.fasta next to --csv)")
    p.add_argument("--metrics", help="metrics.json, read by rank.model: auto (default: the campaign's, in the folder "
                                     "of --csv)")
    p = sub.add_parser("simulate-round", help="replay the lab: measure the ranking's picks in a complete landscape")
    _common(p)
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--truth", help="fully measured file in the data section's format (default: data.path, whole)")
    p.add_argument("--round", type=int, help="round number (default: the next one)")
    p = sub.add_parser("simulate-library", help="retrospective campaigns: the landscape as the library every round scores")
    p.add_argument("--dataset", required=True, help="the campaign's dataset.parquet: the complete landscape")
    p.add_argument("--out", required=True)
    p.add_argument("-v", "--verbose", action="store_true")
    p = sub.add_parser("simulate-run", help="retrospective campaigns: one run of one strategy, round by round")
    _common(p)
    p.add_argument("--dataset", required=True, help="the campaign's dataset.parquet: the complete landscape")
    p.add_argument("--library", required=True, help="the landscape as a library file (simulate-library)")
    p.add_argument("--strategy", required=True)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--out", required=True, help="the run's table, one row per round (Parquet)")
    p.add_argument("--picks", required=True, help="every variant the run measured (CSV)")
    p.add_argument("--work", required=True, help="folder of the finished rounds (a rerun resumes from them)")
    p = sub.add_parser("simulate-collect", help="retrospective campaigns: every run -> runs.parquet, summary.csv, figure")
    p.add_argument("--runs", required=True, help="runs.parquet to write")
    p.add_argument("--summary", required=True, help="summary.csv to write")
    p.add_argument("--figure", help="the summary figure (PNG)")
    p.add_argument("tables", nargs="+", help="the runs' tables (simulate-run --out)")
    p.add_argument("-v", "--verbose", action="store_true")
    p = sub.add_parser("zero-shot", help="rank the library by the evolutionary prior alone (prior.msa), no model")
    _common(p)
    p.add_argument("--out", required=True, help="CSV of the top variants")
    p.add_argument("--top", type=int, default=None, help="how many (default: rank.top_n)")
    p = sub.add_parser("report", help="figures (report/*.png), tables and manifest.json of a finished campaign")
    p.add_argument("--campaign-dir", required=True, help="results/<campaign>")
    p.add_argument("--config", nargs="+", default=[],
                   help="config YAML(s): the campaign's per-stage configs, or the campaign config")
    p.add_argument("--out-dir", help="where the figures and tables go (default: the campaign's report/)")
    p.add_argument("--manifest", help="also write the provenance manifest here (results/<campaign>/manifest.json)")
    p.add_argument("--source-config", nargs="*", default=[], help="the user's config file(s), hashed into the manifest")
    p.add_argument("--device", default="cpu", help="device for the predictions (default cpu)")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def _dispatch(args: argparse.Namespace, config: dict | None) -> None:
    if args.command == "gather":
        stages.gather(args.shards, args.out)
        return
    if args.command == "simulate-library":
        from lyra.campaign.simulate import write_library

        print(write_library(args.dataset, args.out))
        return
    if args.command == "simulate-collect":
        from lyra.campaign.simulate import collect

        print(collect(args.tables, args.runs, args.summary, args.figure))
        return
    cmd = args.command
    if cmd == "run":
        root = run.run_campaign(config, args.results, config_files=(args.config,))
        print(f"campaign finished: {root}")
    elif cmd == "check-config":
        from lyra.campaign.config import dump

        checks.check_campaign(config)
        print(dump({k: v for k, v in config.items() if not k.startswith("_")}), end="")
    elif cmd == "preprocess":
        print(stages.preprocess(config, args.out, report=args.report))
    elif cmd == "tune-worker":
        n = stages.tune_worker(config, args.dataset, args.journal, args.worker)
        log.info("worker %d ran %d trials", args.worker, n)
        if args.done:
            Path(args.done).parent.mkdir(parents=True, exist_ok=True)
            Path(args.done).write_text(f"{n}\n")
    elif cmd == "tune-collect":
        stages.tune_collect(config, args.dataset, args.journal, args.best, args.trials)
    elif cmd == "train":
        stages.train(config, args.dataset, args.best, args.member, args.out)
    elif cmd == "evaluate":
        stages.evaluate(config, args.dataset, args.checkpoints, args.out, ridge=args.ridge)
    elif cmd == "score":
        stages.score(config, args.dataset, args.checkpoints, args.shard, args.out, ridge=args.ridge)
    elif cmd == "rank":
        stages.rank(config, args.scores, args.csv, args.fasta, dataset=args.dataset, plate=args.plate, dna=args.dna,
                    metrics=args.metrics)
    elif cmd == "zero-shot":
        print(stages.zero_shot(config, args.out, args.top))
    elif cmd == "simulate-run":
        from lyra.campaign.simulate import simulate_run

        print(simulate_run(config, args.dataset, args.library, args.strategy, args.run, args.out, args.picks,
                           args.work))
    elif cmd == "simulate-round":
        from lyra.campaign.rounds import simulate_round

        print(simulate_round(config, args.results, args.truth, args.round))
    else:  # pragma: no cover - argparse rejects unknown commands
        raise SystemExit(f"unknown command {cmd}")


def read_configs(paths: Sequence[str | Path]) -> dict:
    """Merge YAML configs section by section: the per-stage files of a campaign (results/<c>/config/)
    together are its resolved config; a single user config is resolved (defaults filled)."""
    import yaml

    merged: dict[str, Any] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise LyraError(f"{p}: config file does not exist")
        d = yaml.safe_load(p.read_text()) or {}
        for key, value in d.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    if "_base_dir" not in merged and "data" in merged and len(paths) == 1:
        return load_config(paths[0])
    return merged


def run_report(args: argparse.Namespace) -> list[Path]:
    """`lyra report`: the figures and tables (lyra.report), then, with --manifest, manifest.json."""
    from lyra.campaign.manifest import write_manifest
    from lyra.report.report import make_report

    config = read_configs(args.config) if args.config else {}
    paths = make_report(args.campaign_dir, config, device=args.device, out_dir=args.out_dir)
    if args.manifest:
        # the manifest's device is the training device setting, not this job's (a CPU job)
        write_manifest(args.campaign_dir, config, args.manifest, config_files=[*args.config, *args.source_config])
        paths.append(Path(args.manifest))
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "report":  # reads the per-stage configs of a finished campaign, not one user config
        try:
            run_report(args)
        except LyraError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        return 0
    source = getattr(args, "config", None)
    try:
        config = load_config(args.config, parse_overrides(args.set)) if source else None
        # a stage config written by the workflow names the user's own file
        source = (config or {}).get("_source") or source
        _dispatch(args, config)
    except LyraError as e:
        print(f"error: {one_line(e, source)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
