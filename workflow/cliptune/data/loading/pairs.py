"""Image-caption pairs for one split: cached pixels, cached text embeddings, batch plans.

Batches are planned as index arrays and fetched with one fancy-index read of
the memory-mapped cache, so there is no per-sample Python work in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cliptune.data.caches.images import cache_rows, open_cache
from cliptune.data.caches.text import load_text_cache


@dataclass
class PairData:
    pixels: np.ndarray  # uint8 N×S×S×3, memory-mapped
    captions: pd.DataFrame  # usable captions, Parquet order
    text: torch.Tensor  # M×D, row m = captions row m
    caption_image_row: np.ndarray  # M: row of ``pixels`` holding caption m's image
    image_rows: np.ndarray  # usable rows of ``pixels``
    image_ids: np.ndarray  # image id of each entry of image_rows

    @classmethod
    def load(cls, captions_parquet: Path, text_cache: Path, image_array: Path,
             image_index: Path) -> PairData:
        captions = pd.read_parquet(captions_parquet)
        pixels, index = open_cache(image_array, image_index)
        row_of = cache_rows(index[index["ok"]])
        captions = captions[captions["image_id"].isin(row_of.index)].reset_index(drop=True)
        if captions.empty:
            raise ValueError(f"{captions_parquet}: no caption has a usable image")
        text = load_text_cache(text_cache, captions)
        cap_rows = row_of.loc[captions["image_id"].to_numpy()].to_numpy(np.int64)
        image_rows = np.unique(cap_rows)
        image_ids = index.set_index("row").loc[image_rows, "image_id"].to_numpy(np.int64)
        return cls(pixels, captions, text, cap_rows, image_rows, image_ids)

    @property
    def n_images(self) -> int:
        return len(self.image_rows)

    @cached_property
    def caption_texts(self) -> np.ndarray:
        """The caption strings as one object array, built once: a training step that
        tokenizes indexes it instead of converting the (Arrow-backed) column each time."""
        return self.captions["caption"].to_numpy(dtype=object)

    @cached_property
    def caption_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, starts, counts): ``order[starts[i]:starts[i] + counts[i]]`` are the
        caption rows of image_rows[i]. Computed once; samplers index it vectorised."""
        order = np.argsort(self.caption_image_row, kind="stable")
        sorted_rows = self.caption_image_row[order]
        starts = np.searchsorted(sorted_rows, self.image_rows, side="left")
        ends = np.searchsorted(sorted_rows, self.image_rows, side="right")
        return order, starts, ends - starts

    def fetch(self, caption_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC images and text embeddings for a batch of caption rows."""
        img_rows = self.caption_image_row[caption_rows]
        # Sorted reads are sequential on the memory map; undo the sort afterwards.
        order = np.argsort(img_rows, kind="stable")
        pixels = np.empty((len(img_rows), *self.pixels.shape[1:]), dtype=np.uint8)
        pixels[order] = self.pixels[img_rows[order]]
        return torch.from_numpy(pixels), self.text[torch.from_numpy(caption_rows)]


def plan_epoch(data: PairData, batch_size: int, sampler: str, seed: int, epoch: int,
               drop_last: bool = True) -> list[np.ndarray]:
    """Caption rows for each batch of one epoch; deterministic in (seed, epoch).

    ``one_caption_per_image`` draws one random caption of each image per epoch,
    so an image's other captions never sit in the batch as false negatives.
    ``random_captions`` draws as many caption rows uniformly (same epoch size),
    which can put two captions of one image in a batch.
    """
    rng = np.random.default_rng([seed, epoch])
    if sampler == "one_caption_per_image":
        order, starts, counts = data.caption_groups
        picks = order[starts + rng.integers(0, counts)]  # one draw per image, no Python loop
        rows = picks[rng.permutation(len(picks))]
    elif sampler == "random_captions":
        rows = rng.choice(len(data.captions), size=data.n_images, replace=False)
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    n_full = len(rows) // batch_size
    batches = [rows[i * batch_size:(i + 1) * batch_size] for i in range(n_full)]
    rest = rows[n_full * batch_size:]
    if not drop_last and len(rest) >= 2:
        batches.append(rest)
    return batches


def validation_batches(data: PairData, batch_size: int) -> list[np.ndarray]:
    """First caption of every image, in a fixed order: comparable across epochs."""
    order, starts, _ = data.caption_groups
    firsts = order[starts]
    batches = [firsts[i:i + batch_size] for i in range(0, len(firsts), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = np.concatenate([batches[-2], batches.pop()])
    return batches
