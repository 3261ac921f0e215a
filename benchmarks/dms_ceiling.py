"""What any model learns from a DMS table beyond one-hot ridge: validation and test Spearman of simple rivals.

Lyra trails one-hot ridge on the Bgl3 DMS (docs/benchmarks.md, "Bgl3"). This script asks whether any
model that reads the same one-hot variants does better, or whether ridge is already at what the
labels allow. On the campaign's dataset (the preprocess stage's random split) it fits, on the
training rows only:

- one-hot ridge, alpha by 5-fold CV (the evaluate stage's baseline);
- ridge with one more feature: the variant's summed BLOSUM62 change against the wild type, a prior on
  which substitutions are tolerated that one-hot features cannot share across residues;
- a one-hidden-layer network (tanh, 100 units, AdamW) on the one-hot variant: nonlinear, epistatic;
- ridge plus the same network fitted to ridge's 5-fold out-of-fold residuals: what is left after the
  additive model;

and with `--counts` (the raw table with read counts), ridge's test Spearman on the test variants
whose input read count is at least each quantile: how much of the gap to 1 is measurement noise.
The networks' epoch is chosen on validation; the test split is only scored.

    snakemake results/dms_bgl3/data/dataset.parquet --configfile config/dms_bgl3.yaml --cores 1
    python benchmarks/dms_ceiling.py --dataset results/dms_bgl3/data/dataset.parquet \
        --counts ../shared/data/bgl3_romero2015/bgl3.tsv --count-column inp --id-column variant
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lyra.data.dataset import load_dataset  # noqa: E402
from lyra.learn.metrics import spearman  # noqa: E402

SPLITS = ("train", "valid", "test")


def blosum_change(sequences: pd.Series, wild_type: str) -> np.ndarray:
    """Sum over mutated positions of BLOSUM62[wt, mutant] - BLOSUM62[wt, wt]: (n,), 0 for the wild type."""
    from Bio.Align import substitution_matrices

    matrix = substitution_matrices.load("BLOSUM62")
    out = np.zeros(len(sequences))
    for i, seq in enumerate(sequences):
        out[i] = sum(matrix[w][a] - matrix[w][w] for w, a in zip(wild_type, seq) if a != w)
    return out


def fit_network(dense: dict, y: dict, epochs: int, seed: int) -> tuple[dict, int]:
    """One-hidden-layer tanh network on dense one-hot rows (float32 tensors per split); returns the
    predictions at the epoch of best validation Spearman, and that epoch."""
    import torch

    torch.manual_seed(seed)
    mu, sd = y["train"].mean(), y["train"].std() or 1.0
    target = torch.tensor((y["train"] - mu) / sd, dtype=torch.float32)  # (n,)
    net = torch.nn.Sequential(torch.nn.Linear(dense["train"].shape[1], 100), torch.nn.Tanh(), torch.nn.Linear(100, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.1)
    best, best_epoch, best_pred = -np.inf, 0, None
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(target), generator=gen)
        for i in range(0, len(order), 64):
            batch = order[i:i + 64]
            loss = ((net(dense["train"][batch]).squeeze(-1) - target[batch]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            pred = {s: net(dense[s]).squeeze(-1).double().numpy() * sd + mu for s in ("valid", "test")}
        score = spearman(y["valid"], pred["valid"])
        if np.isfinite(score) and score > best:
            best, best_epoch, best_pred = score, epoch + 1, pred
    if best_pred is None:
        best_pred = pred
    return best_pred, best_epoch


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Prints the tables and returns the models' one (model, valid_spearman, test_spearman, seconds, note);
    its attrs["depth"] holds the read-depth rows (test variants, reads at least, Spearman), empty without --counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="results/dms_bgl3/data/dataset.parquet")
    ap.add_argument("--epochs", type=int, default=15, help="epochs of each network (best on validation kept)")
    ap.add_argument("--counts", help="the raw table with a read count per variant (optional)")
    ap.add_argument("--count-column", default="inp", help="--counts: the input read count column")
    ap.add_argument("--id-column", default="variant",
                    help="--counts: the mutation column (comma- or colon-separated, as the dataset's variant_id)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import scipy.sparse
    import torch
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    from lyra.data.alphabet import get_alphabet
    from lyra.learn.evaluate import RIDGE_CV_FOLDS, fit_ridge_baseline
    from lyra.learn.ridge import fit_ridge, one_hot_sparse

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    frame, meta = ds.frame, ds.meta
    target = meta["targets"][0]
    wild_type = meta.get("wild_type")
    length = int(frame["sequence"].str.len().max())
    part = {s: frame[frame["split"] == s] for s in SPLITS}
    y = {s: part[s][target].to_numpy(np.float64) for s in SPLITS}
    X = {s: one_hot_sparse(part[s]["sequence"].tolist(), get_alphabet(meta["alphabet"]), length) for s in SPLITS}
    print(f"{args.dataset}: {len(y['train'])} training, {len(y['valid'])} validation and {len(y['test'])} test "
          f"variants of length {length}\n", flush=True)
    rows = []

    def row(name: str, pred: dict, seconds: float, note: str = "") -> None:
        rows.append((name, spearman(y["valid"], pred["valid"]), spearman(y["test"], pred["test"]), seconds, note))
        print(f"  {name}: valid {rows[-1][1]:.4f}, test {rows[-1][2]:.4f}", flush=True)

    t = time.perf_counter()
    ridge = fit_ridge_baseline(frame, meta, seed=0)
    ridge_pred = {s: ridge.predict(part[s]["sequence"]) for s in ("valid", "test")}
    row("one-hot ridge (5-fold CV alpha; the evaluate stage's baseline)", ridge_pred, time.perf_counter() - t,
        f"alpha {ridge.alpha:g}")

    if wild_type:
        t = time.perf_counter()
        change = {s: blosum_change(part[s]["sequence"], wild_type) for s in SPLITS}
        scale = 1.0 / (np.abs(change["train"]).max() or 1.0)  # on the one-hot features' 0-1 scale
        Xb = {s: scipy.sparse.hstack([X[s], scipy.sparse.csr_matrix(change[s][:, None] * scale)]).tocsr()
              for s in SPLITS}
        augmented = Ridge(alpha=ridge.alpha).fit(Xb["train"], y["train"])
        row("ridge + summed BLOSUM62 change (ridge's alpha)", {s: augmented.predict(Xb[s]) for s in ("valid", "test")},
            time.perf_counter() - t, f"BLOSUM62 alone: test {spearman(y['test'], change['test']):.4f}")

    t = time.perf_counter()
    dense = {s: torch.tensor(X[s].toarray(), dtype=torch.float32) for s in SPLITS}  # (n, L * C), both networks'
    pred, epoch = fit_network(dense, y, args.epochs, seed=0)
    row("one-hidden-layer network on the one-hot variant", pred, time.perf_counter() - t,
        f"epoch {epoch} of {args.epochs}")

    t = time.perf_counter()
    oof = np.zeros_like(y["train"])
    seqs = part["train"]["sequence"].tolist()
    for fit_rows, out_rows in KFold(RIDGE_CV_FOLDS, shuffle=True, random_state=0).split(seqs):
        fold = fit_ridge([seqs[i] for i in fit_rows], y["train"][fit_rows], meta["alphabet"], alphas=[ridge.alpha])
        oof[out_rows] = fold.with_length(length).predict([seqs[i] for i in out_rows])
    residual = {"train": y["train"] - oof, "valid": y["valid"] - ridge_pred["valid"], "test": y["test"] - ridge_pred["test"]}
    pred, epoch = fit_network(dense, residual, args.epochs, seed=0)
    row("ridge + the network on ridge's out-of-fold residuals", {s: ridge_pred[s] + pred[s] for s in ("valid", "test")},
        time.perf_counter() - t, f"epoch {epoch} of {args.epochs}")

    print("\n| model | valid Spearman | test Spearman | seconds | note |\n|---|---:|---:|---:|---|")
    for name, valid, test, seconds, note in rows:
        print(f"| {name} | {valid:.4f} | {test:.4f} | {seconds:.0f} | {note} |")

    table = pd.DataFrame(rows, columns=["model", "valid_spearman", "test_spearman", "seconds", "note"])
    depth_rows = []
    if args.counts:
        raw = pd.read_csv(args.counts, sep=None, engine="python")
        for col in (args.id_column, args.count_column):
            if col not in raw:
                raise SystemExit(f"dms_ceiling: {args.counts}: no column {col!r}")
        ids = raw[args.id_column].astype(str).str.replace(",", ":")
        depth = pd.Series(raw[args.count_column].to_numpy(), index=ids)
        test_depth = part["test"]["variant_id"].map(depth[~depth.index.duplicated()])
        if test_depth.isna().any():
            raise SystemExit(f"dms_ceiling: {args.counts}: {int(test_depth.isna().sum())} test variants have no "
                             f"row (matched on {args.id_column})")
        print(f"\nRidge on the test variants with at least this many input reads ({args.count_column}):\n")
        print("| test variants | input reads at least | ridge test Spearman |\n|---:|---:|---:|")
        for q in (0.0, 0.5, 0.75, 0.9):
            floor = float(test_depth.quantile(q))
            keep = (test_depth >= floor).to_numpy()
            depth_rows.append((int(keep.sum()), floor, spearman(y["test"][keep], ridge_pred["test"][keep])))
            print(f"| {depth_rows[-1][0]} | {floor:g} | {depth_rows[-1][2]:.4f} |")
    table.attrs["depth"] = depth_rows
    return table

if __name__ == "__main__":
    main()
