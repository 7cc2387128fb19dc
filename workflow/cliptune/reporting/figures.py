"""Report figures drawn from plain arrays: retrieval grids, zero-shot bars, a similarity
heatmap and the loss-curve overlay of all variants.

Every function takes already-computed numbers (scores, indices, uint8 images) so
it can be tested on tiny synthetic data; loading and scoring live in
``cliptune.reporting.variant_figures``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from cliptune.files.atomic import save_figure  # noqa: E402

GOOD, BAD, NEUTRAL = "#1a7f37", "#cf222e", "#8c959f"


def _wrap(text: str, width: int, max_lines: int = 4) -> str:
    lines = textwrap.wrap(str(text), width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 1)] + "…"
    return "\n".join(lines)


def _short(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(np.asarray(image), interpolation="lanczos" if image.shape[0] < 128 else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_text_to_image(queries: Sequence[str], top_indices: np.ndarray, top_scores: np.ndarray,
                       images, captions: Sequence[str], path: Path, title: str,
                       label: str = "its ground-truth caption") -> None:
    """One row per text query: its top-K images, their cosine similarity and each image's
    ground-truth caption. ``images[i]`` is an HxWx3 uint8 image, ``captions[i]`` its caption
    (or whatever ``label`` says it is, e.g. the file name of a searched image)."""
    n_q, k = top_indices.shape
    fig, axes = plt.subplots(n_q, k, figsize=(2.5 * k + 1.2, 3.1 * n_q), squeeze=False)
    for q, query in enumerate(queries):
        for j in range(k):
            ax = axes[q, j]
            i = int(top_indices[q, j])
            _show(ax, images[i])
            ax.set_title(f"#{j + 1}   similarity {top_scores[q, j]:.3f}", fontsize=9)
            ax.set_xlabel(_wrap(captions[i], 34, 3), fontsize=7, color="#333333")
        axes[q, 0].set_ylabel(_wrap(f"“{query}”", 18, 4), fontsize=11, fontweight="bold",
                              rotation=0, ha="right", va="center", labelpad=12)
    fig.suptitle(f"{title}\ntext query → top-{k} images (under each image: {label})",
                 fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)


def plot_queries_across_variants(queries: Sequence[str],
                                 cells: Mapping[str, Sequence[Sequence[tuple]]],
                                 path: Path) -> None:
    """Rows = text queries, column groups = variants; ``cells[variant][q]`` lists
    (image, cosine similarity) of the variant's top images for query q, best first."""
    names = list(cells)
    n_q, n_v = len(queries), len(names)
    k = max(1, max(len(cell) for v in names for cell in cells[v]))
    fig = plt.figure(figsize=(1.55 * k * n_v + 2.2, 1.75 * n_q + 1.3))
    grid = fig.add_gridspec(n_q, n_v, left=2.0 / (1.55 * k * n_v + 2.2), right=0.99,
                            wspace=0.12, hspace=0.3)
    for q, query in enumerate(queries):
        for v, name in enumerate(names):
            sub = grid[q, v].subgridspec(1, k, wspace=0.04)
            for j in range(k):
                ax = fig.add_subplot(sub[0, j])
                if j < len(cells[name][q]):
                    image, score = cells[name][q][j]
                    _show(ax, image)
                    ax.set_xlabel(f"#{j + 1}  {score:.3f}", fontsize=7)
                else:
                    ax.set_axis_off()
                if v == 0 and j == 0:
                    ax.set_ylabel(_wrap(f"“{query}”", 16, 4), fontsize=10, fontweight="bold",
                                  rotation=0, ha="right", va="center", labelpad=10)
    for v, name in enumerate(names):  # variant name centred over its column group
        box = grid[0, v].get_position(fig)
        fig.text((box.x0 + box.x1) / 2, box.y1 + 0.01, name, ha="center", va="bottom",
                 fontsize=11, fontweight="bold")
    fig.suptitle(f"the same text queries across variants: top-{k} images of each, ranked "
                 "by each variant's own towers [cosine similarity]", fontsize=12, y=1.0)
    save_figure(fig, path)


def plot_image_to_text(images, top_captions: Sequence[Sequence[str]], top_scores: np.ndarray,
                       correct: np.ndarray | None, path: Path, title: str,
                       names: Sequence[str] | None = None) -> None:
    """One row per image: the image beside its top-K captions, correct ones marked ✓.
    ``correct=None`` (images without captions of their own, e.g. a searched folder): no
    marks, and each image is labelled with its entry in ``names``."""
    n, k = np.asarray(top_scores).shape
    height = 2.4 * n + 0.6
    fig = plt.figure(figsize=(11, height))
    # About an inch for the two-line title whatever n is (the default top leaves 12%).
    grid = fig.add_gridspec(n, 2, width_ratios=[1, 4.2], wspace=0.05, hspace=0.25,
                            top=1 - 1.0 / height, bottom=0.3 / height)
    for r in range(n):
        ax_img = fig.add_subplot(grid[r, 0])
        _show(ax_img, images[r])
        if correct is None:
            ax_img.set_xlabel(_wrap(names[r] if names else "", 26, 2), fontsize=8)
        else:
            hits = int(np.asarray(correct[r]).sum())
            ax_img.set_xlabel(f"{hits}/{k} correct", fontsize=9, color=GOOD if hits else BAD)
        ax_txt = fig.add_subplot(grid[r, 1])
        ax_txt.set_axis_off()
        for j in range(k):
            ok = correct is not None and bool(correct[r][j])
            mark = "" if correct is None else ("✓ " if ok else "✗ ")
            colour = "#24292f" if correct is None else (GOOD if ok else BAD)
            ax_txt.text(0.0, 1 - (j + 0.5) / k,
                        f"{mark}{j + 1}.  [{top_scores[r][j]:.3f}]  "
                        f"{_short(top_captions[r][j], 105)}",
                        fontsize=9, va="center", ha="left", color=colour,
                        transform=ax_txt.transAxes)
    key = "" if correct is None else "✓ = one of the image's own captions; "
    fig.suptitle(f"{title}\nimage → top-{k} captions ({key}[cosine similarity])", fontsize=12)
    save_figure(fig, path)


def plot_zero_shot(images, classes: Sequence[str], probs: np.ndarray, path: Path, title: str,
                   labels: np.ndarray | None = None, top: int = 5,
                   subtitle: str = "") -> None:
    """Per image: horizontal bars of the ``top`` most probable classes (green = the class is
    in the image when ground truth is known)."""
    probs = np.asarray(probs, dtype=float)
    n = probs.shape[0]
    top = min(top, probs.shape[1])
    fig = plt.figure(figsize=(10, 2.3 * n + 0.8))
    grid = fig.add_gridspec(n, 2, width_ratios=[1, 2.6], wspace=0.45, hspace=0.35)
    for r in range(n):
        ax_img = fig.add_subplot(grid[r, 0])
        _show(ax_img, images[r])
        ax = fig.add_subplot(grid[r, 1])
        order = np.argsort(-probs[r], kind="stable")[:top][::-1]
        if labels is None:
            colours = ["#0969da"] * top
        else:
            colours = [GOOD if labels[r, c] else NEUTRAL for c in order]
        ax.barh(np.arange(top), probs[r, order], color=colours)
        ax.set_yticks(np.arange(top), [_short(classes[c], 28) for c in order], fontsize=9)
        ax.set_xlim(0, 1)
        for y, c in enumerate(order):
            ax.text(min(probs[r, c] + 0.01, 0.9), y, f"{probs[r, c]:.2f}", va="center",
                    fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        if r == n - 1:
            ax.set_xlabel("probability (softmax over all classes)")
        if labels is not None:
            truth = [classes[c] for c in np.flatnonzero(labels[r])]
            ax_img.set_xlabel(_wrap("true: " + (", ".join(truth) or "none"), 26, 3),
                              fontsize=8)
    legend = "" if labels is None else " · green = class present in the image"
    fig.suptitle(f"{title}\nzero-shot classification, prompt-template ensemble over "
                 f"{probs.shape[1]} classes{legend}" + (f"\n{subtitle}" if subtitle else ""),
                 fontsize=12, y=0.995, va="bottom")  # above the first row, never over it
    save_figure(fig, path)


def plot_similarity_heatmap(images, captions: Sequence[str], sims: np.ndarray, path: Path,
                            title: str) -> None:
    """Cosine similarity of n images (rows) and their first captions (columns); the
    matching pairs lie on the outlined diagonal, a row's best caption is dotted."""
    sims = np.asarray(sims, dtype=float)
    n = sims.shape[0]
    side = max(6.0, 0.62 * n + 3)
    fig, ax = plt.subplots(figsize=(side + 1.5, side + 1.2))
    im = ax.imshow(sims, cmap="viridis", aspect="equal")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cbar.set_label("cosine similarity")
    ax.set_xticks(np.arange(n), [_short(c, 38) for c in captions], rotation=60, ha="right",
                  fontsize=8)
    ax.set_yticks(np.arange(n), [""] * n)
    zoom = 0.5 * 64 / max(1, np.asarray(images[0]).shape[0]) * (0.9 if n > 12 else 1.0)
    for r in range(n):
        ax.add_artist(AnnotationBbox(OffsetImage(np.asarray(images[r]), zoom=zoom), (-0.5, r),
                                     xybox=(-22, 0), xycoords="data", boxcoords="offset points",
                                     frameon=False, annotation_clip=False))
        ax.add_patch(Rectangle((r - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="white", lw=2))
        best = int(np.argmax(sims[r]))
        ax.plot(best, r, "o", color=GOOD if best == r else BAD, ms=5, mec="white")
    ax.set_xlabel("caption (first caption of each image)")
    ax.set_ylabel("image", labelpad=42)
    ax.set_title(f"{title}\nimage-caption similarity (outlined: matching pairs; dot: best "
                 "caption per image, green if correct)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def plot_loss_overlay(histories: Mapping[str, pd.DataFrame], path: Path,
                      baseline: str | None = None) -> None:
    """Validation loss, training loss and temperature per epoch for every trained variant."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    cmap = plt.get_cmap("tab10")
    untrained = []
    for i, (name, hist) in enumerate(histories.items()):
        if hist.empty:
            untrained.append(name)
            continue
        style = {"color": cmap(i % 10), "lw": 2.4 if name == baseline else 1.6,
                 "marker": "o", "ms": 3.5}
        label = f"{name} (baseline)" if name == baseline and name != "baseline" else name
        val = hist.dropna(subset=["val_loss"])  # joined over epochs train.eval_every skips
        axes[0].plot(val["epoch"], val["val_loss"], label=label, **style)
        axes[1].plot(hist["epoch"], hist["train_loss"], label=label, **style)
        axes[2].plot(hist["epoch"], hist["temperature"], label=label, **style)
    titles = ("validation loss (lower is better)", "training loss", "temperature")
    ylabels = ("InfoNCE loss", "InfoNCE loss", "temperature = 1 / logit scale")
    for ax, t, y in zip(axes, titles, ylabels, strict=True):
        ax.set(title=t, xlabel="epoch", ylabel=y)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if any(not h.empty for h in histories.values()):
        axes[0].legend(fontsize=9)
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no variant was trained", ha="center", va="center",
                    transform=ax.transAxes)
    note = f"  (not shown, 0 epochs: {', '.join(untrained)})" if untrained else ""
    fig.suptitle(f"training curves of all variants{note}", fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)
