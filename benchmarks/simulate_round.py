"""Wall time of one Lyra round of a retrospective campaign, by stage: prepare, train, score, rank.

A round of `snakemake simulate` with a Lyra strategy (`lyra.campaign.simulate.pick_lyra`): the measured
variants become a dataset, the ensemble trains on them, every unmeasured variant of the landscape is
scored, and the picks are ranked. The measured variants here are a uniform draw of each size (the
sizes of rounds 1-4 of the ALDE protocol by default), the campaign's own settings otherwise, with the
network reading the whole sequence (`model.sites: all`) and only the varied sites (`varied`). The last
rows add the rounds up: the wall time of a whole run (the first plate costs nothing).

    python benchmarks/simulate_round.py --config config/simulate_gb1.yaml --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lyra.campaign.config import load_config  # noqa: E402
from lyra.campaign.simulate import Landscape, pick_lyra, strategies, strategy_config, write_library  # noqa: E402
from lyra.campaign.settings import data_config  # noqa: E402
from lyra.data.dataset import prepare_dataset  # noqa: E402

STAGES = ("prepare", "train", "score", "rank")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/simulate_gb1.yaml")
    ap.add_argument("--strategy", default="lyra", help="a Lyra strategy of the config's simulate.strategies")
    ap.add_argument("--measured", default="96,192,288,384", help="measured variants per round, comma-separated")
    ap.add_argument("--sites", default="all,varied")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    sizes = [int(n) for n in args.measured.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = prepare_dataset(data_config(config), config["split"], tmp / "landscape.parquet")
        library = write_library(dataset, tmp / "library.parquet")
        land = Landscape.load(dataset)
        print(f"{args.config}, strategy {args.strategy}, {len(land):,} variants, torch threads {args.threads}\n")
        print("| sites | measured | " + " | ".join(f"{s} (s)" for s in STAGES) + " | round (s) |")
        print("|---|---:|" + "---:|" * (len(STAGES) + 1))
        totals = {}
        per_member = strategies(config)[args.strategy].get("validation") == "per_member"
        for sites in args.sites.split(","):
            cfg = strategy_config(config, args.strategy)
            cfg["model"] = {**cfg["model"], "sites": sites}
            totals[sites] = 0.0
            for n in sizes:
                measured = np.zeros(len(land), dtype=bool)
                measured[np.random.default_rng(n).choice(len(land), n, replace=False)] = True
                timings: dict[str, float] = {}
                started = time.perf_counter()
                pick_lyra(cfg, land, measured, config["simulate"]["batch_size"], 0, library, tmp / "work",
                          config["simulate"]["valid_fraction"], timings, per_member=per_member)
                took = time.perf_counter() - started
                totals[sites] += took
                print(f"| {sites} | {n} | " + " | ".join(f"{timings[s]:.1f}" for s in STAGES) + f" | {took:.1f} |",
                      flush=True)
        for sites, total in totals.items():
            print(f"| {sites} | run of {len(sizes)} rounds | | | | | {total:.1f} |")


if __name__ == "__main__":
    main()
