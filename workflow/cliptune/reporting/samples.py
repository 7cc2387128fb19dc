"""samples.png: random image-caption pairs, read back from the caches.

The pixels come from the image cache and the text from the captions Parquet
through the index's image ids, so the grid shows exactly what training sees:
a caption under the wrong picture here means the join is broken, and a
sideways or colour-swapped picture means decoding is.
"""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.data.caches.images import open_cache
from cliptune.files.atomic import save_figure

log = logging.getLogger(__name__)


def pick_samples(captions: pd.DataFrame, index: pd.DataFrame, count: int,
                 seed: int) -> list[tuple[int, str, str]]:
    """(cache row, caption, file name) of ``count`` random usable images, one caption each."""
    good = index[index["ok"]]
    good = good[good["image_id"].isin(captions["image_id"])]
    rng = np.random.default_rng(seed)
    chosen = good.iloc[np.sort(rng.choice(len(good), size=min(count, len(good)),
                                          replace=False))]
    by_image = captions.groupby("image_id")["caption"]
    out = []
    for rec in chosen.itertuples():
        texts = by_image.get_group(rec.image_id).astype(str).tolist()
        out.append((int(rec.row), texts[int(rng.integers(len(texts)))], str(rec.file_name)))
    return out


def write_samples(captions_parquet: Path, array: Path, index_parquet: Path, out: Path,
                  count: int = 16, seed: int = 0, title: str = "") -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captions = pd.read_parquet(captions_parquet, columns=["image_id", "caption"])
    pixels, index = open_cache(array, index_parquet)
    picks = pick_samples(captions, index, count, seed)
    cols = min(4, max(1, len(picks)))
    rows = max(1, math.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (row, caption, name) in zip(axes.flat, picks, strict=False):
        ax.imshow(pixels[row], interpolation="lanczos")
        lines = textwrap.wrap(caption, 38) or ["(empty caption)"]
        if len(lines) > 4:  # keep every tile the same height
            lines = lines[:3] + [textwrap.shorten(" ".join(lines[3:]), 37, placeholder=" …")]
        ax.set_title("\n".join([Path(name).name, *lines]), fontsize=7, loc="left")
    if not picks:
        axes.flat[0].text(0.5, 0.5, "no usable image", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    save_figure(fig, out, dpi=110)
    log.info("samples grid of %d image-caption pairs -> %s", len(picks), out)
    return len(picks)
