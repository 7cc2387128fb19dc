"""Aggregate per-variant metrics into the ablation table and bar chart.

``results/ablation.csv`` always has the standard columns (R@1/5/10 both ways and
rsum over those six, the usual "rsum" of the retrieval literature), whatever
extra cut-offs ``eval.ks`` asks for; the chart shows the configured cut-offs.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.evaluation.retrieval_metrics import DEFAULT_KS, RSUM_KS
from cliptune.io_utils import atomic_path, save_figure

log = logging.getLogger(__name__)

DIRECTIONS = ("i2t", "t2i")
COLUMNS = ["variant"] + [f"{d}_R@{k}" for d in DIRECTIONS for k in RSUM_KS] + ["rsum"]
DIRECTION_NAMES = {"i2t": "image → text", "t2i": "text → image"}


def ablation_table(metric_files: dict[str, Path]) -> pd.DataFrame:
    rows = []
    for variant, path in metric_files.items():
        m = json.loads(Path(path).read_text())
        row = {"variant": variant}
        for c in COLUMNS[1:-1]:
            if c not in m:
                log.warning("%s has no %s (eval.ks lacks it); the table shows NaN", path, c)
            row[c] = float(m.get(c, math.nan))
        row["rsum"] = sum(row[c] for c in COLUMNS[1:-1])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _metric_matrix(metric_files: dict[str, Path], ks) -> tuple[list[str], np.ndarray]:
    """variants and recall values [variant, direction, k] (NaN where not computed)."""
    names, values = [], []
    for variant, path in metric_files.items():
        m = json.loads(Path(path).read_text())
        names.append(variant)
        values.append([[float(m.get(f"{d}_R@{k}", math.nan)) for k in ks] for d in DIRECTIONS])
    return names, np.asarray(values, dtype=float)


def plot_ablation(metric_files: dict[str, Path], baseline: str, path: Path, ks=DEFAULT_KS) -> None:
    """Grouped bars: one panel per direction, one group per K, one bar per variant; each
    bar is labelled with its recall, and non-baseline bars with the change vs baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = tuple(sorted(set(ks)))
    names, vals = _metric_matrix(metric_files, ks)
    n_var = len(names)
    base = vals[names.index(baseline)] if baseline in names else None
    width = 0.84 / max(1, n_var)
    x = np.arange(len(ks))
    fig_w = min(20.0, max(9.0, 0.5 * n_var * len(ks) + 2.5))
    fig, axes = plt.subplots(2, 1, figsize=(fig_w, 9.5), sharey=True)
    cmap = plt.get_cmap("tab10")
    top = np.nanmax(vals) if np.isfinite(vals).any() else 1.0
    for d, ax in enumerate(axes):
        for i, name in enumerate(names):
            is_base = name == baseline
            bars = ax.bar(x + (i - (n_var - 1) / 2) * width, vals[i, d], width * 0.95,
                          color=cmap(i % 10), edgecolor="black" if is_base else "none",
                          linewidth=1.4, label=f"{name} (baseline)" if is_base and name != "baseline" else name)
            for j, bar in enumerate(bars):
                v = vals[i, d, j]
                if not np.isfinite(v):
                    continue
                if base is None or is_base:
                    text, colour = f"{v:.1f}", "black"
                else:
                    delta = v - base[d, j]
                    text = f"{v:.1f} ({delta:+.1f})"
                    colour = "#1a7f37" if delta > 0 else ("#cf222e" if delta < 0 else "black")
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, v), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom",
                            rotation=90, fontsize=8, color=colour)
        ax.set_xticks(x, [f"R@{k}" for k in ks], fontsize=11)
        ax.set_title(DIRECTION_NAMES[DIRECTIONS[d]], fontsize=12, loc="left")
        ax.set_ylabel("recall (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, min(100.0, top * 1.3 + 8) if top > 0 else 1.0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(n_var, 6), fontsize=10,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    ref = f"in brackets: change vs {baseline}, points" if base is not None else ""
    fig.suptitle(f"Retrieval Recall@K per variant ({ref})" if ref else
                 "Retrieval Recall@K per variant", fontsize=13)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path)


def write_ablation(metric_files: dict[str, Path], baseline: str, csv_out: Path,
                   png_out: Path, ks=DEFAULT_KS) -> pd.DataFrame:
    table = ablation_table(metric_files)
    with atomic_path(csv_out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    plot_ablation(metric_files, baseline, png_out, ks)
    return table
