"""Figures: per-variant loss curves and the ablation bar chart."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cliptune.io_utils import save_figure  # noqa: E402


def plot_loss_curves(history: pd.DataFrame, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    if history.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "not trained (0 epochs)", ha="center", va="center")
            ax.set_axis_off()
    else:
        ax = axes[0]
        ax.plot(history["epoch"], history["train_loss"], marker="o", label="train")
        val = history.dropna(subset=["val_loss"])  # train.eval_every skips epochs
        ax.plot(val["epoch"], val["val_loss"], marker="s", label="validation")
        ax.set(xlabel="epoch", ylabel="InfoNCE loss", title="loss")
        ax.legend()
        axes[1].plot(history["epoch"], history["lr"], marker="o", color="tab:green")
        axes[1].set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="learning rate")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        axes[2].plot(history["epoch"], history["temperature"], marker="o", color="tab:red")
        axes[2].set(xlabel="epoch", ylabel="temperature (1 / logit scale)", title="temperature")
        for ax in axes:
            ax.grid(alpha=0.3)
    fig.suptitle(f"training curves: {title}")
    fig.tight_layout()
    save_figure(fig, path)
