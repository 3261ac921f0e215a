"""Retrospective design campaign on the complete GB1 four-site landscape (Wu et al. 2016).

For each seed: draw N measured variants at random (the "first plate" the lab measured), train on them,
score every other measured variant, pick 96 (one plate) and look up their true fitness. Reported per
method, averaged over seeds: the highest and the mean true fitness among the 96 picks, and NDCG@100 of
the method's ranking of all candidates (relevance = true fitness, `lyra.learn.metrics.ndcg_at_k`).

Methods:
- ridge: one-hot ridge regression (alpha 1) on the fitness, top 96 by prediction (`lyra.learn.ridge`).
- prior: no training at all: top 96 by the evolutionary prior's dE (`lyra/design/prior.py`, independent model
  fit on `GB1_Alignment.a2m`), what `lyra zero-shot` picks.
- lyra:  an ensemble of Lyra models trained with `lyra.learn.train.train_model` (each member on its own random
  train/valid split of the N variants), the candidates scored with `lyra.design.scoring.score_shard` over the GB1
  combinatorial library with the training and never-measured variants excluded, and picked with
  `lyra.design.rank.rank_variants` (UCB + diversity): the same code path as `lyra score` / `lyra rank`.
  `--prior independent|potts` adds the evolutionary prior term fit on `GB1_Alignment.a2m` (lyra/design/prior.py).

    python benchmarks/campaign.py --seeds 10 --n-train 384 --out campaign.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lyra.learn.ridge import ridge_fit_predict  # noqa: E402
from lyra.design.library import LibraryConfig  # noqa: E402
from lyra.learn.metrics import ndcg_at_k  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gb1_wu2016"
SITES = [39, 40, 41, 54]  # 1-based on the 56-aa domain
AA = "ACDEFGHIKLMNPQRSTVWY"
log = logging.getLogger("lyra.benchmarks.campaign")


def load_gb1(data_dir: Path = DATA) -> tuple[str, pd.DataFrame]:
    """(wild type, frame of the measured variants: variant (4 letters), sequence (56 aa), fitness)."""
    wt = "".join(l.strip() for l in (data_dir / "2GI9.fasta").read_text().splitlines() if not l.startswith(">"))
    d = pd.read_csv(data_dir / "Gb1Dataset.csv", encoding="utf-8-sig")
    variants = d["Variants"].to_numpy(dtype=str)
    seq = np.frombuffer(wt.encode(), dtype=np.uint8)
    rows = np.repeat(seq[None, :], len(d), axis=0)  # (n, 56)
    letters = np.frombuffer("".join(variants).encode(), dtype=np.uint8).reshape(len(d), 4)
    rows[:, [p - 1 for p in SITES]] = letters
    seqs = rows.view("S56").ravel().astype("U56")
    return wt, pd.DataFrame({"variant": variants, "sequence": seqs, "fitness": d["Fitness"].to_numpy(float)})


def draw(seed: int, n_total: int, n_train: int) -> np.ndarray:
    """The seeded training draw (the same for every method)."""
    return np.random.default_rng(seed).choice(n_total, n_train, replace=False)


def summarise(fitness_of_picks: np.ndarray, y_candidates: np.ndarray, ranking_score: np.ndarray) -> dict:
    return {"max": float(fitness_of_picks.max()), "mean": float(fitness_of_picks.mean()),
            "ndcg100": float(ndcg_at_k(y_candidates, ranking_score, 100)),
            "n_above_wt": int((fitness_of_picks > 1.0).sum())}


def ridge_campaign(gb1: pd.DataFrame, train: np.ndarray, top_n: int = 96, alpha: float = 1.0) -> dict:
    test = np.setdiff1d(np.arange(len(gb1)), train)
    pred = ridge_fit_predict(gb1["sequence"].to_numpy()[train].tolist(), gb1["fitness"].to_numpy()[train],
                             gb1["sequence"].to_numpy()[test].tolist(), "protein", alpha)
    y = gb1["fitness"].to_numpy()[test]
    picks = np.argsort(-pred, kind="stable")[:top_n]
    return summarise(y[picks], y, pred)


def prior_campaign(gb1: pd.DataFrame, wt: str, train: np.ndarray, top_n: int = 96) -> dict:
    from lyra.design.prior import fit_prior

    test = np.setdiff1d(np.arange(len(gb1)), train)
    prior = fit_prior(DATA / "GB1_Alignment.a2m", wt, AA)
    dE = prior.score_sequences(gb1["sequence"].to_numpy()[test].tolist()).astype(np.float64)
    y = gb1["fitness"].to_numpy()[test]
    picks = np.argsort(-dE, kind="stable")[:top_n]
    return summarise(y[picks], y, dE)


def transform_target(y: np.ndarray, kind: str) -> np.ndarray:
    """What the models are trained on (ranking only needs a monotone transform of fitness)."""
    if kind == "raw":
        return y
    if kind.startswith("log"):  # log(y + eps): zero-inflated fitness spread out
        return np.log(y + float(kind[3:] or 0.01))
    if kind == "sqrt":
        return np.sqrt(y)
    raise ValueError(f"unknown target transform {kind!r}")


def lyra_campaign(gb1: pd.DataFrame, wt: str, train: np.ndarray, args, workdir: Path, seed: int) -> dict:
    from lyra.design.rank import RankConfig, rank_variants
    from lyra.design.scoring import score_shard
    from lyra.learn.train import TrainConfig, train_model

    train_frame = gb1.iloc[train]
    y = transform_target(train_frame["fitness"].to_numpy(), args.target)
    meta = {"alphabet": "protein", "targets": ["fitness"], "task": "regression"}
    model_cfg = {"d_model": args.d_model, "d_state": args.d_state, "dropout": args.dropout,
                 "pool_norm": "none"}  # the output layer the recorded single-round numbers were measured with
    train_cfg = TrainConfig(max_epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, target_transform=args.train_transform, loss=args.loss,
                            selection_metric=args.selection, device="cpu", scheduler="cosine")
    checkpoints = []
    t0 = time.perf_counter()
    table = None
    if args.prior != "none":
        from lyra.design.prior import prior_table

        table = prior_table({"msa": str(DATA / "GB1_Alignment.a2m"), "model": args.prior}, wt, AA)
    for m in range(args.members):
        rng = np.random.default_rng([seed, m])
        valid = np.zeros(len(train), dtype=bool)
        valid[rng.choice(len(train), max(1, round(args.valid_fraction * len(train))), replace=False)] = True
        frame = pd.DataFrame({"variant_id": train_frame["variant"].to_numpy(), "sequence": train_frame["sequence"].to_numpy(),
                              "fitness": y, "split": np.where(valid, "valid", "train")})
        path = workdir / f"seed{seed}_m{m}.pt"
        train_model(frame, meta, model_cfg, train_cfg, seed=1000 * seed + m, checkpoint_path=path, prior_table=table)
        checkpoints.append(path)
    t_train = time.perf_counter() - t0

    # every other measured variant = the GB1 combinatorial library minus the training and unmeasured ones
    measured = set(gb1["variant"])
    unmeasured = ["".join(c) for c in _all_combinations() if "".join(c) not in measured]
    exclude = [_mutations(v, wt) for v in list(train_frame["variant"]) + unmeasured]
    library = LibraryConfig(kind="combinatorial", positions=SITES, include_wild_type=True, chunk_size=65536)
    t0 = time.perf_counter()
    scores = score_shard(checkpoints, library, wt, 1, "protein", 0, 1, workdir / f"seed{seed}_scores.parquet",
                         exclude=exclude, progress=False, batch_size=args.score_batch)
    t_score = time.perf_counter() - t0
    rank_cfg = RankConfig(strategy=args.strategy, kappa=args.kappa, top_n=args.top_n,
                          diversity={"max_per_mutation": args.max_per_mutation, "min_hamming": args.min_hamming})
    picks = rank_variants(scores, rank_cfg)
    truth = dict(zip(gb1["sequence"], gb1["fitness"]))
    picked = np.array([truth[s] for s in picks["sequence"]])
    grid = {}
    if args.grid:  # other acquisitions on the same scores (cheap): for choosing them on development seeds
        for strategy, kappa, cap, ham in GRID:
            cfg = RankConfig(strategy=strategy, kappa=kappa, top_n=args.top_n,
                             diversity={"max_per_mutation": cap, "min_hamming": ham})
            fit = np.array([truth[s] for s in rank_variants(scores, cfg)["sequence"]])
            grid[f"{strategy} k={kappa:g} cap={cap} ham={ham}"] = {"max": float(fit.max()), "mean": float(fit.mean())}
    import pyarrow.parquet as pq

    table = pq.read_table(scores, columns=["mutations", "mean", "std"]).to_pandas()
    variant_of = {_mutations(v, wt): v for v in gb1["variant"]}
    y_all = gb1.set_index("variant")["fitness"].reindex([variant_of[m] for m in table["mutations"]]).to_numpy()
    assert len(table) == len(gb1) - len(train) and not np.isnan(y_all).any()
    acq = table["mean"].to_numpy(np.float64) + (args.kappa * table["std"].to_numpy(np.float64) if args.strategy == "ucb" else 0)
    out = summarise(picked, y_all, table["mean"].to_numpy())
    out["ndcg100_acquisition"] = float(ndcg_at_k(y_all, acq, 100))
    out["train_s"], out["score_s"] = t_train, t_score
    out["top_pick"] = picks["variant_id"].iloc[0]
    if grid:
        out["grid"] = grid
    for p in checkpoints:
        p.unlink()
    if args.keep_scores:
        args.keep_scores.mkdir(parents=True, exist_ok=True)
        scores.replace(args.keep_scores / scores.name)
    else:
        scores.unlink()
    return out


GRID = [(strategy, kappa, cap, ham)
        for strategy, kappa in (("mean", 0.0), ("ucb", 0.5), ("ucb", 1.0), ("ucb", 2.0), ("ucb", 4.0))
        for cap in (None, 48, 24, 12) for ham in (None, 2)]


def _all_combinations():
    import itertools

    return itertools.product(AA, repeat=4)


def _mutations(variant: str, wt: str) -> str:
    return ":".join(f"{wt[p - 1]}{p}{r}" for p, r in zip(SITES, variant) if r != wt[p - 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=384)
    ap.add_argument("--top-n", type=int, default=96)
    ap.add_argument("--methods", default="ridge,lyra", help="comma-separated: ridge, prior, lyra")
    # Lyra ensemble
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--loss", default="mse")
    ap.add_argument("--target", default="raw", help="raw | log<eps> | sqrt: applied before training")
    ap.add_argument("--train-transform", default="standardize", help="train.target_transform")
    ap.add_argument("--selection", default="spearman", help="train.selection_metric")
    ap.add_argument("--prior", default="none", choices=["none", "independent", "potts"],
                    help="Lyra's evolutionary prior term from GB1_Alignment.a2m")
    ap.add_argument("--valid-fraction", type=float, default=0.1)
    ap.add_argument("--score-batch", type=int, default=512)
    # acquisition
    ap.add_argument("--strategy", default="ucb")
    ap.add_argument("--kappa", type=float, default=1.0)
    ap.add_argument("--max-per-mutation", type=int, default=None)
    ap.add_argument("--min-hamming", type=int, default=None)
    ap.add_argument("--grid", action="store_true", help="also evaluate a grid of acquisitions (see GRID)")
    ap.add_argument("--keep-scores", type=Path, default=None, help="keep each seed's scores.parquet here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a shared 2-core machine: no spinning OpenMP workers)")
    ap.add_argument("--out", type=Path, default=None, help="JSON with every campaign's numbers")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)

    wt, gb1 = load_gb1()
    methods = args.methods.split(",")
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        train = draw(seed, len(gb1), args.n_train)
        if "ridge" in methods:
            results["ridge"].append({"seed": seed, **ridge_campaign(gb1, train, args.top_n)})
        if "prior" in methods:
            results["prior"].append({"seed": seed, **prior_campaign(gb1, wt, train, args.top_n)})
        if "lyra" in methods:
            with tempfile.TemporaryDirectory() as tmp:
                results["lyra"].append({"seed": seed, **lyra_campaign(gb1, wt, train, args, Path(tmp), seed)})
        line = "  ".join(f"{m}: max {r[-1]['max']:.2f} mean {r[-1]['mean']:.2f} ndcg {r[-1]['ndcg100']:.3f}"
                         for m, r in results.items())
        if "lyra" in methods:
            line += f"  (lyra: train {results['lyra'][-1]['train_s']:.0f} s, score {results['lyra'][-1]['score_s']:.0f} s)"
        print(f"seed {seed}: {line}", flush=True)

    print(f"\nN = {args.n_train}, {args.seeds} seeds, top {args.top_n}")
    print(f"{'method':8} {'max fitness':>12} {'mean fitness':>13} {'NDCG@100':>9} {'>=7.5':>6}")
    summary = {}
    for m, rows in results.items():
        mx = np.array([r["max"] for r in rows])
        summary[m] = {"max": float(mx.mean()), "mean": float(np.mean([r["mean"] for r in rows])),
                      "ndcg100": float(np.mean([r["ndcg100"] for r in rows])), "hits_7.5": int((mx >= 7.5).sum())}
        s = summary[m]
        print(f"{m:8} {s['max']:12.2f} {s['mean']:13.2f} {s['ndcg100']:9.3f} {s['hits_7.5']:6d}")
    grids = [r["grid"] for r in results.get("lyra", []) if "grid" in r]
    if grids:
        print("\nacquisition grid (lyra, same models): mean over seeds of max / mean fitness of the picks")
        agg = {k: (np.mean([g[k]["max"] for g in grids]), np.mean([g[k]["mean"] for g in grids])) for k in grids[0]}
        for k, (mx, mn) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
            print(f"  {k:32} {mx:6.2f} {mn:6.2f}")
        summary["grid"] = {k: {"max": mx, "mean": mn} for k, (mx, mn) in agg.items()}
    if args.out:
        from lyra.io import write_json

        write_json(args.out, {"args": vars(args) | {"out": str(args.out)}, "summary": summary, "runs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
