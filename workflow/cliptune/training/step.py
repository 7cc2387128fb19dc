"""One optimisation step: batch preparation, augmentation, and gradient accumulation
with cached features (open_clip's ``accum_freq``), so the negatives of every
micro-batch span the whole accumulated batch; then the optimiser step, skipped
when the loss or the gradient norm is NaN/Inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cliptune.data.loading.pairs import PairData
from cliptune.models.image_tower import to_unit_float
from cliptune.training.augment import augment_images
from cliptune.training.caption_variations import vary_captions
from cliptune.training.losses import LOSS_PARTS, batch_loss


@dataclass
class StepContext:
    model: torch.nn.Module
    tcfg: Mapping
    device: torch.device
    amp_dtype: torch.dtype | None
    image_gen: torch.Generator | None = None  # augmentation randomness (CPU generator)
    caption_rng: np.random.Generator | None = None
    # Distributed training: (img, txt) -> the global batch's (cliptune.training.distributed).
    gather: Callable | None = None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)


def prepare(ctx: StepContext, data: PairData, rows: np.ndarray, images: torch.Tensor,
            text_emb: torch.Tensor, train: bool) -> tuple:
    """One fetched (micro-)batch -> (model input, text side, is_features).

    Pixels become float NCHW in [0, 1] on the device, augmented when training;
    cached frozen-trunk features (cliptune.data.caches.features) pass through. The text
    side is the cached embeddings, or caption strings for a text tower that runs.
    """
    features = images.is_floating_point()
    if features:
        x = images.to(ctx.device, non_blocking=True)
    else:
        x = to_unit_float(images, ctx.device)
        aug = ctx.tcfg["augment"]
        if train and aug["enabled"]:
            x = augment_images(x, aug, ctx.image_gen)
        if ctx.tcfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
    if ctx.model.text_from_cache:
        return x, text_emb.to(ctx.device, non_blocking=True), features
    captions = data.captions["caption"].to_numpy()[rows].tolist()
    if train:
        captions = vary_captions(captions, rows, ctx.tcfg["caption_augment"],
                                 ctx.tcfg["seed"], ctx.caption_rng)
    return x, captions, features


def embed(ctx: StepContext, x: torch.Tensor, text, features: bool = False,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    with ctx.autocast():
        img = ctx.model.image.forward_features(x) if features else ctx.model.embed_images(x)
        txt = text if isinstance(text, torch.Tensor) else ctx.model.embed_texts(text)
    if ctx.gather is not None and ctx.model.training:
        return ctx.gather(img.float(), txt.float())
    return img.float(), txt.float()


@contextmanager
def running_stats_unchanged(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode still normalise with batch statistics, but their
    running statistics are put back afterwards: the no-grad feature pass of gradient
    accumulation must not count a micro-batch that the live pass counts again."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.training and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
             for m in bns]
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(bns, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


@torch.no_grad()
def in_batch_accuracy(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """The notebook's batch accuracy: the fraction of images whose most similar caption in
    the batch is their own (image->text), and of captions whose most similar image is
    theirs (text->image). Returns [i2t, t2i]."""
    sims = img.float() @ txt.float().T
    target = torch.arange(len(sims), device=sims.device)
    return torch.stack([(sims.argmax(1) == target).float().mean(),
                        (sims.argmax(0) == target).float().mean()])


def stacked_parts(parts: dict) -> torch.Tensor:
    """The loss parts in :data:`LOSS_PARTS` order, one float tensor (one host sync)."""
    return torch.stack([parts[k].float() for k in LOSS_PARTS])


def accumulated_backward(ctx: StepContext, micro: list, scaler, mined=None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward the loss of the whole accumulated batch; returns it (detached), the
    in-batch accuracy [i2t, t2i] over the whole accumulated batch and the loss parts
    (:data:`LOSS_PARTS` order) of the pass whose loss is returned.

    With one micro-batch this is a plain step. With several, a no-grad pass caches
    every micro-batch's features; then each micro-batch is re-embedded with grad and
    the loss over *all* features (its own live, the others cached) is backpropagated.
    Summed over micro-batches this is exactly the full-batch gradient.
    """
    model, tcfg = ctx.model, ctx.tcfg
    if len(micro) == 1:
        img, txt = embed(ctx, *micro[0])
        parts: dict = {}
        loss = batch_loss(tcfg, img, txt, model.scale(), mined, parts)
        scaler.scale(loss).backward()
        return loss.detach(), in_batch_accuracy(img, txt), stacked_parts(parts)
    with torch.no_grad(), running_stats_unchanged(model):
        cached = [embed(ctx, *m) for m in micro]
    loss = kept = None
    for j, m in enumerate(micro):
        img_j, txt_j = embed(ctx, *m)
        imgs = torch.cat([c[0] for c in cached[:j]] + [img_j] + [c[0] for c in cached[j + 1:]])
        txts = torch.cat([c[1] for c in cached[:j]] + [txt_j] + [c[1] for c in cached[j + 1:]])
        # The temperature enters every pass; let its gradient count once.
        scale = model.scale() if j == 0 else model.scale().detach()
        parts = {}
        loss_j = batch_loss(tcfg, imgs, txts, scale, mined, parts)
        scaler.scale(loss_j).backward()
        if loss is None or not torch.isfinite(loss_j):
            loss, kept = loss_j.detach(), parts
    acc = in_batch_accuracy(torch.cat([c[0] for c in cached]), torch.cat([c[1] for c in cached]))
    return loss, acc, stacked_parts(kept)


def apply_gradients(model, optimizer, scaler, loss: torch.Tensor, grad_clip: float | None,
                    ) -> tuple[float | None, str | None]:
    """Clip and take the optimiser step unless the loss or the gradient norm is NaN/Inf.

    Returns (gradient norm or None for a bad loss, the cause of a skipped step:
    ``"loss"``, ``"gradients"`` or None). A skipped step leaves the weights as they were."""
    if not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return None, "loss"
    scaler.unscale_(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf))
    cause = None
    if math.isfinite(norm):
        scaler.step(optimizer)
    else:
        cause = "gradients"
        optimizer.zero_grad(set_to_none=True)
    scaler.update()  # also after a bad norm: an fp16 overflow lowers the loss scale
    model.clamp_()
    return norm, cause
