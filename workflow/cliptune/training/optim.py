"""The optimiser and warmup length a variant's ``train`` section asks for."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from cliptune.training.schedule import param_groups

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, tcfg: Mapping) -> torch.optim.Optimizer:
    """``train.optimizer``: adamw (decoupled decay, the lab's), adam (decay as an L2
    penalty) or sgd with ``train.momentum``. Biases, norms and the temperature get no
    weight decay in every case (cliptune.training.schedule.param_groups)."""
    # A zero-epoch variant (zero-shot row) trains nothing: head_lr has no role to play.
    head_lr = tcfg["head_lr"] if tcfg["epochs"] > 0 else None
    groups = param_groups(model, tcfg["weight_decay"], tcfg["lr"], head_lr)
    if not any(p.numel() for g in groups for p in g["params"]):
        if tcfg["epochs"] == 0:
            # A zero-epoch row (the zero-shot CLIP row) never steps; torch still wants a
            # parameter to hold, so it gets an empty one and the report shows 0 trained.
            groups = [{"name": "none (0 epochs)", "weight_decay": 0.0, "lr": tcfg["lr"],
                       "params": [torch.nn.Parameter(torch.empty(0), requires_grad=False)]}]
        else:
            # torch would only say "empty parameter list"; name the settings that froze it.
            raise ValueError(
                "the variant has no trainable parameter (every tower locked, no LoRA and "
                "train.learnable_temperature: false); unlock a tower (model.clip.lock_*), "
                "add LoRA, or keep train.learnable_temperature: true")
    name = tcfg["optimizer"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=tcfg["lr"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=tcfg["lr"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=tcfg["lr"], momentum=tcfg["momentum"])
    raise ValueError(f"train.optimizer = {name!r} is not supported; use adamw, adam or sgd")


def describe_param_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """What train_report.json lists: each group's name, size, configured (peak) learning
    rate and weight decay."""
    return [{"name": g["name"], "parameters": sum(p.numel() for p in g["params"]),
             "lr": g.get("initial_lr", g["lr"]), "weight_decay": g["weight_decay"]}
            for g in optimizer.param_groups]


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
