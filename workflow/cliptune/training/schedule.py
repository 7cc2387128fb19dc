"""Learning-rate schedule: linear warmup then cosine decay, per optimiser step."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float | None = None,
                 head_lr: float | None = None) -> list[dict]:
    """No weight decay on biases, norms and the temperature (as CLIP/open_clip).

    With ``head_lr``, parameters the model calls new (``is_new_parameter``: heads,
    attention pool, LoRA adapters, temperature) get their own learning rate while
    pretrained weights keep ``lr``. Empty groups are dropped.
    """
    is_new = getattr(model, "is_new_parameter", lambda name: False)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "logit_scale" in name
        new = head_lr is not None and is_new(name)
        groups.setdefault((no_decay, new), []).append(p)
    out = []
    for (no_decay, new), params in sorted(groups.items()):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if new:
            group["lr"] = head_lr
        elif lr is not None:
            group["lr"] = lr
        out.append(group)
    return out
