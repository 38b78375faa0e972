"""The session's figures, drawn from the computed statistics into ``results/plot_*.png``.

Three figures, each answering a question a reader of the report asks first: how are the scores
distributed in each group, how far apart are the runs for each document, and which measures are
reliable. matplotlib's object API with the Agg canvas is used (no pyplot, no display, no global
state), so plotting works in a Dagster worker, a test or a headless server alike.

Every figure has a fixed size whatever the number of documents: up to ``MAX_DOCUMENTS_DRAWN``
documents the runs figure gives each document a column of its own; above that it draws one point
per document (its mean across runs against its inter-run SD) and says so in its title.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mva_dagster.fsutil import atomic_write_bytes
from mva_dagster.stats.data import StatsData, grouped_values
from mva_dagster.stats.engine import StatisticsResult

MAX_PANELS = 16
MAX_DOCUMENTS_DRAWN = 60  # one column per document up to here (27 inches wide); one point each above
FLOOR = -1.0  # left edge of the reliability axis
PLOT_FILES = {
    "scores_by_group": "plot_scores_by_group.png",
    "runs_by_document": "plot_runs_by_document.png",
    "reliability": "plot_reliability.png",
}
PLOT_TITLES = {
    "scores_by_group": "Score distributions by group (every run)",
    "runs_by_document": "Each document's runs: mean and spread between runs",
    "reliability": "Inter-run reliability (Cronbach's alpha, 95% CI)",
}


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _grid(n: int, width: float = 3.2, height: float = 2.8, label_in: float = 0.9) -> tuple[Figure, list[Axes]]:
    """Up to 4 panels a row; ``label_in`` inches under each row for (rotated) tick labels."""
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    total = rows * (height + label_in) + 0.6
    fig = Figure(figsize=(width * cols, total))
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    # Fixed margins, not a layout engine: drawing twice to solve the layout doubled the time.
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.65 / total, bottom=label_in / total,
                        wspace=0.3, hspace=(label_in + 0.3) / height)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _jitter(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) - 0.5) * 0.25  # fixed seed: same picture every time


def plot_scores_by_group(data: StatsData, result: StatisticsResult, path: Path) -> Path:
    anchors = [s for s in result.focus if s not in data.metrics] or [s for s in data.numeric
                                                                      if s not in data.metrics]
    anchors = anchors[:MAX_PANELS]
    grouping = result.groupings[0] if result.groupings else None
    fig, axes = _grid(max(1, len(anchors)))
    model = data.models[0] if data.models else ""
    for i, (ax, source) in enumerate(zip(axes, anchors, strict=False)):
        if grouping is not None:
            values = grouped_values(data, grouping, model, source, "record")
        else:
            values = {"all documents": data.model_rows(model, [source])[source].dropna().tolist()}
        labels = list(values)
        series = [values[g] for g in labels]
        if any(series):
            ax.boxplot(series, showfliers=False, widths=0.5)
            for j, vals in enumerate(series, start=1):
                ax.scatter(j + _jitter(len(vals), i * 31 + j), vals, s=9, alpha=0.6, color="tab:blue")
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(source, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{PLOT_TITLES['scores_by_group']}"
                 + (f" - grouped by {grouping.label}" if grouping else "") + (f" - {model}" if model else ""),
                 fontsize=10)
    if not anchors:
        axes[0].text(0.5, 0.5, "no numeric scores", ha="center", va="center")
    return _save(fig, path)


def _per_document(data: StatsData, model: str, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One model's valid runs of ``source`` (document_id, value) and per document: mean, sd, n."""
    runs = data.model_rows(model, ["document_id", source]).dropna()
    summary = runs.groupby("document_id", sort=True)[source].agg(["mean", "std", "count"])
    return runs, summary


def plot_runs_by_document(data: StatsData, result: StatisticsResult, path: Path) -> Path:
    """Each document's runs; one column per document up to MAX_DOCUMENTS_DRAWN, one point above."""
    indices = (data.metrics or result.focus)[:MAX_PANELS]
    documents = sorted(data.documents["document_id"])
    if len(documents) > MAX_DOCUMENTS_DRAWN:
        return _plot_runs_summary(data, indices, len(documents), path)
    position = pd.Series(np.arange(len(documents), dtype=float), index=documents)
    longest = max((len(d) for d in documents), default=4)
    fig, axes = _grid(max(1, len(indices)), width=max(3.2, 0.45 * len(documents) + 1.5), height=3.0,
                      label_in=0.3 + 0.045 * longest)
    for i, (ax, source) in enumerate(zip(axes, indices, strict=False)):
        for m, model in enumerate(data.models):
            offset = (m - (len(data.models) - 1) / 2) * 0.2
            runs, summary = _per_document(data, model, source)
            if summary.empty:
                continue
            x_runs = position.reindex(runs["document_id"]).to_numpy()
            ax.scatter(x_runs + offset + _jitter(len(runs), i * 97 + m) * 0.4, runs[source].to_numpy(dtype=float),
                       s=8, alpha=0.5, color=f"C{m}")
            ax.errorbar(position.reindex(summary.index).to_numpy() + offset, summary["mean"].to_numpy(),
                        yerr=summary["std"].fillna(0.0).to_numpy(), fmt="o", color=f"C{m}", capsize=3, ms=4,
                        label=model)
        ax.set_xticks(range(len(documents)), documents, rotation=60, ha="right", fontsize=6)
        ax.set_title(source, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        if len(data.models) > 1 and i == 0:
            ax.legend(fontsize=6)
    fig.suptitle("Each document's runs: mean, spread (1 SD) and single runs", fontsize=10)
    return _save(fig, path)


def _plot_runs_summary(data: StatsData, indices: list[str], n_documents: int, path: Path) -> Path:
    """Too many documents for a column each: one point per document, the figure's size fixed.

    With two or more runs a point is a document's mean across runs (x) against its inter-run SD
    (y): the spread between runs, and whether it depends on the level. With one run there is no
    spread, and the documents' values are drawn sorted.
    """
    spread = data.runs_per_model >= 2
    fig, axes = _grid(max(1, len(indices)), width=3.6, height=3.0, label_in=0.55)
    for i, (ax, source) in enumerate(zip(axes, indices, strict=False)):
        for m, model in enumerate(data.models):
            _, summary = _per_document(data, model, source)
            if spread:
                points = summary[summary["count"] >= 2]
                ax.scatter(points["mean"].to_numpy(), points["std"].to_numpy(), s=5, alpha=0.35, linewidths=0,
                           color=f"C{m}", label=f"{model} ({len(points)} documents)")
            else:
                values = np.sort(summary["mean"].to_numpy())
                ax.plot(np.arange(1, len(values) + 1), values, lw=1.2, color=f"C{m}",
                        label=f"{model} ({len(values)} documents)")
        ax.set_xlabel("mean across runs" if spread else "documents, sorted by value", fontsize=7)
        if i % 4 == 0:
            ax.set_ylabel("inter-run SD" if spread else "value", fontsize=7)
        ax.set_title(source, fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6, loc="upper right" if spread else "lower right")
    what = ("Each document's runs, one point per document: its mean across runs and its inter-run SD" if spread
            else "Each document's value, sorted (one run per model, so no spread between runs to show)")
    fig.suptitle(f"{what}\n({n_documents} documents: more than {MAX_DOCUMENTS_DRAWN} to draw one by one; "
                 f"each document's {'mean and SD are' if spread else 'value is'} in stats_documents.csv)",
                 fontsize=9)
    return _save(fig, path)


def plot_reliability(result: StatisticsResult, path: Path) -> Path:
    table = result.tables["stats_reliability"]
    table = table[table["data_source"].isin(result.focus)]
    models = list(dict.fromkeys(table["model"]))
    height = 0.32 * max(4, len(result.focus)) * max(1, len(models)) + 1.2
    fig = Figure(figsize=(7.5, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.33, right=0.97, top=1 - 0.45 / height, bottom=0.6 / height)
    labels, values, lows, highs = [], [], [], []
    for model in models:
        for _, row in table[table["model"] == model].iterrows():
            labels.append(row["data_source"] + (f" ({model})" if len(models) > 1 else ""))
            values.append(row["cronbach_alpha"])
            lows.append(row["alpha_ci_low"])
            highs.append(row["alpha_ci_high"])
    y = np.arange(len(labels))
    vals = np.array([np.nan if v is None else v for v in values], dtype=float)
    if len(vals) and not np.isnan(vals).all():
        ok = ~np.isnan(vals)
        err = np.vstack([vals - np.array(lows, dtype=float), np.array(highs, dtype=float) - vals])
        ax.barh(y[ok], vals[ok], color=["tab:green" if v >= 0.7 else "tab:orange" for v in vals[ok]])
        ax.errorbar(vals[ok], y[ok], xerr=err[:, ok], fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax.axvline(0.7, color="grey", ls="--", lw=1, label="0.70")
        for yi in y[~ok]:
            ax.text(0, yi, " not computable (see stats_reliability.note)", va="center", fontsize=7)
        low = float(np.nanmin(np.concatenate([vals, np.array(lows, dtype=float)])))
        ax.set_xlim(max(FLOOR, min(-0.1, low - 0.05)), 1.05)  # alpha has no lower bound; keep 0..1 readable
        if low < FLOOR:
            ax.set_xlabel(f"values below {FLOOR:g} run off the left edge (see stats_reliability.csv)", fontsize=7)
        ax.legend(fontsize=7, loc="lower right")
    else:
        reason = next((n for n in table["note"] if isinstance(n, str) and n), "no reliability was computed")
        ax.text(0.5, 0.5, f"not computable:\n{reason[:120]}", ha="center", va="center", fontsize=8,
                transform=ax.transAxes, wrap=True)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(PLOT_TITLES["reliability"], fontsize=10)
    return _save(fig, path)


def make_plots(results: Path, data: StatsData, result: StatisticsResult) -> list[Path]:
    """Draw every figure; returns their paths in the order the report shows them."""
    results.mkdir(parents=True, exist_ok=True)
    return [
        plot_scores_by_group(data, result, results / PLOT_FILES["scores_by_group"]),
        plot_runs_by_document(data, result, results / PLOT_FILES["runs_by_document"]),
        plot_reliability(result, results / PLOT_FILES["reliability"]),
    ]


def plot_titles() -> dict[str, str]:
    return {PLOT_FILES[k]: v for k, v in PLOT_TITLES.items()}
