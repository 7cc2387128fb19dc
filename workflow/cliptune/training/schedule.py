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


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 head_lr: float | None = None) -> list[dict]:
    """One named optimiser group per (role, decay) of the trainable parameters.

    The model names each parameter's role (``param_role``: e.g. trunk, head, lora,
    text_tower, temperature). Roles in ``model.NEW_ROLES`` (freshly initialised modules:
    the ResNet pool + head and its temperature) train at ``head_lr`` when it is set;
    everything else, LoRA adapters included (they adapt a pretrained tower), at ``lr``.
    Biases, norms and the temperature get no weight decay (as CLIP/open_clip).
    """
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            role = model.param_role(name)
            no_decay = p.ndim < 2 or role == "temperature"
            groups.setdefault((role, no_decay), []).append(p)
    if head_lr is not None and not any(role in model.NEW_ROLES for role, _ in groups):
        raise ValueError(
            f"train.head_lr = {head_lr} applies to no trainable parameter of this model "
            f"(trainable: {sorted({role for role, _ in groups})}; only "
            f"{list(model.NEW_ROLES) or 'nothing'} would use it). Set train.head_lr: null "
            "and put the rate in train.lr (LoRA adapters and CLIP towers train at train.lr)")
    out = []
    for (role, no_decay), params in groups.items():  # module order
        new = head_lr is not None and role in model.NEW_ROLES
        suffix = ".no_decay" if no_decay and role != "temperature" else ""
        out.append({"name": role + suffix, "params": params, "lr": head_lr if new else lr,
                    "weight_decay": 0.0 if no_decay else weight_decay, "new": new})
    # train.lr groups first: the logs' "lr" column is group 0's rate.
    out.sort(key=lambda g: g.pop("new"))
    return out
