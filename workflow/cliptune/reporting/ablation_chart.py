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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.files.atomic import save_figure

DIRECTIONS = ("i2t", "t2i")
DIRECTION_NAMES = {"i2t": "image → text", "t2i": "text → image"}
BETTER, WORSE, UNSURE = "#1a7f37", "#cf222e", "#6e7781"


@dataclass(frozen=True)
class ChartData:
    """What the chart draws. ``values``: recall per variant (index) and ``{d}_R@{k}``
    column; ``ci``: ``_lo``/``_hi`` columns; ``seeds``: ``n_seeds`` and
    ``_seed_mean``/``_seed_std``; ``paired``: the long paired table."""

    values: pd.DataFrame
    ci: pd.DataFrame
    seeds: pd.DataFrame
    paired: pd.DataFrame
    baseline: str
    ks: tuple[int, ...]

    def column(self, frame: pd.DataFrame, variant: str, d: int, suffix: str = "") -> np.ndarray:
        """[len(ks)] of ``{direction}_R@{k}{suffix}`` for one variant (NaN where absent)."""
        cols = [f"{DIRECTIONS[d]}_R@{k}{suffix}" for k in self.ks]
        return np.array([float(frame.at[variant, c]) if variant in frame.index
                         and c in frame.columns else math.nan for c in cols])

    def n_seeds(self, variant: str) -> int:
        ok = variant in self.seeds.index and "n_seeds" in self.seeds.columns
        return int(self.seeds.at[variant, "n_seeds"]) if ok else 1

    def delta_colour(self, variant: str, metric: str) -> str:
        p = self.paired
        row = p[(p["variant"] == variant) & (p["metric"] == metric)]
        if row.empty or not bool(row["excludes_zero"].iloc[0]):
            return UNSURE
        return BETTER if float(row["diff"].iloc[0]) > 0 else WORSE


def _labels(ax, data: ChartData, name: str, d: int, pos, vals, tops) -> None:
    """Each bar's recall and, for non-baseline bars, its change vs the baseline."""
    base = data.column(data.values, data.baseline, d)
    for j, v in enumerate(vals):
        if not np.isfinite(v):
            continue
        text, col = f"{v:.1f}", "black"
        if name != data.baseline and np.isfinite(base[j]):
            text += f" ({v - base[j]:+.1f})"
            col = data.delta_colour(name, f"{DIRECTIONS[d]}_R@{data.ks[j]}")
        ax.annotate(text, (pos[j], tops[j]), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", rotation=90, fontsize=8, color=col)


def _draw_variant(ax, data: ChartData, i: int, name: str, d: int, width: float, colour) -> float:
    """One variant's bars in one direction panel, with both error bars and labels;
    returns the highest drawn point."""
    is_base = name == data.baseline
    vals = data.column(data.values, name, d)
    lo, hi = data.column(data.ci, name, d, "_lo"), data.column(data.ci, name, d, "_hi")
    pos = np.arange(len(data.ks)) + (i - (data.values.shape[0] - 1) / 2) * width
    label = f"{name} (baseline)" if is_base and name != "baseline" else name
    ax.bar(pos, vals, width * 0.95, color=colour, edgecolor="black" if is_base else "none",
           linewidth=1.4, label=label)
    ax.errorbar(pos, vals, yerr=[np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)], fmt="none",
                ecolor="black", elinewidth=1.0, capsize=2.5)
    tops = np.fmax(vals, hi)
    if data.n_seeds(name) > 1:  # training randomness beside the evaluation interval
        mean = data.column(data.seeds, name, d, "_seed_mean")
        std = data.column(data.seeds, name, d, "_seed_std")
        ax.errorbar(pos + width * 0.25, mean, yerr=std, fmt="D", mfc="white", mec="black",
                    ms=4, ecolor="#57606a", elinewidth=1.6, capsize=0)
        tops = np.fmax(tops, mean + std)
    _labels(ax, data, name, d, pos, vals, tops)
    return float(np.nanmax(tops)) if np.isfinite(tops).any() else 0.0


def _legend(fig, axes, confidence: float, replicated: bool) -> None:
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
    """Grouped bars: one panel per direction, one group per K, one bar per variant
    (frames as in :class:`ChartData`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = tuple(sorted(set(ks)))
    data = ChartData(values, ci, seeds, paired, baseline, ks)
    n_var = values.shape[0]
    width = 0.84 / max(1, n_var)
    x = np.arange(len(ks))
    fig_w = min(20.0, max(9.0, 0.5 * n_var * len(ks) + 2.5))
    fig, axes = plt.subplots(2, 1, figsize=(fig_w, 9.5), sharey=True)
    cmap = plt.get_cmap("tab10")
    top = 0.0
    for d, ax in enumerate(axes):
        for i, name in enumerate(values.index):
            top = max(top, _draw_variant(ax, data, i, name, d, width, cmap(i % 10)))
        ax.set_xticks(x, [f"R@{k}" for k in ks], fontsize=11)
        ax.set_title(DIRECTION_NAMES[DIRECTIONS[d]], fontsize=12, loc="left")
        ax.set_ylabel("recall (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, min(105.0, top * 1.3 + 8) if top > 0 else 1.0)
    replicated = any(data.n_seeds(v) > 1 for v in values.index)
    _legend(fig, axes, confidence, replicated)
    ref = (f"in brackets: change vs {baseline}, points; coloured only where the paired "
           f"{confidence:.0%} interval excludes zero") if baseline in values.index else ""
    fig.suptitle("Retrieval Recall@K per variant" + (f"\n({ref})" if ref else ""), fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path)
