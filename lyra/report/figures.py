"""The report's figures, each drawn from plain data into one PNG, and the top-N Markdown table.

One function per figure (`plot_*`); `plot_unavailable` is the panel written in a figure's place when
its inputs are missing, and metrics.json's warnings go in a red box (figures) or a callout (top_n.md).
`docs/report.md` says how to read each figure.

Matplotlib is used through `Figure` objects only (no pyplot, no global state): the same inputs give
byte-identical PNGs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from lyra.io import atomic_path, write_text
from lyra.learn import metrics as M

DPI = 120
SEED_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:gray", "tab:olive", "tab:cyan")
TABLE_COLUMNS = ("rank", "mutations", "variant_id", "n_mutations", "mean", "std", "acquisition")


# ----------------------------------------------------------------------------------------------------
# drawing helpers


def _save(fig: Figure, path: str | Path, tight: bool = False) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None},
                    bbox_inches="tight" if tight else None, pad_inches=0.15)
    return path


def plot_unavailable(out: str | Path, title: str, reason: str) -> Path:
    """A panel saying why a figure could not be drawn (keeps the set of output files fixed)."""
    fig = Figure(figsize=(7, 2.6))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=13)
    ax.text(0.5, 0.5, _wrap(f"Not available: {reason}", 70), ha="center", va="center", fontsize=11,
            color="0.3", transform=ax.transAxes)
    return _save(fig, out)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


WARNING_HEADLINE = "The model may not have learned: treat its predictions and picks with caution"


def _figure_with_warnings(size: tuple[float, float], warnings: Sequence[str]) -> tuple[Figure, Any]:
    """(figure, the part to draw the panels in): without warnings both are one Figure; with them the
    figure grows by a red band under the panels that lists metrics.json's warnings."""
    if not warnings:
        fig = Figure(figsize=size, layout="constrained")
        return fig, fig
    chars = max(40, int(size[0] * 14))  # about what fits in one line at 9 pt
    text = "\n".join(_wrap(line, chars) for line in [f"WARNING: {WARNING_HEADLINE}.", *(f"• {w}" for w in warnings)])
    band = 0.17 * (text.count("\n") + 1) + 0.3  # inches: 9-pt lines and a margin
    fig = Figure(figsize=(size[0], size[1] + band), layout="constrained")
    panels, box = fig.subfigures(2, 1, height_ratios=[size[1], band])
    box.set_facecolor("#fdecea")
    box.text(0.02, 0.5, text, ha="left", va="center", fontsize=9, color="darkred", linespacing=1.3)
    return fig, panels


def _short(text: Any, width: int = 36) -> str:
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return s if len(s) <= width else s[: width - 1] + "…"


def _fmt(x: Any) -> str:
    """Table cells: floats with 3 decimals (aligned in a column), tiny or huge ones in 3 significant digits."""
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return ""
        return f"{x:.3f}" if x == 0 or 1e-3 <= abs(x) < 1e6 else f"{x:.3g}"
    return _short(x)


# ----------------------------------------------------------------------------------------------------
# figures


def plot_learning_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], out: str | Path,
                         best_epochs: Mapping[str, int] | None = None, metric: str | None = None) -> Path:
    """Left: train (solid) and validation (dashed) loss per epoch; right: the validation metric.
    One colour per seed; a star marks each seed's best (checkpointed) epoch."""
    best_epochs = dict(best_epochs or {})
    seeds = sorted(curves, key=_seed_order)
    if not seeds or not any(curves[s] for s in seeds):
        return plot_unavailable(out, "Learning curves", "no training history in metrics.json or the checkpoints")
    metric = metric or _guess_metric(curves[seeds[0]])
    key = f"valid_{metric}" if metric and metric != "loss" else "valid_loss"
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    for i, seed in enumerate(seeds):
        rows = list(curves[seed])
        if not rows:
            continue
        color = SEED_COLORS[i % len(SEED_COLORS)]
        epoch = np.array([r["epoch"] for r in rows])
        ax_loss.plot(epoch, _col(rows, "train_loss"), color=color, lw=1.6, label=f"seed {seed} train")
        ax_loss.plot(epoch, _col(rows, "valid_loss"), color=color, lw=1.6, ls="--", label=f"seed {seed} valid")
        ax_metric.plot(epoch, _col(rows, key), color=color, lw=1.6, marker="o", ms=3, label=f"seed {seed}")
        best = best_epochs.get(str(seed))
        if best is not None and best in set(epoch.tolist()):
            j = int(np.flatnonzero(epoch == best)[0])
            ax_loss.plot(best, _col(rows, "valid_loss")[j], marker="*", ms=14, color=color, mec="black", mew=0.6)
            ax_metric.plot(best, _col(rows, key)[j], marker="*", ms=14, color=color, mec="black", mew=0.6)
    ax_loss.set(xlabel="epoch", ylabel="loss (transformed target units)",
                title="Loss: train (solid), validation (dashed)")
    ax_metric.set(xlabel="epoch", ylabel=key.replace("_", " "),
                  title=f"Validation {key[len('valid_'):]} (★ best epoch)")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(fontsize=8, ncol=2 if len(seeds) > 3 else 1)
    ax_metric.legend(fontsize=8)
    fig.suptitle(f"Learning curves of the {len(seeds)} ensemble member(s)", fontsize=13)
    return _save(fig, out)


def _seed_order(s: Any) -> tuple[int, str]:
    return (int(s), "") if str(s).lstrip("-").isdigit() else (sys.maxsize, str(s))


def _col(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def _guess_metric(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = [k[len("valid_"):] for k in (rows[0] if rows else {}) if k.startswith("valid_") and k != "valid_loss"]
    for preferred in ("spearman", "accuracy"):
        if preferred in keys:
            return preferred
    return keys[0] if keys else "loss"


def plot_test_predictions(measured: np.ndarray, predicted: np.ndarray, out: str | Path,
                          targets: Sequence[str], spread: np.ndarray | None = None, n_models: int = 1,
                          warnings: Sequence[str] = ()) -> Path:
    """Regression: predicted (ensemble mean, bars = ensemble std) vs measured, one panel per target,
    Spearman and Pearson in the titles; the dashed line is y = x. `warnings` (metrics.json's) go in a
    red box under the panels."""
    measured = np.asarray(measured, dtype=np.float64).reshape(len(measured), -1)  # (n, T)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)  # (n, T)
    T = measured.shape[1]
    fig, panels = _figure_with_warnings((5.6 * T, 5.6), warnings)
    axes = np.atleast_1d(panels.subplots(1, T))
    for j, ax in enumerate(axes):
        ok = ~np.isnan(measured[:, j])
        t, p = measured[ok, j], predicted[ok, j]
        if spread is not None:
            ax.errorbar(t, p, yerr=np.asarray(spread).reshape(len(spread), -1)[ok, j], fmt="none",
                        ecolor="0.6", elinewidth=0.7, alpha=0.6, zorder=1)
        ax.scatter(t, p, s=14, alpha=0.75, color="tab:blue", edgecolor="none", zorder=2)
        lo, hi = _limits(np.concatenate([t, p]))
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.3", lw=1, label="y = x")
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"measured {targets[j]}", ylabel=f"predicted {targets[j]}")
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"{targets[j]}: Spearman {M.spearman(t, p):.3f}, Pearson {M.pearson(t, p):.3f}\n"
                     f"test split, n = {t.size}", fontsize=11)
    panels.suptitle(f"Test split: predicted (mean ± std of {n_models} models) vs measured", fontsize=12)
    return _save(fig, out)


def plot_test_confusion(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], out: str | Path,
                        n_models: int = 1, warnings: Sequence[str] = ()) -> Path:
    """Classification: confusion matrix of the ensemble's most probable class on the test split;
    `warnings` as in `plot_test_predictions`."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(probs).argmax(1)
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    fig, panels = _figure_with_warnings((1.2 * k + 3, 1.1 * k + 2.5), warnings)
    ax = panels.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=classes, yticklabels=classes,
           xlabel="predicted class", ylabel="measured class")
    panels.colorbar(im, ax=ax, label="variants")
    ax.set_title(f"Test split: accuracy {M.accuracy(labels, probs):.3f}, MCC {M.mcc(labels, probs, k):.3f} "
                 f"(n = {labels.size}, {n_models} model(s))", fontsize=11)
    return _save(fig, out)


def _limits(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def plot_tune_history(trials: pd.DataFrame, out: str | Path, direction: str = "maximize",
                      metric: str = "value") -> Path:
    """Objective value of each trial in trial order, best-so-far as a step line; pruned and failed
    trials as ticks at the bottom."""
    if trials is None or trials.empty or "value" not in trials:
        return plot_unavailable(out, "Optuna optimisation history", "no tuning trials (trials.tsv is empty)")
    trials = trials.sort_values("number")
    state = trials.get("state", pd.Series("COMPLETE", index=trials.index)).astype(str)
    done = trials[(state == "COMPLETE") & trials["value"].notna()]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if not done.empty:
        x, v = done["number"].to_numpy(), done["value"].to_numpy(dtype=np.float64)
        best = np.maximum.accumulate(v) if direction == "maximize" else np.minimum.accumulate(v)
        ax.scatter(x, v, color="tab:blue", s=30, zorder=3, label="completed trial")
        ax.step(x, best, where="post", color="tab:red", lw=2, label="best so far")
        i = int(np.argmax(v) if direction == "maximize" else np.argmin(v))
        ax.annotate(f"best: trial {int(x[i])}\n{metric} = {v[i]:.4g}", (x[i], v[i]), xytext=(10, -28),
                    textcoords="offset points", fontsize=9, arrowprops={"arrowstyle": "->", "color": "0.3"})
    for name, marker, color in (("PRUNED", "|", "tab:orange"), ("FAIL", "x", "tab:gray")):
        rows = trials[state == name]
        if not rows.empty:
            ax.plot(rows["number"], np.full(len(rows), 0.02), marker=marker, ls="none", ms=10, color=color,
                    transform=ax.get_xaxis_transform(), label=f"{name.lower()} ({len(rows)})")
    ax.set(xlabel="trial number", ylabel=f"validation {metric}",
           title=f"Optuna optimisation history ({len(done)} completed of {len(trials)} trials, {direction})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return _save(fig, out)


def plot_param_importances(importances: Mapping[str, float] | None, out: str | Path, reason: str = "") -> Path:
    """fANOVA importance of each searched hyper-parameter (fractions of the explained variance)."""
    if not importances:
        return plot_unavailable(out, "Hyper-parameter importances", reason or "no importances computed")
    names = list(importances)[::-1]  # most important on top
    values = np.array([importances[n] for n in names], dtype=np.float64)
    fig = Figure(figsize=(7.5, 1.0 + 0.45 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, values, color="tab:blue")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
    ax.set(xlabel="importance (fANOVA, share of the objective's variance)", xlim=(0, max(1.0, values.max() * 1.15)),
           title="Hyper-parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)


@dataclass
class ScoreSummary:
    """The library's predicted means, streamed from scores.parquet (never all in memory)."""

    n: int
    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # (bins,)
    sample_mean: np.ndarray  # an evenly strided subsample for the mean-vs-std panel
    sample_std: np.ndarray


def plot_library_scores(summary: ScoreSummary, picks: pd.DataFrame, out: str | Path,
                        references: Mapping[str, float] | None = None, target: str = "score",
                        predictor: str = "ensemble mean") -> Path:
    """Left: histogram of the library's predicted mean (log count axis), the picks' histogram on top
    and reference lines; right: predicted mean vs ensemble std, picks highlighted. `predictor` names
    what ranked the library (the ensemble mean, or one-hot ridge)."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=(1.3, 1))
    widths = np.diff(summary.edges)
    ax.bar(summary.edges[:-1], summary.counts, width=widths, align="edge", color="0.7", edgecolor="0.5",
           lw=0.3, label=f"library ({summary.n:,} variants)")
    pick_mean = picks["mean"].to_numpy(dtype=np.float64) if "mean" in picks else np.zeros(0)
    if pick_mean.size:
        pc = np.histogram(np.clip(pick_mean, summary.edges[0], summary.edges[-1]), bins=summary.edges)[0]
        ax.bar(summary.edges[:-1], pc, width=widths, align="edge", color="tab:orange", alpha=0.9,
               label=f"picks ({pick_mean.size})")
    styles = ("--", ":", "-.")
    for (name, value), ls in zip((references or {}).items(), styles):
        if value is not None and math.isfinite(value):
            ax.axvline(value, color="black", ls=ls, lw=1.2, label=f"{name} ({value:.3g})")
    if summary.counts.max(initial=0) > 100:  # else the picks' bars vanish next to the library's
        ax.set_yscale("log")
    log_y = " (log scale)" if ax.get_yscale() == "log" else ""
    ax.set(xlabel=f"predicted {target} ({predictor})", ylabel="variants" + log_y,
           title="Library score distribution")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)

    ax2.scatter(summary.sample_mean, summary.sample_std, s=4, color="0.6", alpha=0.4, edgecolor="none",
                label="library" + (" (subsample)" if summary.sample_mean.size < summary.n else ""))
    if pick_mean.size and "std" in picks:
        ax2.scatter(pick_mean, picks["std"].to_numpy(dtype=np.float64), s=18, color="tab:orange",
                    edgecolor="black", lw=0.4, label="picks")
    ax2.set(xlabel=f"predicted {target} ({predictor})", ylabel="ensemble std (uncertainty)",
            title="Mean vs uncertainty: what the acquisition traded off")
    ax2.legend(fontsize=8, markerscale=2)
    ax2.grid(alpha=0.3)
    return _save(fig, out)


def top_table(ranking: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """The ranking without sequences (long and unreadable in a table), first n rows."""
    cols = [c for c in ranking.columns if c != "sequence"]
    table = ranking[cols]
    return table if n is None else table.head(n)


def warning_block(warnings: Sequence[str]) -> list[str]:
    """Markdown lines of a warning callout (GitHub renders it as one; elsewhere it is a quote), then a
    blank line; no lines without warnings."""
    if not warnings:
        return []
    return ["> [!WARNING]", f"> **{WARNING_HEADLINE}** (from models/metrics.json):", ">",
            *(f"> - {w}" for w in warnings), ""]


def write_top_markdown(ranking: pd.DataFrame, out: str | Path, warnings: Sequence[str] = ()) -> Path:
    """Every pick as a Markdown table, after a warning block when the model may not have learned."""
    table = top_table(ranking)
    lines = [*warning_block(warnings), "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        cells = (_fmt(v) if isinstance(v, (float, np.floating)) else ("" if v is None else str(v)) for v in row)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    write_text(out, "\n".join(lines) + "\n")
    return Path(out)


def plot_top_table(ranking: pd.DataFrame, out: str | Path, n: int = 30) -> Path:
    """The first n picks as a table image (all rows are in top_n.md and ranking.csv)."""
    if ranking.empty:
        return plot_unavailable(out, "Top picks", "ranking.csv has no rows")
    preferred = [c for c in TABLE_COLUMNS if c in ranking.columns]
    if "mutations" in preferred and "variant_id" in preferred:
        preferred.remove("variant_id")  # the id is the mutation string unless the user named variants
    table = ranking[preferred].head(n)
    cells = [[_fmt(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max(len(str(c)), *(len(row[i]) for row in cells)) for i, c in enumerate(preferred)]
    fig = Figure(figsize=(max(5.0, 0.11 * sum(widths) + 0.25 * len(widths)), 0.6 + 0.26 * (len(cells) + 1)))
    ax = fig.add_subplot()
    ax.set_axis_off()
    tab = ax.table(cellText=cells, colLabels=[c.replace("_", " ") for c in preferred], loc="upper center",
                   cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.auto_set_column_width(list(range(len(preferred))))
    for (r, _), cell in tab.get_celld().items():
        cell.set_height(1.0 / (len(cells) + 2))
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("0.85")
        elif r % 2 == 0:
            cell.set_facecolor("0.96")
    ax.set_title(f"Top {len(cells)} of {len(ranking)} picks (all in ranking.csv / top_n.md)", fontsize=12)
    return _save(fig, out, tight=True)


# ----------------------------------------------------------------------------------------------------
# plate map

PLATE_COLORS = {"pick": "#cfe2f3", "control": "#f6b26b", "empty": "white"}
MAX_PLATES_DRAWN = 4  # a larger order is in plate.csv; the picture shows its first plates


def _well_label(row: Any, small: bool) -> tuple[str, str]:
    """(headline, detail) of a well: a pick's rank over its mutations, two per line (the rank only on a
    384-well plate); a control's name ('WT' or its mutations)."""
    if row.content == "empty":
        return "", ""
    muts = "" if pd.isna(row.mutations) else str(row.mutations)
    if row.content == "control":
        return ("WT", "") if not muts else (("ctrl", "") if small else ("", "\n".join(_pairs(muts))))
    if small:
        return str(int(row.rank)), ""
    name = muts or ("" if pd.isna(row.variant_id) else str(row.variant_id))
    return str(int(row.rank)), "\n".join(_pairs(_short(name, 60)))


def _pairs(mutations: str) -> list[str]:
    parts = mutations.split(":")
    return [":".join(parts[i: i + 2]) for i in range(0, len(parts), 2)]


def plot_plate(plate: pd.DataFrame, out: str | Path) -> Path:
    """Each plate of plate.csv as a grid of wells: picks labelled with their rank and mutations, controls
    highlighted, empty wells blank."""
    from matplotlib.patches import Circle, Patch

    if plate.empty:
        return plot_unavailable(out, "Plate map", "plate.csv has no wells")
    numbers = sorted(plate["plate"].unique())
    shown = numbers[:MAX_PLATES_DRAWN]
    n_rows = len(plate["row"].unique())
    n_cols = int(plate["column"].max())
    small = n_rows > 8  # 384 wells: room for the rank only
    cell = 0.5 if small else 0.95
    fig = Figure(figsize=(n_cols * cell + 1.2, len(shown) * (n_rows * cell + 0.9)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(shown), 1))
    rows = sorted(plate["row"].unique(), key=lambda r: (len(r), r))
    for ax, number in zip(axes, shown):
        wells = plate[plate["plate"] == number]
        for w in wells.itertuples(index=False):
            x, y = int(w.column) - 1, rows.index(w.row)
            ax.add_patch(Circle((x, y), 0.45, facecolor=PLATE_COLORS.get(w.content, "white"),
                                edgecolor="0.35" if w.content != "empty" else "0.75", lw=0.8))
            head, detail = _well_label(w, small)
            if head:
                ax.text(x, y - (0.16 if detail else 0), head, ha="center", va="bottom" if detail else "center",
                        fontsize=5 if small else 7, weight="bold")
            if detail:
                ax.text(x, y - (0.12 if head else 0), detail, ha="center", va="top" if head else "center",
                        fontsize=5, linespacing=1.1)
        ax.set_xlim(-0.6, n_cols - 0.4)
        ax.set_ylim(n_rows - 0.4, -0.6)
        ax.set_aspect("equal")
        ax.set_xticks(range(n_cols), [str(c) for c in range(1, n_cols + 1)], fontsize=8)
        ax.set_yticks(range(n_rows), rows, fontsize=8)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_color("0.6")
        counts = wells["content"].value_counts()
        ax.set_title(f"Plate {number}: {counts.get('pick', 0)} picks, {counts.get('control', 0)} control wells, "
                     f"{counts.get('empty', 0)} empty", fontsize=10)
    handles = [Patch(facecolor=c, edgecolor="0.35", label=k) for k, c in PLATE_COLORS.items()]
    more = f" (first {len(shown)} of {len(numbers)} plates; all in plate.csv)" if len(shown) < len(numbers) else ""
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8,
               title=f"Wells by content{more}", title_fontsize=8)
    return _save(fig, out)

# ----------------------------------------------------------------------------------------------------
# predicted epistasis


def plot_epistasis(table: pd.DataFrame, positions: Sequence[int], out: str | Path, target: str = "score",
                   wild_type: str | None = None, first_position: int = 1) -> Path:
    """Lower triangle of positions x positions; each cell is the residue pair with the largest |epsilon|
    at that pair of positions, annotated with the pair and its value; red = better than additive."""
    positions = sorted(positions)
    k = len(positions)
    if table.empty or k < 2:
        return plot_unavailable(out, "Predicted pairwise epistasis", "the picks mutate fewer than two positions")
    index = {p: i for i, p in enumerate(positions)}
    # row r is positions[r + 1], column c is positions[c]: the empty first row and last column are cut
    eps = np.full((k - 1, k - 1), np.nan)
    label = [["" for _ in range(k - 1)] for _ in range(k - 1)]
    strongest = table.loc[table["epsilon"].abs().groupby([table["position_i"], table["position_j"]]).idxmax()]
    for r in strongest.itertuples(index=False):
        lo, hi = sorted((index[r.position_i], index[r.position_j]))
        eps[hi - 1, lo] = r.epsilon
        label[hi - 1][lo] = f"{r.mutation_i}\n{r.mutation_j}\n{r.epsilon:+.2g}"
    vmax = float(np.nanmax(np.abs(eps))) if np.isfinite(eps).any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    size = max(5.5, 0.9 * (k - 1) + 2.5)
    fig = Figure(figsize=(size + 1.4, size), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(eps), cmap=_cmap(), norm=TwoSlopeNorm(0.0, -vmax, vmax))
    fontsize = 8 if k <= 9 else 6
    for (i, j), text in np.ndenumerate(np.array(label, dtype=object)):
        if text:
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if abs(eps[i, j]) > 0.6 * vmax else "black")
    names = [f"{wild_type[p - first_position]}{p}" if wild_type and 0 <= p - first_position < len(wild_type)
             else str(p) for p in positions]
    ax.set_xticks(range(k - 1), names[:-1], rotation=45, ha="right")
    ax.set_yticks(range(k - 1), names[1:])
    ax.set(xlabel="position (wild-type residue)", ylabel="position (wild-type residue)")
    ax.set_xticks(np.arange(-0.5, k - 1, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k - 1, 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"ε = f(ij) − f(i) − f(j) + f(wt)   [{target}]")
    n_mut = len(set(table["mutation_i"]) | set(table["mutation_j"]))
    ax.set_title(f"Predicted epistasis, {k} most mutated positions of the picks\n"
                 f"per cell: strongest |ε| of {len(table)} doubles ({n_mut} mutations); red = better than additive",
                 fontsize=10)
    return _save(fig, out)


def _cmap():
    import matplotlib

    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")


# ----------------------------------------------------------------------------------------------------
# retrospective campaigns


def plot_campaigns(summary: pd.DataFrame, out: str | Path) -> Path:
    """Best fitness found over the landscape's global max against variants screened, one line per
    strategy with its standard-error band; the share of runs at the global max in the legend."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for k, (strategy, rows) in enumerate(summary.groupby("strategy", sort=False)):
        x = rows["screened"].to_numpy()
        y = rows["mean_norm_max"].to_numpy(dtype=np.float64)
        sem = rows["sem"].fillna(0).to_numpy(dtype=np.float64)
        color = SEED_COLORS[k % len(SEED_COLORS)]
        last = rows.iloc[-1]
        label = (f"{strategy}: {y[-1]:.3f} at {int(x[-1])}, {100 * last['frac_global_max']:.0f}% at the max "
                 f"({int(last['runs'])} runs)")
        ax.plot(x, y, marker="o", color=color, lw=2, label=label)
        ax.fill_between(x, y - sem, y + sem, color=color, alpha=0.2, lw=0)
    ax.set(xlabel="variants screened", ylabel="best found / global max",
           title="Retrospective campaigns: mean over runs, band = standard error")
    ax.set_ylim(top=1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    return _save(fig, out)
