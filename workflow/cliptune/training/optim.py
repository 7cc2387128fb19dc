"""The optimiser a variant's ``train`` section asks for and its named parameter groups."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def build_optimizer(model: torch.nn.Module, tcfg: Mapping) -> torch.optim.Optimizer:
    """``train.optimizer``: adamw (decoupled decay, the lab's), adam (decay as an L2
    penalty) or sgd with ``train.momentum``. Biases, norms and the temperature get no
    weight decay in every case (:func:`param_groups`)."""
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
