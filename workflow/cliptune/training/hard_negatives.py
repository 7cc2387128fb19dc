"""Hard-negative index of the training set, rebuilt every ``refresh_epochs`` epochs.

Every training image and caption is embedded with the current model; for each
image the k most similar captions of *other* images, and for each caption the k
most similar other images, are kept (``strategy: semantic``), or k drawn uniformly
among those of other images (``strategy: random``, the control). Training batches then look their mined
negatives up by row (memory-bank negatives: no gradient through the bank).

What is never a negative: an image's own captions, and a caption of another image whose
text is identical to one of its own (compared after lower-casing and collapsing
whitespace: COCO repeats short captions across images), in both directions. ``k`` larger
than the negatives some anchor has left (3 images with 5 captions each leave every image
10 captions of the others) stops with an error naming the largest possible ``k``; it is
not shrunk, so the semantic and random runs of one study always use the configured k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cliptune.data.loading.pairs import PairData
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


def _block_keys(forbidden: torch.Tensor | None, start: int, stop: int, n_bank: int):
    """Forbidden (query, bank) pairs of queries start..stop-1 as (local query, bank row)."""
    if forbidden is None or forbidden.numel() == 0:
        return None
    lo, hi = torch.searchsorted(forbidden, torch.tensor([start * n_bank, stop * n_bank],
                                                        device=forbidden.device))
    keys = forbidden[lo:hi]
    return (keys // n_bank - start, keys % n_bank) if keys.numel() else None


def check_k(k: int, query_owner: torch.Tensor, bank_owner: torch.Tensor,
            forbidden: torch.Tensor | None, what: str) -> None:
    """Every query must have at least k bank rows that may be its negatives."""
    n_bank = bank_owner.shape[0]
    own = torch.bincount(bank_owner, minlength=int(query_owner.max()) + 1)[query_owner]
    valid = n_bank - own
    if forbidden is not None and forbidden.numel():
        valid = valid - torch.bincount(forbidden // n_bank, minlength=query_owner.shape[0])
    fewest = int(valid.min())
    if k > fewest:
        worst = int(valid.argmin())
        raise ValueError(
            f"train.hard_negatives.k = {k}, but {what} {worst} has only {fewest} candidates "
            f"that are not its own (nor copies of its own captions) among {n_bank}; the mined "
            f"list would include its own pairs. Set train.hard_negatives.k <= {fewest} or "
            "train on more images")


def mine(query: torch.Tensor, bank: torch.Tensor, query_owner: torch.Tensor,
         bank_owner: torch.Tensor, k: int, block: int = 1024,
         forbidden: torch.Tensor | None = None, what: str = "query") -> torch.Tensor:
    """Top-k bank rows per query by cosine similarity, skipping rows of the same owner
    (an image's own captions are never its negatives) and the pairs ``forbidden`` lists
    (sorted keys ``query * len(bank) + bank row``: copies of an own caption)."""
    check_k(k, query_owner, bank_owner, forbidden, what)
    n_bank = bank.shape[0]
    out = torch.empty(query.shape[0], k, dtype=torch.long, device=query.device)
    for start in range(0, query.shape[0], block):
        stop = min(start + block, query.shape[0])
        sims = query[start:stop] @ bank.T
        same = query_owner[start:stop, None] == bank_owner[None, :]
        sims.masked_fill_(same, float("-inf"))
        pairs = _block_keys(forbidden, start, stop, n_bank)
        if pairs is not None:
            sims[pairs] = float("-inf")
        out[start:stop] = sims.topk(k, dim=1).indices
    return out


def draw_random(query_owner: torch.Tensor, bank_owner: torch.Tensor, k: int,
                generator: torch.Generator, max_rounds: int = 100,
                forbidden: torch.Tensor | None = None, what: str = "query") -> torch.Tensor:
    """k uniformly drawn bank rows per query, none of the query's own owner nor a
    ``forbidden`` pair (with replacement: a row may repeat, as a random negative can in a
    batch)."""
    n = bank_owner.shape[0]
    if bool((bank_owner == bank_owner[0]).all()):
        raise ValueError("random negatives need captions of at least two images")
    check_k(k, query_owner, bank_owner, forbidden, what)
    out = torch.randint(n, (query_owner.shape[0], k), generator=generator)
    qo, bo = query_owner.cpu(), bank_owner.cpu()
    banned = None if forbidden is None or forbidden.numel() == 0 else forbidden.cpu()
    rows = torch.arange(qo.shape[0])[:, None]
    for _ in range(max_rounds):  # redraw the few rows that hit the query's own image
        same = bo[out] == qo[:, None]
        if banned is not None:
            same |= torch.isin(rows * n + out, banned)
        if not bool(same.any()):
            return out.to(query_owner.device)
        out[same] = torch.randint(n, (int(same.sum()),), generator=generator)
    raise RuntimeError(f"could not draw {k} negatives of other images in {max_rounds} rounds")


def copied_caption_pairs(captions: list[str], caption_image: np.ndarray,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs that are no negatives because a caption's text also describes another image.

    Returns sorted int64 keys ``image * n_captions + caption`` (image -> caption bank) and
    ``caption * n_images + image`` (caption -> image bank) for every caption whose
    normalised text is also a caption of that other image.
    """
    n_cap = len(captions)
    n_img = int(caption_image.max()) + 1 if n_cap else 0
    norm = pd.Series(captions, dtype=object).map(lambda t: " ".join(str(t).lower().split()))
    frame = pd.DataFrame({"caption": np.arange(n_cap), "group": pd.factorize(norm)[0],
                          "image": np.asarray(caption_image, dtype=np.int64)})
    owners = frame[["group", "image"]].drop_duplicates()
    shared = owners[owners.duplicated("group", keep=False)]
    pairs = frame.merge(shared.rename(columns={"image": "other"}), on="group")
    pairs = pairs[pairs["other"] != pairs["image"]]
    img_keys = np.unique(pairs["other"].to_numpy(np.int64) * n_cap
                         + pairs["caption"].to_numpy(np.int64))
    cap_keys = np.unique(pairs["caption"].to_numpy(np.int64) * n_img
                         + pairs["other"].to_numpy(np.int64))
    return img_keys, cap_keys


def _pick(strategy: str, query: torch.Tensor, bank: torch.Tensor, query_owner, bank_owner,
          k: int, generator: torch.Generator | None, forbidden: torch.Tensor | None = None,
          what: str = "query") -> torch.Tensor:
    if strategy == "semantic":
        return mine(query, bank, query_owner, bank_owner, k, forbidden=forbidden, what=what)
    if strategy == "random":
        return draw_random(query_owner, bank_owner, k, generator, forbidden=forbidden,
                           what=what)
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
    img_keys, cap_keys = copied_caption_pairs(data.captions["caption"].tolist(),
                                              cap_pos.cpu().numpy())
    if img_keys.size:
        log.info("hard negatives: %d (caption, other image) pairs share a caption text; "
                 "they are never each other's negatives", len(cap_keys))
    hard_texts = _pick(strategy, image_bank, text_bank, img_pos, cap_pos, k, generator,
                       torch.from_numpy(img_keys).to(device), "training image")
    hard_images = _pick(strategy, text_bank, image_bank, cap_pos, img_pos, k, generator,
                        torch.from_numpy(cap_keys).to(device), "training caption")
    log.info("hard-negative index (%s): %d images, %d captions, k=%d", strategy, data.n_images,
             len(text_bank), hard_texts.shape[1])
    return NegativeIndex(image_bank, text_bank, hard_texts, hard_images, cap_pos)
