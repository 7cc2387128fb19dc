"""A fresh training state for one variant: the model on its device (channels-last,
rank 0's weights on every rank, optionally compiled), AdamW over its parameter
groups, the warmup-cosine schedule and the fp16 grad scaler."""

from __future__ import annotations

import logging

import torch

from cliptune.data.caches.features import check_features_match
from cliptune.data.loading.pairs import PairData
from cliptune.models.factory import build_model
from cliptune.models.image_tower import ClipHead
from cliptune.runtime import autocast_dtype
from cliptune.training.checkpoint import Best, TrainState, state_dict_cpu
from cliptune.training.distributed import DistContext, prepare_model
from cliptune.training.optim import build_optimizer
from cliptune.training.schedule import warmup_cosine, warmup_steps

log = logging.getLogger(__name__)


def _maybe_compile(model, enabled: bool, device: torch.device) -> None:
    """torch.compile the towers in place (state_dict keys unchanged); CUDA only, because
    on the CPU it needs a C++ toolchain and buys little for these models."""
    if not enabled:
        return
    if device.type != "cuda":
        log.info("train.compile: skipped on %s (CUDA only)", device)
        return
    towers = ([model.image] if isinstance(model, ClipHead)
              else [model.clip.vision_model, model.clip.text_model])
    for tower in towers:
        tower.compile()


def steps_per_epoch(tcfg: dict, n_images: int, world: int) -> int:
    if tcfg["batch_size"] % world:
        raise ValueError(f"train.batch_size = {tcfg['batch_size']} is the global (micro-)batch "
                         f"and must be a multiple of the {world} processes "
                         "(train.devices x train.nodes)")
    # batch_size is the micro-batch; accum_steps micro-batches make one optimiser step
    # whose negatives span all of them.
    per_step = tcfg["batch_size"] * tcfg["accum_steps"]
    if tcfg["epochs"] > 0 and n_images < per_step:
        raise ValueError(
            f"train.batch_size x accum_steps = {per_step} is larger than the "
            f"{n_images} training images; lower the batch size or accum_steps")
    return n_images // per_step


def build_state(variant: dict, train_data: PairData, val_data: PairData,
                dist_ctx: DistContext) -> TrainState:
    """A fresh model on the device with its optimiser, LR schedule and grad scaler."""
    tcfg, device = variant["train"], dist_ctx.device
    model = build_model(variant, train_data.text.shape[1]).to(device)
    if isinstance(model, ClipHead) and tcfg["channels_last"]:
        model.image.trunk.to(memory_format=torch.channels_last)
    check_features_match(model, train_data, val_data)
    prepare_model(model, dist_ctx)
    _maybe_compile(model, tcfg["compile"], device)
    total = steps_per_epoch(tcfg, train_data.n_images, dist_ctx.world_size) * tcfg["epochs"]
    optimizer = build_optimizer(model, tcfg)
    scheduler = warmup_cosine(optimizer, total, warmup_steps(tcfg, total))
    amp = autocast_dtype(tcfg["precision"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the report's peak is this run's
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    return TrainState(model, optimizer, scheduler, scaler,
                      best=Best(state=state_dict_cpu(model)))


