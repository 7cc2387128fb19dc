"""Aggregate per-variant metrics into the ablation table and bar chart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.io_utils import atomic_path, save_figure

KS = (1, 5, 10)
COLUMNS = ["variant"] + [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in KS] + ["rsum"]


def ablation_table(metric_files: dict[str, Path]) -> pd.DataFrame:
    rows = []
    for variant, path in metric_files.items():
        m = json.loads(Path(path).read_text())
        rows.append({"variant": variant, **{c: m[c] for c in COLUMNS[1:]}})
    return pd.DataFrame(rows, columns=COLUMNS)


def plot_ablation(table: pd.DataFrame, baseline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = COLUMNS[1:-1]
    n_var = len(table)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(metrics) * max(1, n_var) / 3), 5.2))
    width = 0.8 / max(1, n_var)
    x = np.arange(len(metrics))
    base = table.set_index("variant").loc[baseline, metrics] if baseline in set(
        table["variant"]) else None
    cmap = plt.get_cmap("tab10")
    for i, rec in enumerate(table.itertuples(index=False)):
        values = np.array([getattr(rec, "_" + str(j + 1)) for j in range(len(metrics))],
                          dtype=float)
        bars = ax.bar(x + (i - (n_var - 1) / 2) * width, values, width,
                      label=f"{rec.variant} (rsum {rec.rsum:.1f})", color=cmap(i % 10),
                      edgecolor="black" if rec.variant == baseline else None)
        if base is not None and rec.variant != baseline:
            for bar, v, b in zip(bars, values, base.to_numpy(float), strict=True):
                ax.annotate(f"{v - b:+.1f}", (bar.get_x() + bar.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=7, rotation=90,
                            xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [m.replace("i2t_", "image→text ").replace("t2i_", "text→image ")
                      for m in metrics], rotation=15)
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, min(100, max(5.0, float(table[metrics].to_numpy().max()) * 1.25)))
    ax.set_title(f"Retrieval Recall@K per variant (labels: change vs {baseline})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def write_ablation(metric_files: dict[str, Path], baseline: str, csv_out: Path,
                   png_out: Path) -> pd.DataFrame:
    table = ablation_table(metric_files)
    with atomic_path(csv_out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    plot_ablation(table, baseline, png_out)
    return table
