"""Learning-rate schedule: linear warmup (its length: :func:`warmup_steps`) then cosine
decay, per optimiser step."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch

log = logging.getLogger(__name__)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps(tcfg: Mapping, total_steps: int) -> int:
    """``train.warmup_steps`` when set (the handout's 500), else ``warmup_fraction`` of
    all optimiser steps."""
    steps = tcfg["warmup_steps"]
    if steps is None:
        return int(tcfg["warmup_fraction"] * total_steps)
    if total_steps and steps >= total_steps:
        log.warning("train.warmup_steps = %d >= the run's %d optimiser steps: the learning "
                    "rate never reaches train.lr; lower warmup_steps or use warmup_fraction",
                    steps, total_steps)
    return int(steps)
