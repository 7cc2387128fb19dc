"""Hard-negative index of the training set, rebuilt every ``refresh_epochs`` epochs.

Every training image and caption is embedded with the current model; for each
image the k most similar captions of *other* images, and for each caption the k
most similar other images, are kept (``strategy: semantic``), or k drawn uniformly
among those of other images (``strategy: random``, the control). Training batches then look their mined
negatives up by row (memory-bank negatives: no gradient through the bank).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from cliptune.data.pairs import PairData
from cliptune.runtime import embed_all

log = logging.getLogger(__name__)


@dataclass
class NegativeIndex:
    image_bank: torch.Tensor  # n_images × D (position in data.image_rows)
    text_bank: torch.Tensor  # n_captions × D
    hard_texts: torch.Tensor  # n_images × k caption rows
    hard_images: torch.Tensor  # n_captions × k image positions
    caption_image_pos: torch.Tensor  # n_captions: position of each caption's image

    def lookup(self, caption_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Mined (B×k×D texts for each image anchor, B×k×D images for each caption)."""
        rows = torch.from_numpy(np.asarray(caption_rows, dtype=np.int64)).to(self.hard_images.device)
        img_pos = self.caption_image_pos[rows]
        return self.text_bank[self.hard_texts[img_pos]], self.image_bank[self.hard_images[rows]]


def mine(query: torch.Tensor, bank: torch.Tensor, query_owner: torch.Tensor,
         bank_owner: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Top-k bank rows per query by cosine similarity, skipping rows of the same owner
    (an image's own captions are never its negatives)."""
    k = min(k, bank.shape[0] - 1)
    out = torch.empty(query.shape[0], k, dtype=torch.long, device=query.device)
    for start in range(0, query.shape[0], block):
        q = query[start:start + block]
        sims = q @ bank.T
        same = query_owner[start:start + block, None] == bank_owner[None, :]
        sims.masked_fill_(same, float("-inf"))
        out[start:start + block] = sims.topk(k, dim=1).indices
    return out


def draw_random(query_owner: torch.Tensor, bank_owner: torch.Tensor, k: int,
                generator: torch.Generator, max_rounds: int = 100) -> torch.Tensor:
    """k uniformly drawn bank rows per query, none of the query's own owner (with
    replacement: a row may repeat, as a random negative can in a batch)."""
    n = bank_owner.shape[0]
    if bool((bank_owner == bank_owner[0]).all()):
        raise ValueError("random negatives need captions of at least two images")
    out = torch.randint(n, (query_owner.shape[0], k), generator=generator)
    qo, bo = query_owner.cpu(), bank_owner.cpu()
    for _ in range(max_rounds):  # redraw the few rows that hit the query's own image
        same = bo[out] == qo[:, None]
        if not bool(same.any()):
            return out.to(query_owner.device)
        out[same] = torch.randint(n, (int(same.sum()),), generator=generator)
    raise RuntimeError(f"could not draw {k} negatives of other images in {max_rounds} rounds")


def _pick(strategy: str, query: torch.Tensor, bank: torch.Tensor, query_owner, bank_owner,
          k: int, generator: torch.Generator | None) -> torch.Tensor:
    if strategy == "semantic":
        return mine(query, bank, query_owner, bank_owner, k)
    if strategy == "random":
        return draw_random(query_owner, bank_owner, k, generator)
    raise ValueError(f"train.hard_negatives.strategy = {strategy!r}; use semantic or random")


@torch.no_grad()
def build_index(model, data: PairData, k: int, device, amp_dtype, batch_size: int = 256,
                strategy: str = "semantic", generator: torch.Generator | None = None,
                ) -> NegativeIndex:
    was_training = model.training
    model.eval()

    def encode(rows: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(data.pixels[rows]))
        if batch.is_floating_point():  # cached frozen-trunk features (feature_cache)
            return model.image.forward_features(batch.float().to(device)).float()
        return model.encode_images(batch).float()

    image_bank = embed_all(encode, (data.image_rows[s:s + batch_size]
                                    for s in range(0, data.n_images, batch_size)),
                           device, amp_dtype)
    if model.text_from_cache:
        text_bank = data.text.to(device).float()
    else:
        text_bank = model.encode_texts(data.captions["caption"].tolist(), batch_size).to(device)
    model.train(was_training)
    cap_pos = torch.from_numpy(np.searchsorted(data.image_rows, data.caption_image_row)).to(device)
    img_pos = torch.arange(data.n_images, device=device)
    hard_texts = _pick(strategy, image_bank, text_bank, img_pos, cap_pos, k, generator)
    hard_images = _pick(strategy, text_bank, image_bank, cap_pos, img_pos, k, generator)
    log.info("hard-negative index (%s): %d images, %d captions, k=%d", strategy, data.n_images,
             len(text_bank), hard_texts.shape[1])
    return NegativeIndex(image_bank, text_bank, hard_texts, hard_images, cap_pos)
