"""Image-text losses, kept small and single-purpose (as in open_clip).

Inputs are L2-normalised embeddings where row i of each side is a positive pair
and every other row of the other side a negative.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch pairs."""
    logits = logit_scale * image_emb.float() @ text_emb.float().T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _off_diagonal(sims: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
    return sims.masked_fill(eye, float("-inf"))


def _triplet_one_way(sims: torch.Tensor, margin: float, mining: str) -> torch.Tensor:
    """Rows are anchors, columns candidates, the diagonal the positives."""
    pos = sims.diagonal()
    neg = _off_diagonal(sims)
    hardest = neg.max(dim=1).values
    if mining == "hardest":
        chosen = hardest
    elif mining == "semihard":
        # FaceNet: the hardest negative still less similar than the positive but within
        # the margin; anchors without one fall back to their hardest negative.
        semi = neg.masked_fill((neg >= pos[:, None]) | (neg <= (pos - margin)[:, None]),
                               float("-inf")).max(dim=1).values
        chosen = torch.where(torch.isfinite(semi), semi, hardest)
    else:
        raise ValueError(f"train.triplet.mining = {mining!r}; use hardest or semihard")
    return F.relu(margin + chosen - pos).mean()


def triplet_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, margin: float = 0.2,
                 mining: str = "hardest") -> torch.Tensor:
    """Bidirectional triplet (hinge) loss on cosine similarity with in-batch negatives."""
    sims = image_emb.float() @ text_emb.float().T
    return 0.5 * (_triplet_one_way(sims, margin, mining) + _triplet_one_way(sims.T, margin, mining))


# The parts of a loss logged beside it (steps.csv, history.csv), NaN where a loss has no
# such part: ``loss_infonce`` the InfoNCE term (with the mined negatives in training),
# ``loss_hinge`` the hinge term before ``hardest_weight`` (the triplet loss itself for
# ``triplet``), ``loss_in_batch`` the loss with in-batch negatives only, the form the
# validation loss has (it differs from the loss only for hard_negative with mined ones).
LOSS_PARTS = ("loss_infonce", "loss_hinge", "loss_in_batch")


def hard_negative_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                       logit_scale: torch.Tensor | float,
                       mined_texts: torch.Tensor | None = None,
                       mined_images: torch.Tensor | None = None,
                       hardest_weight: float = 1.0, margin: float = 0.2,
                       parts: dict | None = None) -> torch.Tensor:
    """InfoNCE whose negatives are the batch plus mined ones, plus a hinge on the
    hardest in-batch negative (VSE++ max violation).

    ``mined_texts`` (B×k×D): for image anchor i, captions of other images mined from
    the training-set index; ``mined_images`` (B×k×D) likewise for caption anchor i.
    Mined embeddings come from the index (no gradient): memory-bank negatives.
    ``parts``, if given, receives the detached :data:`LOSS_PARTS`.
    """
    img, txt = image_emb.float(), text_emb.float()
    sims = img @ txt.T
    i2t, t2i = sims, sims.T
    if mined_texts is not None:
        i2t = torch.cat([i2t, torch.einsum("bd,bkd->bk", img, mined_texts.float())], dim=1)
    if mined_images is not None:
        t2i = torch.cat([t2i, torch.einsum("bd,bkd->bk", txt, mined_images.float())], dim=1)
    labels = torch.arange(sims.shape[0], device=sims.device)
    loss = 0.5 * (F.cross_entropy(logit_scale * i2t, labels)
                  + F.cross_entropy(logit_scale * t2i, labels))
    if hardest_weight:
        hinge = triplet_loss(img, txt, margin, "hardest")
    else:  # logged only: no graph
        with torch.no_grad():
            hinge = triplet_loss(img, txt, margin, "hardest")
    if parts is not None:
        with torch.no_grad():
            in_batch = loss if mined_texts is None and mined_images is None else clip_loss(
                img.detach(), txt.detach(), logit_scale.detach()
                if isinstance(logit_scale, torch.Tensor) else logit_scale)
            parts.update(loss_infonce=loss.detach(), loss_hinge=hinge.detach(),
                         loss_in_batch=(in_batch + hardest_weight * hinge).detach())
    if hardest_weight:
        loss = loss + hardest_weight * hinge
    return loss


# The losses whose logits the temperature scales (``triplet`` compares raw cosines).
TEMPERATURE_LOSSES = ("infonce", "hard_negative")


def batch_loss(tcfg: Mapping, image_emb: torch.Tensor, text_emb: torch.Tensor,
               logit_scale: torch.Tensor, mined: tuple | None = None,
               parts: dict | None = None) -> torch.Tensor:
    """The loss ``train.loss`` names, on one (accumulated) batch; ``parts``, if given,
    receives its detached :data:`LOSS_PARTS` (NaN for a part the loss lacks)."""
    name = tcfg["loss"]
    nan = torch.tensor(float("nan"), device=image_emb.device)
    if name == "infonce":
        loss = clip_loss(image_emb, text_emb, logit_scale)
        if parts is not None:
            parts.update(loss_infonce=loss.detach(), loss_hinge=nan, loss_in_batch=loss.detach())
        return loss
    if name == "triplet":
        tri = tcfg["triplet"]
        loss = triplet_loss(image_emb, text_emb, tri["margin"], tri["mining"])
        if parts is not None:
            parts.update(loss_infonce=nan, loss_hinge=loss.detach(), loss_in_batch=loss.detach())
        return loss
    if name == "hard_negative":
        hn = tcfg["hard_negatives"]
        mined_texts, mined_images = mined if mined is not None else (None, None)
        return hard_negative_loss(image_emb, text_emb, logit_scale, mined_texts, mined_images,
                                  hn["hardest_weight"], hn["margin"], parts)
    raise ValueError(f"train.loss = {name!r}; use infonce, triplet or hard_negative")
