"""The campaign report: `make_report` reads a campaign's files (named by `lyra.campaign.layout`) and
writes every figure (`layout.FIGURES`) and table (`layout.TABLES`) of its report.

A figure whose inputs are missing (tuning disabled, no wild type, a classification task) is still
written, as a panel that says why, so the workflow's list of outputs never depends on the data. Where
metrics.json has the one-hot ridge baseline, top_n.md opens with the ensemble's and ridge's validation and
test metrics side by side (`model_comparison`), and the library figure shows the model that ranked. The
figures themselves are drawn in `lyra.report.figures`, the epistasis table in `lyra.report.epistasis`;
`lyra report` (lyra.cli) also writes the manifest.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from lyra.campaign.layout import (DATASET, FIGURES, MODELS, PLATE, RANKING, REPORT, SCORES, TABLES, TUNE_BEST,
                                  Layout)
from lyra.design.rank import MODEL_COLUMNS, MODEL_NAMES, model_predictions
from lyra.errors import DataError
from lyra.io import atomic_path, write_text
from lyra.report.epistasis import epistasis_of_picks
from lyra.report.figures import (ScoreSummary, plot_epistasis, plot_learning_curves, plot_library_scores,
                                 plot_param_importances, plot_plate, plot_test_confusion, plot_test_predictions,
                                 plot_top_table, plot_tune_history, plot_unavailable, warning_block,
                                 write_top_markdown)
from lyra.schema import schema_fields

log = logging.getLogger("lyra.report.report")


@dataclass
@schema_fields("report")
class ReportConfig:
    """The config's `report` section (keys, defaults and bounds in lyra/schema.yaml)."""

    epistasis_positions: int
    max_residues_per_position: int
    table_rows: int


@dataclass
class Ensemble:
    """The ensemble's checkpoints, loaded once; `predict` is the members' mean (and std)."""

    members: list[tuple[Any, dict]] = field(default_factory=list)
    batch_size: int = 1024

    @classmethod
    def load(cls, paths: Sequence[str | Path], device: str = "cpu", batch_size: int = 1024) -> "Ensemble":
        from lyra.learn.checkpoints import load_checkpoint

        return cls([load_checkpoint(p, device) for p in paths], batch_size)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def info(self) -> dict:
        return self.members[0][1]

    def predict_all(self, sequences: Sequence[str]) -> np.ndarray:
        """-> (n_models, n, d_output) in target units (classification: probabilities)."""
        from lyra.learn.checkpoints import predict_sequences

        return np.stack([predict_sequences(m, info, list(sequences), self.batch_size) for m, info in self.members])

    def predict(self, sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        p = self.predict_all(sequences)  # (K, n, d)
        return p.mean(0), p.std(0)  # (n, d), (n, d)


# ----------------------------------------------------------------------------------------------------
# reading the campaign's files


def read_dataset(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """dataset.parquet -> (frame, the `lyra` metadata dict)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"lyra")
    if raw is None:
        raise DataError("no 'lyra' metadata (not written by `lyra preprocess`)", path=str(path))
    return table.to_pandas(), json.loads(raw)


def read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg}, line {e.lineno})", path=str(path)) from None


def summarise_scores(path: str | Path, bins: int | None = None, sample: int = 20_000,
                     model: str = "lyra") -> ScoreSummary:
    """The library's predictions under rank.model `model`, streamed from scores.parquet (never all in
    memory): the ensemble's mean and std, ridge's prediction (std zeros) or their blend (`model_predictions`)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    cols = list(MODEL_COLUMNS[model])
    missing = [c for c in cols if c not in f.schema_arrow.names]
    if missing:
        raise DataError(f"has no {missing[0]!r} column", path=str(path))
    n = f.metadata.num_rows
    bins = bins or int(np.clip(np.sqrt(n), 10, 80))
    lo, hi = math.inf, -math.inf
    for batch in f.iter_batches(columns=cols, batch_size=1 << 20):
        m = model_predictions(batch, model)[0]
        m = m[np.isfinite(m)]
        if m.size:
            lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
    if not math.isfinite(lo):
        lo, hi = 0.0, 1.0
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    stride = max(1, n // sample)
    means, stds, offset = [], [], 0
    for batch in f.iter_batches(columns=cols, batch_size=1 << 20):
        m, sd = model_predictions(batch, model)
        counts += np.histogram(m[np.isfinite(m)], bins=edges)[0]
        take = np.arange((-offset) % stride, len(m), stride)
        means.append(m[take])
        stds.append(sd[take])
        offset += len(m)
    return ScoreSummary(n, edges, counts, np.concatenate(means) if means else np.zeros(0),
                        np.concatenate(stds) if stds else np.zeros(0))


def learning_curves_from(metrics: Mapping | None, ensemble: Ensemble | None) -> tuple[dict, dict, str | None]:
    """(curves {seed: rows}, best epochs {seed: epoch}, selection metric) from metrics.json, else from
    the checkpoints' own history."""
    curves, best, metric = {}, {}, None
    if metrics:
        curves = {str(k): list(v or []) for k, v in (metrics.get("learning_curves") or {}).items()}
        for split in ("test", "valid"):
            for row in (metrics.get(split) or {}).get("per_seed") or []:
                if "seed" in row and row.get("best_epoch") is not None:
                    best.setdefault(str(row["seed"]), int(row["best_epoch"]))
    for _, info in (ensemble.members if ensemble else []):
        seed = str(info.get("seed", len(curves)))
        if not curves.get(seed) and info.get("history"):
            curves[seed] = list(info["history"])
        if info.get("best_epoch") is not None:
            best.setdefault(seed, int(info["best_epoch"]))
        metric = metric or info.get("selection_metric")
    return curves, best, metric


def model_comparison(metrics: Mapping | None, ranking: pd.DataFrame | None = None) -> list[str]:
    """Markdown lines comparing the Lyra ensemble with the one-hot ridge baseline and their average on the
    validation and test splits (metrics.json), the line saying which predicts the validation variants better, and which
    model ranked the picks; none without a ridge baseline."""
    from lyra.learn.evaluate import better_on_validation

    ridge = ((metrics or {}).get("baselines") or {}).get("ridge")
    if not ridge:
        return []
    columns = [("spearman", "Spearman"), ("pearson", "Pearson"), ("mse", "MSE")]
    lines = ["| model | " + " | ".join(f"{split} {name}" for split in ("valid", "test") for _, name in columns) + " |",
             "|---|" + "---|" * 2 * len(columns)]
    ensemble = {split: (metrics.get(split) or {}).get("ensemble") or {} for split in ("valid", "test")}
    n_models = (metrics.get("valid") or {}).get("n_models")
    lyra = f"Lyra ensemble ({n_models} model{'s' if n_models != 1 else ''})" if n_models else "Lyra ensemble"
    rows = [(lyra, ensemble), (f"one-hot ridge (alpha {ridge.get('alpha', math.nan):g})", ridge)]
    if metrics.get("blend"):  # older metrics.json files have none
        rows.append(("Lyra and ridge averaged (rank.model: blend)", metrics["blend"]))
    for name, scores in rows:
        cells = [_metric((scores.get(split) or {}).get(key)) for split in ("valid", "test") for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    verdict = better_on_validation(metrics)[1]
    lines += ["", f"{verdict[:1].upper()}{verdict[1:]}."]
    if ranking is not None:
        model = ranking_model_of(ranking)
        n_ridge = int((ranking["model"] == "ridge").sum()) if model != "ridge" and "model" in ranking else 0
        if n_ridge:
            lines.append(f"The first {n_ridge} picks below are one-hot ridge's best predictions (rank.ridge_picks), "
                         f"the others are ranked by {MODEL_NAMES[model]} (rank.model).")
        else:
            lines.append(f"The picks below are ranked by {MODEL_NAMES[model]} (rank.model).")
    return [*lines, ""]


def _metric(x) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def ranking_model_of(ranking: pd.DataFrame | None) -> str:
    """The model rank.model ranked ranking.csv by (its `model` column after any rank.ridge_picks, which come
    first): lyra, ridge or blend; lyra for older rankings."""
    if ranking is None or "model" not in ranking or ranking.empty:
        return "lyra"
    return str(ranking["model"].iloc[-1])


# ----------------------------------------------------------------------------------------------------
# the report


def report_files(campaign: Layout, out_dir: str | Path | None = None) -> tuple[dict[str, Path], dict[str, Path]]:
    """({figure: path}, {table: path}): the campaign's own report files, or the same files in out_dir."""
    if out_dir is None:
        return {n: campaign.figure(n) for n in FIGURES}, {n: campaign.table(n) for n in TABLES}
    out = Path(out_dir)
    return ({n: out / Path(f).relative_to(REPORT) for n, f in FIGURES.items()},
            {n: out / Path(f).relative_to(REPORT) for n, f in TABLES.items()})


def make_report(campaign_dir: str | Path, config: Mapping[str, Any] | None = None, device: str = "cpu",
                out_dir: str | Path | None = None) -> list[Path]:
    """Write every figure and table of the report of the campaign in campaign_dir; return their paths.

    They go to the campaign's report folder (`layout.FIGURES`, `layout.TABLES`), or to out_dir under the
    same names. A figure whose inputs are missing is written as a panel saying which input is missing.
    """
    campaign = Layout(campaign_dir)
    cfg = ReportConfig.from_dict((config or {}).get("report"))
    paths, tables = report_files(campaign, out_dir)
    written: list[Path] = []

    frame, meta = (None, {})
    if campaign.dataset.exists():
        frame, meta = read_dataset(campaign.dataset)
    targets = list(meta.get("targets") or [])
    target = targets[0] if targets else "score"
    models = campaign.checkpoints()
    ensemble = Ensemble.load(models, device) if models else None
    metrics = read_json(campaign.metrics)
    warnings = list((metrics or {}).get("warnings") or [])  # written by `lyra evaluate`

    # learning curves
    curves, best_epochs, metric = learning_curves_from(metrics, ensemble)
    written.append(plot_learning_curves(curves, paths["learning_curves"], best_epochs, metric))

    # predicted vs measured on the test split
    written.append(_test_figure(frame, meta, ensemble, paths["test_predictions"], warnings))

    # tuning
    best = read_json(campaign.tune_best) or {}
    if best and best.get("tuned") is False:
        why = "tuning is disabled (tune.enabled: false); the model config was used as given"
        written.append(plot_unavailable(paths["tune_history"], "Optuna optimisation history", why))
        written.append(plot_unavailable(paths["tune_importances"], "Hyper-parameter importances", why))
    else:
        trials = pd.read_csv(campaign.tune_trials, sep="\t") if campaign.tune_trials.exists() else pd.DataFrame()
        written.append(plot_tune_history(trials, paths["tune_history"], best.get("direction", "maximize"),
                                         best.get("metric", "value")))
        # computed by the collect step (lyra.tune.collect.param_importances), which reads the study's journal
        imp = best.get("importances")
        why = best.get("importances_note") or ("" if imp is not None else f"no importances in {TUNE_BEST}")
        written.append(plot_param_importances(imp, paths["tune_importances"], why))

    # library and picks
    ranking = pd.read_csv(campaign.ranking, keep_default_na=False, na_values=[""]) \
        if campaign.ranking.exists() else None
    wild_type = meta.get("wild_type")
    first = 1 if meta.get("first_position") is None else int(meta["first_position"])  # 0 is a numbering too
    regression = meta.get("task", "regression") == "regression"
    ranked_by = ranking_model_of(ranking)  # the picks' mean is that model's prediction: show its library
    f_wt = None
    if ensemble is not None and wild_type and regression and ranked_by == "lyra":  # the ensemble's wild type
        f_wt = float(ensemble.predict([wild_type])[0][0, 0])
    if campaign.scores.exists() and ranking is not None:
        refs = {}
        if f_wt is not None:
            refs["wild type, predicted"] = f_wt
        if frame is not None and target in frame and regression:
            refs["best measured"] = float(pd.to_numeric(frame[target], errors="coerce").max())
        summary = summarise_scores(campaign.scores, model=ranked_by)
        written.append(plot_library_scores(summary, ranking, paths["library_scores"], refs, target,
                                           predictor=MODEL_NAMES[ranked_by]))
    else:
        written.append(plot_unavailable(paths["library_scores"], "Library score distribution",
                                        f"{SCORES} or {RANKING} is missing"))

    # top-N table, after metrics.json's warnings and the models side by side
    comparison = model_comparison(metrics, ranking)
    if ranking is not None:
        written.append(plot_top_table(ranking, paths["top_n"], cfg.table_rows))
        picks = write_top_markdown(ranking, tables["top_n"]).read_text()
        write_text(tables["top_n"], "\n".join([*warning_block(warnings), *comparison, picks]))
        written.append(tables["top_n"])
    else:
        written.append(plot_unavailable(paths["top_n"], "Top picks", f"{RANKING} is missing"))
        write_text(tables["top_n"], "\n".join([*warning_block(warnings), *comparison, f"{RANKING} is missing\n"]))
        written.append(tables["top_n"])

    # plate map
    if campaign.plate.exists():
        plate = pd.read_csv(campaign.plate, keep_default_na=False, na_values=[""],
                            dtype={"row": str, "variant_id": str, "mutations": str})
        written.append(plot_plate(plate, paths["plate"]))
    else:
        written.append(plot_unavailable(paths["plate"], "Plate map", f"{PLATE} is missing"))

    # predicted epistasis
    table, positions, why = pd.DataFrame(), [], ""
    if ensemble is None:
        why = "no trained models"
    elif not regression:
        why = "the epistasis map is for regression targets"
    elif not wild_type:
        why = "the dataset has no wild type"
    elif ranking is None or "mutations" not in ranking:
        why = f"{RANKING} is missing or has no mutations column"
    else:
        muts = [m for m in ranking["mutations"].fillna("").astype(str)]
        table, positions = epistasis_of_picks(lambda s: ensemble.predict(s)[0][:, 0], wild_type, muts,
                                              cfg.epistasis_positions, cfg.max_residues_per_position, first)
        if table.empty:
            why = "the picks mutate fewer than two positions"
    with atomic_path(tables["epistasis"]) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.8g")
    written.append(tables["epistasis"])
    if why:
        written.append(plot_unavailable(paths["epistasis"], "Predicted pairwise epistasis", why))
    else:
        written.append(plot_epistasis(table, positions, paths["epistasis"], target, wild_type, first))
    for p in written:
        log.info("wrote %s", p)
    return written


def _test_figure(frame: pd.DataFrame | None, meta: Mapping, ensemble: Ensemble | None, out: Path,
                 warnings: Sequence[str] = ()) -> Path:
    title = "Predicted vs measured (test split)"
    if frame is None:
        return plot_unavailable(out, title, f"{DATASET} is missing")
    if ensemble is None:
        return plot_unavailable(out, title, f"no checkpoints in {MODELS}/")
    rows = frame[frame["split"] == "test"]
    if rows.empty:
        return plot_unavailable(out, title, "the dataset has no test rows")
    mean, std = ensemble.predict(rows["sequence"].tolist())  # (n, d)
    targets = list(meta["targets"])
    if meta.get("task") == "classification":
        classes = [str(c) for c in meta["classes"]]
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[str(v)] for v in rows[targets[0]]])
        return plot_test_confusion(labels, mean, classes, out, len(ensemble), warnings)
    measured = rows[targets].to_numpy(dtype=np.float64)
    return plot_test_predictions(measured, mean, out, targets, spread=std, n_models=len(ensemble),
                                 warnings=warnings)
