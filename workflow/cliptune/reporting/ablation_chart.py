"""results/ablation_bar.png: Recall@K per variant with both kinds of uncertainty.

Black error bars: the bootstrap interval of the plotted run (evaluation-image sampling).
Hollow diamonds with grey bars: mean ± standard deviation over the variant's
``train.seeds`` runs (training randomness), drawn only for replicated variants.
A bar's change against the baseline is coloured only when the paired bootstrap interval
excludes zero; otherwise it is grey, however large it looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.io_utils import save_figure

DIRECTIONS = ("i2t", "t2i")
DIRECTION_NAMES = {"i2t": "image → text", "t2i": "text → image"}
BETTER, WORSE, UNSURE = "#1a7f37", "#cf222e", "#6e7781"


def _lookup(frame: pd.DataFrame, variant: str, column: str) -> float:
    if variant not in frame.index or column not in frame.columns:
        return math.nan
    return float(frame.at[variant, column])


def _delta_colour(paired: pd.DataFrame, variant: str, metric: str) -> str:
    row = paired[(paired["variant"] == variant) & (paired["metric"] == metric)]
    if row.empty or not bool(row["excludes_zero"].iloc[0]):
        return UNSURE
    return BETTER if float(row["diff"].iloc[0]) > 0 else WORSE


def _draw_variant(ax, x, width, i, name, d, ks, values, ci, seeds, paired, baseline, colour):
    """One variant's bars in one direction panel, with error bars and labels."""
    is_base = name == baseline
    vals = np.array([_lookup(values, name, f"{DIRECTIONS[d]}_R@{k}") for k in ks])
    lo = np.array([_lookup(ci, name, f"{DIRECTIONS[d]}_R@{k}_lo") for k in ks])
    hi = np.array([_lookup(ci, name, f"{DIRECTIONS[d]}_R@{k}_hi") for k in ks])
    pos = x + (i - (values.shape[0] - 1) / 2) * width
    label = f"{name} (baseline)" if is_base and name != "baseline" else name
    ax.bar(pos, vals, width * 0.95, color=colour, edgecolor="black" if is_base else "none",
           linewidth=1.4, label=label)
    ax.errorbar(pos, vals, yerr=[np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)], fmt="none",
                ecolor="black", elinewidth=1.0, capsize=2.5)
    tops = np.fmax(vals, hi)
    if _lookup(seeds, name, "n_seeds") > 1:
        mean = np.array([_lookup(seeds, name, f"{DIRECTIONS[d]}_R@{k}_seed_mean") for k in ks])
        std = np.array([_lookup(seeds, name, f"{DIRECTIONS[d]}_R@{k}_seed_std") for k in ks])
        ax.errorbar(pos + width * 0.25, mean, yerr=std, fmt="D", mfc="white", mec="black",
                    ms=4, ecolor="#57606a", elinewidth=1.6, capsize=0)
        tops = np.fmax(tops, mean + std)
    for j, v in enumerate(vals):
        if not np.isfinite(v):
            continue
        text, col = f"{v:.1f}", "black"
        if not is_base and baseline in values.index:
            metric = f"{DIRECTIONS[d]}_R@{ks[j]}"
            text += f" ({v - _lookup(values, baseline, metric):+.1f})"
            col = _delta_colour(paired, name, metric)
        ax.annotate(text, (pos[j], tops[j]), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", rotation=90, fontsize=8, color=col)
    return np.nanmax(tops) if np.isfinite(tops).any() else 0.0


def _legend(fig, axes, n_var: int, confidence: float, replicated: bool) -> None:
    from matplotlib.lines import Line2D

    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", marker="|", ms=8, lw=0))
    labels.append(f"{confidence:.0%} bootstrap interval (evaluation images)")
    if replicated:
        handles.append(Line2D([], [], color="#57606a", marker="D", mfc="white", mec="black"))
        labels.append("mean ± std over training seeds")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9,
               frameon=False, bbox_to_anchor=(0.5, 0.0))


def plot_ablation(values: pd.DataFrame, ci: pd.DataFrame, seeds: pd.DataFrame,
                  paired: pd.DataFrame, baseline: str, path: Path, ks: Sequence[int],
                  confidence: float) -> None:
    """Grouped bars: one panel per direction, one group per K, one bar per variant.

    ``values``: recall per variant (index) and ``{d}_R@{k}`` column; ``ci``: ``_lo``/``_hi``
    columns; ``seeds``: ``n_seeds`` and ``_seed_mean``/``_seed_std``; ``paired``: the
    long paired table (variant, metric, diff, excludes_zero).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = tuple(sorted(set(ks)))
    n_var = values.shape[0]
    width = 0.84 / max(1, n_var)
    x = np.arange(len(ks))
    fig_w = min(20.0, max(9.0, 0.5 * n_var * len(ks) + 2.5))
    fig, axes = plt.subplots(2, 1, figsize=(fig_w, 9.5), sharey=True)
    cmap = plt.get_cmap("tab10")
    top = 0.0
    for d, ax in enumerate(axes):
        for i, name in enumerate(values.index):
            top = max(top, _draw_variant(ax, x, width, i, name, d, ks, values, ci, seeds,
                                         paired, baseline, cmap(i % 10)))
        ax.set_xticks(x, [f"R@{k}" for k in ks], fontsize=11)
        ax.set_title(DIRECTION_NAMES[DIRECTIONS[d]], fontsize=12, loc="left")
        ax.set_ylabel("recall (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, min(105.0, top * 1.3 + 8) if top > 0 else 1.0)
    replicated = "n_seeds" in seeds.columns and bool((seeds["n_seeds"] > 1).any())
    _legend(fig, axes, n_var, confidence, replicated)
    ref = (f"in brackets: change vs {baseline}, points; coloured only where the paired "
           f"{confidence:.0%} interval excludes zero") if baseline in values.index else ""
    fig.suptitle("Retrieval Recall@K per variant" + (f"\n({ref})" if ref else ""), fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path)
