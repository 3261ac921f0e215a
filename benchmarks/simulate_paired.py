"""Strategies of simulated campaigns compared run by run against one of them (one-hot ridge by default).

Every strategy of run k starts from the same first plate, so the difference between two strategies on
the same run is free of the plate's luck, which dominates a single round's best. For each strategy and
budget (variants screened), over the runs both strategies finished:

    difference = mean over runs of (best / global max of the strategy - that of the baseline),  with its s.e.

and how many runs it was ahead of the baseline, level with it, or behind. It reads the runs table that
`snakemake simulate` writes (`results/<campaign>/simulation/runs.parquet`) or that
`lyra simulate-collect --runs` gathers, or several of them with other runs of the same strategies:

    python benchmarks/simulate_paired.py --runs results/gb1_mlde/simulation/runs.parquet
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

COLUMNS = ("strategy", "run", "screened", "norm_best")


def paired(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per strategy and budget: runs, mean, difference from `baseline` with its s.e., ahead / level / behind."""
    table = runs.pivot_table(index=["screened", "run"], columns="strategy", values="norm_best")
    rows = []
    for screened, block in table.groupby(level="screened"):
        for strategy in block.columns:
            ours, theirs = block[strategy], block[baseline]
            both = ours.notna() & theirs.notna()
            diff = (ours[both] - theirs[both]).to_numpy()  # (runs,)
            rows.append({"strategy": strategy, "screened": int(screened), "runs": len(diff),
                         "mean": float(ours[both].mean()), "difference": float(diff.mean()),
                         "sem": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan"),
                         "ahead": int((diff > 0).sum()), "level": int((diff == 0).sum()),
                         "behind": int((diff < 0).sum())})
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, nargs="+",
                    help="runs tables (runs.parquet of a simulation); several are read as one, each run once")
    ap.add_argument("--baseline", default="ridge", help="the strategy every other is compared with")
    ap.add_argument("--screened", type=int, default=None, help="one budget only (default: every budget)")
    args = ap.parse_args(argv)

    tables = []
    for path in args.runs:
        try:
            table = pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"simulate_paired: {path}: cannot read a runs table ({e})") from None
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise SystemExit(f"simulate_paired: {path}: no column {missing[0]!r} (a runs table of `snakemake simulate`?)")
        tables.append(table[list(COLUMNS)])
    runs = pd.concat(tables, ignore_index=True)
    named = ", ".join(args.runs)
    twice = runs.duplicated(["strategy", "run", "screened"])
    if twice.any():
        row = runs[twice].iloc[0]
        raise SystemExit(f"simulate_paired: {named}: run {row['run']} of {row['strategy']!r} is in the tables twice")
    if args.baseline not in set(runs["strategy"]):
        raise SystemExit(f"simulate_paired: {named}: no strategy {args.baseline!r} "
                         f"(it has {', '.join(sorted(set(runs['strategy'])))})")
    if args.screened is not None:
        runs = runs[runs["screened"] == args.screened]
        if runs.empty:
            raise SystemExit(f"simulate_paired: {named}: no round ends at {args.screened} screened")
    result = paired(runs, args.baseline)
    print(f"best / global max against {args.baseline}, run by run ({named})\n")
    print(f"| strategy | screened | runs | mean | difference from {args.baseline} | ahead / level / behind |")
    print("|---|---:|---:|---:|---:|---|")
    for r in result.to_dict("records"):
        print(f"| {r['strategy']} | {r['screened']} | {r['runs']} | {r['mean']:.3f} | "
              f"{r['difference']:+.3f} ± {r['sem']:.3f} | {r['ahead']} / {r['level']} / {r['behind']} |")
    return result


if __name__ == "__main__":
    main()
