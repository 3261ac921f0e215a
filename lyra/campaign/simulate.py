"""Retrospective campaigns: rounds of picks replayed on a complete landscape.

The landscape is the campaign's dataset, every variant of it measured. A run starts from a first plate
(`simulate.initial`); each round a strategy picks `simulate.batch_size` variants not measured yet, and
"measures" them by looking their fitness up. This is the protocol of ALDE (Yang et al., Nat Commun
2025: 96 random, then 4 rounds of 96) and MLDE (Wittmann et al. 2021: 384 random, one round of 96).

Strategies (`simulate.strategies`):
- random: a uniform draw from the unmeasured variants;
- ridge: one-hot ridge regression (alpha by cross-validation on the measured variants), greedy top;
- lyra: the product itself: the measured variants become a dataset (`prepare_dataset`), an ensemble
  trains with validation selection (`train_model`), the unmeasured landscape is scored as a library file
  (`score_shard`) and ranked like the rank stage (`rank_variants`, any `rank.strategy`; `rank.model:
  blend` and `rank.ridge_picks` use one-hot ridge fitted on every measured variant).

Every strategy of run k starts from the same first plate, drawn from (simulate.seed, k), so strategies
are compared on the same starts; each round's random choices come from (simulate.seed, k, the strategy's
seed name, round), the seed name being the strategy's own unless it sets `seed`. A job is one
(strategy, run); it keeps each finished round under simulation/work/, so a killed job resumes at its
last finished round.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from lyra.campaign.settings import model_params, prior_section, prior_table, rank_reads_ridge
from lyra.errors import ConfigError, DataError
from lyra.io import atomic_path, resolve_path
from lyra.schema import error_message, first_error, schema_fields, section_schema

if TYPE_CHECKING:  # pandas is imported where it is used: the Snakefile reads this module at parse time
    import pandas as pd

log = logging.getLogger("lyra.campaign")

DEFAULT_STRATEGIES = {"random": {"model": "random"}, "ridge": {"model": "ridge"}, "lyra": {"model": "lyra"}}
# a strategy's own sections and the campaign section each one overrides
OVERRIDES = {"lyra": "model", "train": "train", "prior": "prior", "rank": "rank"}
RUN_COLUMNS = ["strategy", "run", "round", "screened", "best", "norm_best", "global_max_found", "batch_mean",
               "batch_best", "seconds"]
# rank.model of a lyra strategy: auto would need a validation split shared by both models
SIMULATED_RANK_MODELS = ("lyra", "blend")
SUMMARY_COLUMNS = ["strategy", "screened", "runs", "mean_max", "mean_norm_max", "sem", "frac_global_max"]


@dataclass
@schema_fields("simulate")
class SimulateConfig:
    """The `simulate:` section; defaults, types and bounds come from lyra/schema.yaml."""

    initial: dict
    rounds: int
    batch_size: int
    runs: int
    first_run: int
    seed: int
    valid_fraction: float
    strategies: dict | None

    def __post_init__(self) -> None:
        self.initial = {k: sub["default"] for k, sub in section_schema("simulate.initial")["properties"].items()} \
            | dict(self.initial)


def simulate_config(config: Mapping[str, Any]) -> SimulateConfig:
    return SimulateConfig.from_dict(config.get("simulate") or {})


def strategies(config: Mapping[str, Any]) -> dict[str, dict]:
    """Strategy name -> its settings, in the order the config gives them."""
    return dict(simulate_config(config).strategies or DEFAULT_STRATEGIES)


def strategy_pattern(config: Mapping[str, Any], *models: str) -> str:
    """A regex matching exactly the names of the strategies of these models (none: matches nothing),
    the rules' wildcard constraint that sends Lyra runs and baseline runs to different rules."""
    names = [name for name, s in strategies(config).items() if s["model"] in models]
    return "|".join(names) if names else "(?!)"


def run_numbers(config: Mapping[str, Any]) -> list[int]:
    sim = simulate_config(config)
    return list(range(sim.first_run, sim.first_run + sim.runs))


def strategy_config(config: Mapping[str, Any], name: str) -> dict:
    """The campaign config a Lyra strategy runs with: its sections overridden by the strategy's own,
    each checked against the schema (errors name simulate.strategies.<name>)."""
    strategy = strategies(config)[name]
    cfg = copy.deepcopy(dict(config))
    for key, section in OVERRIDES.items():
        if key not in strategy:
            continue
        merged = {**(cfg.get(section) or {}), **strategy[key]}
        where = f"simulate.strategies.{name}.{key}"
        known = section_schema(section)["properties"]
        unknown = next((k for k in strategy[key] if k not in known), None)
        if unknown is not None:
            raise ConfigError(f"config key '{where}.{unknown}': not a key of the {section} section")
        error = first_error(merged, section_schema(section))
        if error is not None:
            raise ConfigError(error_message(error, "", prefix=where))
        cfg[section] = merged
    return cfg


def check_simulation(config: Mapping[str, Any]) -> None:
    """Before any job: the strategies' settings, the first plate's file or prior, a regression task."""
    sim = simulate_config(config)
    if config["data"].get("task", "regression") != "regression":
        raise ConfigError("simulate: a retrospective campaign needs a regression task (data.task)")
    for name, settings in strategies(config).items():
        rank_model = strategy_config(config, name)["rank"].get("model", "lyra")
        if settings["model"] == "lyra" and rank_model not in SIMULATED_RANK_MODELS:
            raise ConfigError(f"simulate.strategies.{name}: rank.model {rank_model!r} cannot rank a lyra strategy's "
                              f"picks (one of {', '.join(SIMULATED_RANK_MODELS)}; the ridge strategy is one-hot ridge)")
    method = sim.initial["method"]
    if method == "file" and not sim.initial.get("path"):
        raise ConfigError("simulate.initial.path: required with simulate.initial.method: file")
    if method == "file" and not Path(resolve_path(sim.initial["path"], config.get("_base_dir", "."))).is_file():
        raise ConfigError(f"simulate.initial.path: no such file: {sim.initial['path']}")
    if method == "zero_shot" and prior_section(config) is None:
        raise ConfigError("simulate.initial.method: zero_shot ranks by the evolutionary prior: set prior.msa")


# --- the landscape -----------------------------------------------------------------------------------


@dataclass
class Landscape:
    """Every variant of a complete landscape with its measured fitness (the dataset's first target)."""

    variant_id: np.ndarray  # (n,) str
    sequence: np.ndarray  # (n,) str
    fitness: np.ndarray  # (n,) float64
    meta: dict

    @classmethod
    def load(cls, dataset: str | Path) -> "Landscape":
        from lyra.data.dataset import load_dataset

        ds = load_dataset(dataset)
        if ds.meta.get("task") != "regression":
            raise DataError("a retrospective campaign needs a regression landscape", str(dataset))
        target = ds.meta["targets"][0]
        frame = ds.frame[ds.frame[target].notna()]
        return cls(frame["variant_id"].to_numpy(dtype=str), frame["sequence"].to_numpy(dtype=str),
                   frame[target].to_numpy(dtype=np.float64), ds.meta)

    def __len__(self) -> int:
        return len(self.sequence)

    @property
    def target(self) -> str:
        return self.meta["targets"][0]

    @property
    def global_max(self) -> float:
        return float(self.fitness.max())

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sequence)}

    def indices(self, sequences: Sequence[str]) -> np.ndarray:
        """Rows of these sequences; an unknown sequence is an error (a pick must come from the landscape)."""
        where = self.row_of
        missing = [s for s in sequences if s not in where]
        if missing:
            raise DataError(f"{len(missing)} picked variants are not in the landscape, e.g. {missing[0][:60]}")
        return np.array([where[s] for s in sequences], dtype=np.int64)


def write_library(dataset: str | Path, out: str | Path) -> Path:
    """The landscape as a library file (variant_id, sequence) that the Lyra strategies score each round."""
    import pandas as pd

    land = Landscape.load(dataset)
    with atomic_path(out) as tmp:
        pd.DataFrame({"variant_id": land.variant_id, "sequence": land.sequence}).to_parquet(tmp, index=False)
    return Path(out)


# --- seeds and the first plate -----------------------------------------------------------------------


def rng_for(sim: SimulateConfig, run: int, *keys: str | int) -> np.random.Generator:
    """A generator for run `run` and the given keys (a strategy name, a round): stable across Python
    versions and machines (crc32 of names, not hash())."""
    words = [sim.seed, run] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def initial_plate(config: Mapping[str, Any], land: Landscape, run: int) -> np.ndarray:
    """Rows of run `run`'s first plate: the same for every strategy of that run."""
    sim = simulate_config(config)
    method, size = sim.initial["method"], sim.initial["size"]
    if method == "file":  # read like a library file: a sequence or a mutations column
        from lyra.data.alphabet import get_alphabet
        from lyra.design.library import FileLayout, LibraryConfig

        path = resolve_path(sim.initial["path"], config.get("_base_dir", "."))
        plate = FileLayout(LibraryConfig.from_dict({"kind": "file", "path": path}), land.meta.get("wild_type"),
                           get_alphabet(land.meta["alphabet"]), land.meta.get("first_position", 1))
        return np.sort(land.indices(list(plate.sequences)))
    if size > len(land):
        raise ConfigError(f"simulate.initial.size: {size} is more than the landscape's {len(land)} variants")
    rng = rng_for(sim, run, "initial")
    if method == "random":
        return np.sort(rng.choice(len(land), size=size, replace=False))
    pool = zero_shot_order(config, land)[: max(size, sim.initial["zero_shot_pool"])]
    return np.sort(rng.choice(pool, size=size, replace=False))


def zero_shot_order(config: Mapping[str, Any], land: Landscape) -> np.ndarray:
    """Landscape rows by the evolutionary prior's dE, best first (ties in landscape order)."""
    from lyra.data.alphabet import get_alphabet
    from lyra.design.prior import prior_from_config

    alphabet = get_alphabet(land.meta["alphabet"])
    prior = prior_from_config(prior_section(config), land.meta.get("wild_type"), alphabet.letters)
    tokens, _ = alphabet.encode_batch(list(land.sequence))
    dE = prior.score_tokens(tokens.astype(np.int64))  # (n,)
    return np.argsort(-dE, kind="stable")


# --- one round of picks per strategy -----------------------------------------------------------------


def pick_random(land: Landscape, measured: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    candidates = np.flatnonzero(~measured)
    return np.sort(rng.choice(candidates, size=min(n, candidates.size), replace=False))


def measured_ridge(land: Landscape, measured: np.ndarray, seed: int):
    """One-hot ridge on every measured variant, alpha by cross-validation seeded by `seed`."""
    from lyra.learn.ridge import fit_ridge

    rows = np.flatnonzero(measured)
    return fit_ridge(land.sequence[rows], land.fitness[rows], alphabet=land.meta["alphabet"], seed=seed)


def pick_ridge(land: Landscape, measured: np.ndarray, n: int, seed: int) -> np.ndarray:
    model = measured_ridge(land, measured, seed)
    candidates = np.flatnonzero(~measured)
    predicted = model.predict(land.sequence[candidates])  # (m,)
    order = np.argsort(-predicted, kind="stable")[:n]
    return candidates[order]


def pick_lyra(cfg: Mapping[str, Any], land: Landscape, measured: np.ndarray, n: int, seed: int,
              library: str | Path, workdir: Path, valid_fraction: float,
              timings: dict[str, float] | None = None, per_member: bool = False) -> np.ndarray:
    """The product's own stages on the measured variants: dataset, ensemble, scores, ranking. The wall
    time of each (prepare, train, score, rank, in seconds) is logged, and put in `timings` if given.
    per_member (a strategy's `validation: per_member`): each member holds out its own rows (as many as
    the shared split's), so the ensemble as a whole learns from every measured variant."""
    import pandas as pd

    from lyra.data.dataset import load_dataset, prepare_dataset
    from lyra.design.library import LibraryConfig
    from lyra.design.rank import RankConfig, rank_variants
    from lyra.design.scoring import score_shard
    from lyra.learn.forward import resolve_device
    from lyra.learn.ridge import save_ridge
    from lyra.learn.train import TrainConfig, train_model

    timings = {} if timings is None else timings
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    workdir.mkdir(parents=True, exist_ok=True)
    rows = np.flatnonzero(measured)
    measured_csv = workdir / "measured.csv"
    pd.DataFrame({"variant_id": land.variant_id[rows], "sequence": land.sequence[rows],
                  land.target: land.fitness[rows]}).to_csv(measured_csv, index=False)
    meta = land.meta
    data = {"path": str(measured_csv), "sequence_column": "sequence", "id_column": "variant_id",
            "target_column": land.target, "wild_type": meta.get("wild_type"), "alphabet": meta["alphabet"],
            "first_position": meta.get("first_position", 1),
            "equal_length": (meta.get("data_config") or {}).get("equal_length", True)}
    split = {"method": "random", "fractions": {"train": 1 - valid_fraction, "valid": valid_fraction, "test": 0.0},
             "seed": seed}
    ds = load_dataset(prepare_dataset(data, split, workdir / "measured.parquet"))
    train_cfg = TrainConfig.from_dict(cfg["train"])
    model_cfg = model_params(cfg, cfg["model"])
    table = prior_table(cfg, ds.meta)
    lap("prepare")
    checkpoints = []
    for member in range(train_cfg.seeds):
        ckpt = workdir / f"member{member}.pt"
        frame = member_split(ds.frame, seed + member) if per_member else ds.frame
        train_model(frame, ds.meta, model_cfg, train_cfg, seed + member, ckpt, prior_table=table, log_every=0)
        checkpoints.append(ckpt)
    rank_cfg = RankConfig.from_dict({**cfg["rank"], "top_n": n, "allow_fewer": True, "seed": seed})
    ridge, ridge_file = None, workdir / "measured_ridge.npz"
    if rank_reads_ridge(cfg["rank"]):  # fitted as the ridge strategy fits it
        ridge = save_ridge(measured_ridge(land, measured, seed), ridge_file)
    lap("train")
    scores = workdir / "unmeasured_scores.parquet"
    library_cfg = LibraryConfig.from_dict({"kind": "file", "path": str(library), "n_shards": 1})
    score_shard(checkpoints, library_cfg, meta.get("wild_type"), meta.get("first_position", 1), meta["alphabet"],
                0, 1, scores, device=str(resolve_device(train_cfg.device)), exclude=set(land.sequence[rows]),
                progress=False, ridge=ridge)
    lap("score")
    ranking = rank_variants(scores, rank_cfg)
    lap("rank")
    log.info("%d measured variants: %s", len(rows), ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    for path in [*checkpoints, scores, measured_csv, workdir / "measured.parquet", ridge_file]:
        path.unlink(missing_ok=True)  # the round's picks are kept; the models are cheap to retrain
    return land.indices(ranking["sequence"].tolist())


def member_split(frame: "pd.DataFrame", seed: int) -> "pd.DataFrame":
    """The frame with its validation rows redrawn (as many as it has) from its train and valid rows."""
    frame = frame.copy()
    pool = np.flatnonzero(frame["split"].isin(["train", "valid"]).to_numpy())
    n_valid = int((frame["split"] == "valid").sum())
    held_out = np.random.default_rng(seed).choice(pool, size=n_valid, replace=False)
    split = frame["split"].to_numpy(dtype=object)
    split[pool] = "train"
    split[held_out] = "valid"
    frame["split"] = split
    return frame


# --- one run -----------------------------------------------------------------------------------------


def simulate_run(config: Mapping[str, Any], dataset: str | Path, library: str | Path, strategy: str, run: int,
                 out: str | Path, picks_out: str | Path, workdir: str | Path) -> Path:
    """Run `run` of `strategy`: its table (one row per round, RUN_COLUMNS) to `out` and every measured
    variant (round, variant_id, sequence, fitness) to `picks_out`. Finished rounds in `workdir` are
    read back instead of recomputed."""
    import pandas as pd

    sim = simulate_config(config)
    settings = strategies(config).get(strategy)
    if settings is None:
        raise ConfigError(f"simulate.strategies: no strategy {strategy!r} (the strategies: {', '.join(strategies(config))})")
    cfg = strategy_config(config, strategy)
    land = Landscape.load(dataset)
    workdir = Path(workdir)
    keep_finished_rounds(workdir, run_identity(config, cfg, settings, dataset))
    measured = np.zeros(len(land), dtype=bool)
    rounds: list[np.ndarray] = []
    seconds: list[float] = []
    for r in range(sim.rounds + 1):
        done = workdir / f"round{r}.csv"
        started = time.perf_counter()
        if done.is_file():  # finished before this job was killed
            finished = pd.read_csv(done)
            picked = land.indices(finished["sequence"].tolist())
            took = float(finished["seconds"].iloc[0]) if len(picked) else 0.0
        else:
            if r == 0:
                picked = initial_plate(config, land, run)
            else:
                picked = pick(settings, cfg, land, measured, sim, run, r, strategy, library, workdir / f"round{r}")
            took = time.perf_counter() - started
            if measured[picked].any():
                raise DataError(f"strategy {strategy} picked a variant measured already (round {r})")
            with atomic_path(done) as tmp:
                pd.DataFrame({"variant_id": land.variant_id[picked], "sequence": land.sequence[picked],
                              "fitness": land.fitness[picked], "seconds": took}).to_csv(tmp, index=False)
        measured[picked] = True
        rounds.append(picked)
        seconds.append(took)
        log.info("%s run %d round %d: %d picks, batch best %.4g, best so far %.4g of %.4g (%.1f s)", strategy, run,
                 r, len(picked), land.fitness[picked].max() if len(picked) else math.nan,
                 land.fitness[measured].max(), land.global_max, took)
    table = run_table(land, rounds, strategy, run, seconds)
    rows = np.concatenate(rounds)
    picks = pd.DataFrame({"round": np.concatenate([np.full(len(p), r) for r, p in enumerate(rounds)]),
                          "variant_id": land.variant_id[rows], "sequence": land.sequence[rows],
                          "fitness": land.fitness[rows]})
    with atomic_path(out) as tmp_out, atomic_path(picks_out) as tmp_picks:
        table.to_parquet(tmp_out, index=False)
        picks.to_csv(tmp_picks, index=False)
    return Path(out)


def run_identity(config: Mapping[str, Any], cfg: Mapping[str, Any], settings: Mapping[str, Any],
                 dataset: str | Path) -> dict:
    """What a run's rounds depend on: the landscape, the first plate and round settings, the seeds and
    the strategy's sections (a changed setting must not resume from rounds picked under the old one)."""
    from lyra.io import sha256_file

    sim = {k: v for k, v in config["simulate"].items() if k not in ("runs", "first_run", "strategies")}
    return {"landscape": sha256_file(dataset), "seed": config.get("seed"), "simulate": sim,
            "strategy": dict(settings), **{section: cfg.get(section) for section in OVERRIDES.values()}}


def keep_finished_rounds(workdir: Path, identity: dict) -> None:
    """Keep the finished rounds in `workdir` only when they were made with `identity`; else start over."""
    import json
    import shutil

    stamp = workdir / "settings.json"
    text = json.dumps(identity, sort_keys=True, default=str)
    if workdir.is_dir() and (not stamp.is_file() or stamp.read_text() != text):
        if any(workdir.iterdir()):
            log.warning("%s: its rounds were picked with other settings; the run starts over", workdir)
        shutil.rmtree(workdir)
    if not stamp.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_path(stamp) as tmp:
            tmp.write_text(text)


def pick(settings: Mapping[str, Any], cfg: Mapping[str, Any], land: Landscape, measured: np.ndarray,
         sim: SimulateConfig, run: int, round_: int, strategy: str, library: str | Path, workdir: Path) -> np.ndarray:
    model = settings["model"]
    rng = rng_for(sim, run, settings.get("seed") or strategy, round_)
    if model == "random":
        return pick_random(land, measured, sim.batch_size, rng)
    seed = int(rng.integers(2**31 - 1))
    if model == "ridge":
        return pick_ridge(land, measured, sim.batch_size, seed)
    return pick_lyra(cfg, land, measured, sim.batch_size, seed, library, workdir, sim.valid_fraction,
                     per_member=settings.get("validation") == "per_member")


def run_table(land: Landscape, rounds: Sequence[np.ndarray], strategy: str, run: int,
              seconds: Sequence[float]):
    """One row per round: screened so far, best fitness so far (also over the global max), whether it is
    the global max, and the round's batch mean and best."""
    import pandas as pd

    rows, screened, best = [], 0, -math.inf
    for r, picked in enumerate(rounds):
        values = land.fitness[picked]
        screened += len(picked)
        best = max(best, float(values.max())) if len(values) else best
        rows.append({"strategy": strategy, "run": run, "round": r, "screened": screened, "best": best,
                     "norm_best": best / land.global_max, "global_max_found": bool(best >= land.global_max),
                     "batch_mean": float(values.mean()) if len(values) else math.nan,
                     "batch_best": float(values.max()) if len(values) else math.nan, "seconds": seconds[r]})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


# --- all runs ----------------------------------------------------------------------------------------


def summarise(runs: "pd.DataFrame") -> "pd.DataFrame":
    """Per strategy and budget (screened): the number of runs, the mean best fitness found, its mean
    over the global max with the standard error of that mean, and the share of runs at the global max."""
    import pandas as pd

    groups = runs.groupby(["strategy", "screened"], sort=False)
    out = groups.agg(runs=("run", "nunique"), mean_max=("best", "mean"), mean_norm_max=("norm_best", "mean"),
                     sd=("norm_best", "std"), frac_global_max=("global_max_found", "mean")).reset_index()
    out["sem"] = (out["sd"] / np.sqrt(out["runs"])).where(out["runs"] > 1, np.nan)
    return pd.DataFrame(out[SUMMARY_COLUMNS])


def collect(run_files: Sequence[str | Path], runs_out: str | Path, summary_out: str | Path,
            figure_out: str | Path | None = None) -> Path:
    """runs.parquet (every run's rounds), summary.csv (summarise) and the figure of the summary."""
    import pandas as pd

    if not run_files:
        raise ConfigError("simulate: no runs to collect")
    runs = pd.concat([pd.read_parquet(f) for f in run_files], ignore_index=True)
    summary = summarise(runs)
    with atomic_path(runs_out) as tmp_runs, atomic_path(summary_out) as tmp_summary:
        runs.to_parquet(tmp_runs, index=False)
        summary.to_csv(tmp_summary, index=False, float_format="%.4f")
    if figure_out is not None:
        from lyra.report.figures import plot_campaigns

        plot_campaigns(summary, figure_out)
    for strategy, rows in summary.groupby("strategy", sort=False):
        last = rows.iloc[-1]
        log.info("%s: %d runs, best found / global max %.3f +- %.3f at %d screened, %.0f%% of runs at the global max",
                 strategy, last["runs"], last["mean_norm_max"], last["sem"] if last["sem"] == last["sem"] else 0,
                 last["screened"], 100 * last["frac_global_max"])
    return Path(summary_out)
