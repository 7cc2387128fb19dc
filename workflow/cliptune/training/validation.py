"""Validation of the model being trained: the training loss on the validation split and
its retrieval R@1 (one caption per image), which ``train.monitor`` can select by."""

from __future__ import annotations

import logging
import math

import torch

from cliptune.data.loading.pairs import PairData, validation_batches
from cliptune.retrieval import mean_r1
from cliptune.training.losses import LOSS_PARTS, batch_loss
from cliptune.training.step import StepContext, embed, in_batch_accuracy, prepare, stacked_parts

log = logging.getLogger(__name__)


@torch.no_grad()
def validate(ctx: StepContext, data: PairData, batch_size: int,
             max_images: int | None = None) -> dict[str, float]:
    """Validation loss (the training loss without mined negatives) and its InfoNCE and
    hinge parts (``val_loss_infonce``, ``val_loss_hinge``: NaN where the loss has none),
    in-batch top-1 accuracy both ways (the notebook's "Val Acc", batches of the training size, in %)
    and recall: the mean of image->text and text->image R@1 over the first caption of
    each image against the whole split."""
    ctx.model.eval()
    total, count, images, texts = 0.0, 0, [], []
    correct = torch.zeros(2)
    parts_total = torch.zeros(len(LOSS_PARTS), dtype=torch.float64)
    for rows in validation_batches(data, batch_size):
        if max_images and count >= max_images:
            break
        img, txt, scale = embed(ctx, *prepare(ctx, data, rows, *data.fetch(rows), train=False))
        parts: dict = {}
        total += float(batch_loss(ctx.tcfg, img, txt, scale, parts=parts)) * len(rows)
        parts_total += stacked_parts(parts).double().cpu() * len(rows)
        correct += in_batch_accuracy(img, txt).cpu() * len(rows)
        count += len(rows)
        images.append(img)
        texts.append(txt)
    img, txt = torch.cat(images), torch.cat(texts)
    acc = (100.0 * correct / max(1, count)).tolist()
    mean_parts = dict(zip(LOSS_PARTS, (parts_total / max(1, count)).tolist(), strict=True))
    out = {"val_loss": total / max(1, count), "val_acc_i2t": acc[0], "val_acc_t2i": acc[1],
           "val_loss_infonce": mean_parts["loss_infonce"],
           "val_loss_hinge": mean_parts["loss_hinge"]}
    if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
        # Ranks of NaN scores mean nothing; the loss is NaN too, so the epoch is not "best".
        log.warning("validation embeddings are not finite: recall reported as NaN")
        return {**out, "val_recall": math.nan}
    return {**out, "val_recall": mean_r1(img, txt)}


def validation_images(data: PairData, tcfg: dict) -> int:
    """Images :func:`validate` scores: whole batches until train.val_max_images is reached."""
    used, cap = 0, tcfg["val_max_images"]
    for rows in validation_batches(data, tcfg["batch_size"] * tcfg["accum_steps"]):
        if cap and used >= cap:
            break
        used += len(rows)
    return used
