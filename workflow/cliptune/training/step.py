"""One optimisation step: batch preparation, augmentation, and gradient accumulation
with cached features (open_clip's ``accum_freq``), so the negatives of every
micro-batch span the whole accumulated batch; then the optimiser step, skipped
when the loss or the gradient norm is NaN/Inf. Under torchrun the model's forward
runs through DistributedDataParallel, which averages the gradients over ranks in the
backward pass of the last micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cliptune.data.loading.pairs import PairData
from cliptune.models.image_tower import to_unit_float
from cliptune.training.augment import augment_images
from cliptune.training.caption_variations import vary_captions
from cliptune.training.distributed import no_sync
from cliptune.training.losses import LOSS_PARTS, TEMPERATURE_LOSSES, batch_loss


class TrainForward(nn.Module):
    """The model's training forward as one module call: images (pixels, or cached
    frozen-trunk features) and the text side (cached embeddings pass through, captions
    run the text tower) -> their embeddings and the logit scale.

    Under torchrun DistributedDataParallel wraps this module
    (cliptune.training.distributed.data_parallel). DDP reduces the gradients that the
    backward of its own forward produces, so every path with trainable weights runs
    inside this one call. ``with_scale`` False returns the scale detached: a pass whose
    loss must not train the temperature leaves it out of the graph DDP waits on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, text, features: bool, with_scale: bool):
        img = self.model.image.forward_features(x) if features else self.model.embed_images(x)
        txt = text if isinstance(text, torch.Tensor) else self.model.embed_texts(text)
        scale = self.model.scale()
        return img, txt, scale if with_scale else scale.detach()


def unused_temperature(model: nn.Module, tcfg: Mapping) -> bool:
    """True when the temperature trains but the loss never uses it (``triplet`` compares
    raw cosines): its gradient stays None, so DDP must look for unused parameters."""
    return model.logit_scale.requires_grad and tcfg["loss"] not in TEMPERATURE_LOSSES


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
    # The model's TrainForward, wrapped in DistributedDataParallel under torchrun;
    # None: a plain TrainForward of ``model`` (one process).
    forward: nn.Module | None = None

    def __post_init__(self):
        if self.forward is None:
            self.forward = TrainForward(self.model)

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
    captions = data.caption_texts[rows].tolist()
    if train:
        captions = vary_captions(captions, rows, ctx.tcfg["caption_augment"],
                                 ctx.tcfg["seed"], ctx.caption_rng)
    return x, captions, features


def embed(ctx: StepContext, x: torch.Tensor, text, features: bool = False,
          with_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image embeddings, text embeddings, logit scale) of one (micro-)batch, gathered
    over ranks when training distributed; the scale carries its gradient only with
    ``with_scale``."""
    with ctx.autocast():
        img, txt, scale = ctx.forward(x, text, features, with_scale)
    if ctx.gather is not None and ctx.model.training:
        return (*ctx.gather(img.float(), txt.float()), scale)
    return img.float(), txt.float(), scale


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
    # The temperature enters every pass; its gradient counts once, in the last pass (the
    # one whose backward DDP synchronises), and not at all for a loss without it.
    temperature = tcfg["loss"] in TEMPERATURE_LOSSES
    if len(micro) == 1:
        img, txt, scale = embed(ctx, *micro[0], with_scale=temperature)
        parts: dict = {}
        loss = batch_loss(tcfg, img, txt, scale, mined, parts)
        scaler.scale(loss).backward()
        return loss.detach(), in_batch_accuracy(img, txt), stacked_parts(parts)
    with torch.no_grad(), running_stats_unchanged(model):
        cached = [embed(ctx, *m)[:2] for m in micro]
    loss = kept = None
    last = len(micro) - 1
    for j, m in enumerate(micro):
        # Gradients of all but the last pass stay on this rank and accumulate; the last
        # pass's backward averages their sum over ranks (DDP's no_sync).
        with no_sync(ctx.forward) if j < last else nullcontext():
            img_j, txt_j, scale = embed(ctx, *m, with_scale=temperature and j == last)
            imgs = torch.cat([c[0] for c in cached[:j]] + [img_j]
                             + [c[0] for c in cached[j + 1:]])
            txts = torch.cat([c[1] for c in cached[:j]] + [txt_j]
                             + [c[1] for c in cached[j + 1:]])
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
