"""Figures: per-variant training curves (loss, accuracy, learning rate, temperature)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cliptune.files.atomic import save_figure  # noqa: E402


def _step_epochs(steps: pd.DataFrame, history: pd.DataFrame) -> pd.Series:
    """Optimiser steps on the epoch axis: step k of the run sits at k / steps-per-epoch,
    so per-step and per-epoch curves share one x axis (epoch 1 ends at x = 1)."""
    per_epoch = steps["step"].max() / max(1, history["epoch"].max())
    return steps["step"] / per_epoch


def _loss_panel(ax, history: pd.DataFrame, steps: pd.DataFrame, loss: str) -> None:
    if not steps.empty:
        ax.plot(_step_epochs(steps, history), steps["loss"], lw=0.6, alpha=0.45,
                color="tab:blue", label="train (per step)")
    ax.plot(history["epoch"], history["train_loss"], marker="o", color="tab:blue",
            label="train (epoch mean)")
    in_batch = history["train_loss_in_batch"].to_numpy(float)
    if not np.allclose(in_batch, history["train_loss"].to_numpy(float), equal_nan=True):
        # Mined negatives raise the training loss; validation has in-batch negatives only.
        ax.plot(history["epoch"], in_batch, marker="o", ls="--", color="tab:blue",
                label="train, in-batch negatives (as validation)")
    val = history.dropna(subset=["val_loss"])  # train.eval_every skips epochs
    ax.plot(val["epoch"], val["val_loss"], marker="s", color="tab:orange",
            label="validation")
    ax.set(xlabel="epoch", ylabel="training loss", title=f"loss: {loss}")
    ax.legend(fontsize=8)


def _accuracy_panel(ax, history: pd.DataFrame) -> None:
    for split, marker in (("train", "o"), ("val", "s")):
        for way, style in (("i2t", "-"), ("t2i", "--")):
            ax.plot(history["epoch"], history[f"{split}_acc_{way}"], marker=marker, ls=style,
                    label=f"{split} {way.replace('2', '→')}")
    ax.set(xlabel="epoch", ylabel="in-batch top-1 accuracy (%)", title="accuracy")
    ax.legend(fontsize=8)


def _lr_panel(ax, history: pd.DataFrame, steps: pd.DataFrame) -> None:
    if steps.empty:
        ax.plot(history["epoch"], history["lr"], marker="o", color="tab:green")
    else:
        ax.plot(_step_epochs(steps, history), steps["lr"], color="tab:green")
    ax.set(xlabel="epoch", ylabel="learning rate (per step)", title="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))


def plot_loss_curves(history: pd.DataFrame, path: Path, title: str,
                     steps: pd.DataFrame | None = None, *, loss: str,
                     temperature_used: bool = True):
    """history.csv (per epoch) and steps.csv (per optimiser step) -> one 4-panel figure
    (returned, already saved and closed, for inspection). ``loss``: the training loss in
    words (cliptune.reporting.variant_description.loss), the loss panel's title;
    ``temperature_used``: False for a loss without one (triplet), said on its panel."""
    steps = steps if steps is not None else pd.DataFrame(columns=["step", "loss", "lr"])
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9))
    if history.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "not trained (0 epochs)", ha="center", va="center")
            ax.set_axis_off()
    else:
        _loss_panel(axes[0], history, steps, loss)
        _accuracy_panel(axes[1], history)
        _lr_panel(axes[2], history, steps)
        axes[3].plot(history["epoch"], history["temperature"], marker="o", color="tab:red")
        axes[3].set(xlabel="epoch", ylabel="temperature (1 / logit scale)",
                    title="temperature" if temperature_used else "temperature (unused by the loss)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"training curves: {title}")
    fig.tight_layout()
    save_figure(fig, path)
    return fig
