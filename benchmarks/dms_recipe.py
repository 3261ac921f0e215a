"""Training recipes for a DMS of a long protein: validation Spearman of one Lyra member after each epoch.

A deep mutational scan of a long enzyme is the case where Lyra's mean pooling hurts most: variants with
1-5 mutations of 501 residues have pooled features that differ by a fraction of a percent. This script
trains one member (seed 0) per recipe on a fixed random subsample of the campaign's training variants,
selects on a fixed subsample of its validation variants (the test split is never read), and prints the
validation Spearman after each epoch beside one-hot ridge (alpha by 5-fold CV, the evaluate stage's
baseline) fitted on the same rows. It reads the dataset the campaign's preprocess stage wrote:

    snakemake results/dms_bgl3/data/dataset.parquet --configfile config/dms_bgl3.yaml --cores 1
    python benchmarks/dms_recipe.py --dataset results/dms_bgl3/data/dataset.parquet --threads 1

Recipes are `name=JSON` pairs of model and train overrides (`--recipe 'mine={"model": {...}, "train": {...}}'`);
the defaults below are the ones docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lyra.data.dataset import load_dataset  # noqa: E402
from lyra.learn.metrics import spearman  # noqa: E402

RECIPES = {
    "mean pool (pool_norm none)": {"model": {"pool_norm": "none"}, "train": {}},
    "pool_norm batch (the default)": {"model": {}, "train": {}},
    "pool_norm batch, lr 3e-3": {"model": {}, "train": {"lr": 3e-3}},
    "pool_norm batch, lr 3e-3, dropout 0": {"model": {"dropout": 0.0}, "train": {"lr": 3e-3}},
}


def subsample(frame, split: str, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero((frame["split"] == split).to_numpy())
    return np.sort(rng.choice(rows, min(n, len(rows)), replace=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="results/dms_bgl3/data/dataset.parquet")
    ap.add_argument("--train-size", type=int, default=6000, help="training variants (a seeded subsample)")
    ap.add_argument("--valid-size", type=int, default=1000, help="validation variants (a seeded subsample)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=JSON",
                    help="run these recipes instead of the recorded ones")
    args = ap.parse_args()

    import torch

    from lyra.learn.evaluate import fit_ridge_baseline
    from lyra.learn.train import TrainConfig, train_model

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # each epoch, as it ends
    recipes = dict(RECIPES)
    if args.recipe:
        recipes = {name: json.loads(spec) for name, spec in (r.split("=", 1) for r in args.recipe)}
    ds = load_dataset(args.dataset)
    rng = np.random.default_rng(0)
    rows = np.concatenate([subsample(ds.frame, "train", args.train_size, rng),
                           subsample(ds.frame, "valid", args.valid_size, rng)])
    frame = ds.frame.iloc[rows].reset_index(drop=True)
    train, valid = frame[frame["split"] == "train"], frame[frame["split"] == "valid"]
    target = ds.meta["targets"][0]
    length = int(frame["sequence"].str.len().max())
    print(f"{args.dataset}: {len(train)} training and {len(valid)} validation variants of length {length}, "
          f"{args.epochs} epochs, one member (seed 0), {args.threads} thread(s)\n")

    t = time.perf_counter()
    ridge = fit_ridge_baseline(frame, ds.meta, seed=0)  # the evaluate stage's baseline, on these training rows
    ridge_valid = spearman(valid[target].to_numpy(), ridge.predict(valid["sequence"]))
    rows_out = [("one-hot ridge (5-fold CV alpha)", [], ridge_valid, time.perf_counter() - t)]

    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in recipes.items():
            t = time.perf_counter()
            cfg = TrainConfig.from_dict({"max_epochs": args.epochs, "patience": 0, "device": "cpu",
                                         **recipe.get("train", {})})
            result = train_model(frame, ds.meta, recipe.get("model", {}), cfg, 0, Path(tmp) / "member.pt")
            curve = [h["valid_spearman"] for h in result.history]
            rows_out.append((name, curve, result.best_valid["spearman"], time.perf_counter() - t))
            print(f"  {name}: best {result.best_valid['spearman']:.3f}", flush=True)

    print("\n| recipe | valid Spearman by epoch | best | seconds |\n|---|---|---:|---:|")
    for name, curve, best, seconds in rows_out:
        print(f"| {name} | {' '.join(f'{v:.3f}' for v in curve) or '-'} | {best:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
