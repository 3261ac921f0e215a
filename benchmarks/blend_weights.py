"""How much Lyra adds to one-hot ridge on a campaign's own data, after its evaluate stage.

For w from 0 (ridge alone) to 1 (the Lyra ensemble alone), the validation and test Spearman of

    w * Lyra + (1 - w) * ridge          (rank.model: blend is w = lyra.learn.ridge.BLEND_LYRA_WEIGHT, 0.5)

and how closely the two models' predictions agree. The weight with the best validation Spearman is
named with its test Spearman: choosing on validation, reading test once. It reads what the evaluate
stage wrote (models/metrics.json, models/ridge.npz) and the campaign's dataset:

    snakemake evaluate --configfile config/dms_bgl3.yaml --cores 2 --set-threads train=1
    python benchmarks/blend_weights.py --results results/dms_bgl3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lyra.campaign.layout import DATASET, METRICS, RIDGE  # noqa: E402
from lyra.data.dataset import load_dataset  # noqa: E402
from lyra.errors import LyraError  # noqa: E402
from lyra.learn.evaluate import evaluate_ensemble, read_metrics  # noqa: E402
from lyra.learn.forward import target_values  # noqa: E402
from lyra.learn.metrics import spearman  # noqa: E402
from lyra.learn.ridge import blend, load_ridge  # noqa: E402

WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
SPLITS = ("valid", "test")


def predictions(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """split -> (measured, Lyra ensemble, ridge), (n,) each, for a regression on one target."""
    metrics = read_metrics(root / METRICS)
    ds = load_dataset(root / DATASET)
    ridge = load_ridge(root / RIDGE)
    out = {}
    for split in SPLITS:
        rows = ds.frame[ds.frame["split"] == split]
        lyra = evaluate_ensemble(metrics["checkpoints"], ds.frame, ds.meta, split)["predictions"][:, 0]  # (n,)
        out[split] = (target_values(rows, ds.meta)[:, 0], lyra, ridge.predict(rows["sequence"].tolist()))
    return out


def blend_table(preds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                weights=WEIGHTS) -> pd.DataFrame:
    """One row per Lyra weight w: the Spearman of w * Lyra + (1 - w) * ridge on each split."""
    return pd.DataFrame([{"w_lyra": w, **{f"{split}_spearman": spearman(y, blend(lyra, ridge, w))
                                          for split, (y, lyra, ridge) in preds.items()}} for w in weights])


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="a campaign's results folder, e.g. results/dms_bgl3")
    args = ap.parse_args(argv)
    try:
        preds = predictions(Path(args.results))
    except LyraError as e:  # a results folder without a finished evaluate stage
        sys.exit(f"blend_weights: {e}")
    table = blend_table(preds)
    print("| Lyra weight | valid Spearman | test Spearman |\n|---:|---:|---:|")
    for row in table.itertuples():
        print(f"| {row.w_lyra:.1f} | {row.valid_spearman:.4f} | {row.test_spearman:.4f} |")
    best = table.loc[table["valid_spearman"].idxmax()]
    print(f"\nchosen on validation: Lyra weight {best['w_lyra']:.1f}, test Spearman {best['test_spearman']:.4f}")
    for split, (_, lyra, ridge) in preds.items():
        print(f"{split}: Pearson r of the Lyra and ridge predictions {np.corrcoef(lyra, ridge)[0, 1]:.3f}")
    return table


if __name__ == "__main__":
    main()
