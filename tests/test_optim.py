"""train.optimizer / momentum / warmup_steps: what is built, and the settings that conflict."""

from __future__ import annotations

import pytest
import torch
from tiny_pairs import tiny_variant

from cliptune.config.load import ConfigError, load_config
from cliptune.models.factory import build_model
from cliptune.training.optim import build_optimizer, describe_param_groups
from cliptune.training.schedule import warmup_cosine, warmup_steps


def _model_and_cfg(**train):
    v = tiny_variant(epochs=1)
    v["model"]["head"]["norm"] = "batchnorm"
    v["train"].update(train)
    return build_model(v, 16), v["train"]


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                      ("sgd", torch.optim.SGD)])
def test_optimizer_choice_and_no_decay_on_biases_norms_temperature(name, cls):
    model, tcfg = _model_and_cfg(optimizer=name, weight_decay=0.01, momentum=0.8)
    opt = build_optimizer(model, tcfg)
    assert type(opt) is cls
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    for pname, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "logit_scale" in pname  # biases, BatchNorm, temperature
            assert (id(p) in decayed) != no_decay, pname
    assert any(".head.1." in n for n, p in model.named_parameters() if id(p) not in decayed)
    if name == "sgd":
        assert all(g["momentum"] == 0.8 for g in opt.param_groups)


def test_nothing_trainable_is_an_error_naming_the_switches():
    model, tcfg = _model_and_cfg()
    model.requires_grad_(False)  # e.g. both CLIP towers locked and a fixed temperature
    with pytest.raises(ValueError, match="no trainable parameter.*learnable_temperature: true"):
        build_optimizer(model, tcfg)


def test_a_zero_epoch_row_with_nothing_trainable_still_builds():
    """The zero-shot row of a fixed-temperature study locks everything and trains 0 epochs."""
    model, tcfg = _model_and_cfg(epochs=0)
    model.requires_grad_(False)
    opt = build_optimizer(model, tcfg)
    assert describe_param_groups(opt) == [{"name": "none (0 epochs)", "parameters": 0,
                                           "lr": tcfg["lr"], "weight_decay": 0.0}]


def test_warmup_steps_replace_the_fraction_and_shape_the_schedule():
    _, tcfg = _model_and_cfg(warmup_steps=None, warmup_fraction=0.1)
    assert warmup_steps(tcfg, 1000) == 100
    tcfg = {**tcfg, "warmup_steps": 500}
    assert warmup_steps(tcfg, 6460) == 500
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = warmup_cosine(opt, 6460, 500)
    lrs = []
    for _ in range(6460):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4 / 500)
    assert max(lrs) == pytest.approx(1e-4) and lrs.index(max(lrs)) == 499
    assert lrs[-1] < 1e-7


def _cfg(train=None, variant=None) -> dict:
    raw = {"dataset": {"name": "demo", "source": "demo"},
           "variants": {"baseline": {"train": variant} if variant else {}}}
    if train:
        raw["train"] = train
    return raw


def test_conflicting_warmup_and_momentum_settings_are_errors():
    with pytest.raises(ConfigError, match="warmup_steps replaces warmup_fraction"):
        load_config(_cfg({"warmup_fraction": 0.1}, {"warmup_steps": 500}))
    with pytest.raises(ConfigError, match="momentum.*optimizer: sgd"):
        load_config(_cfg({"momentum": 0.9}))
    load_config(_cfg({"optimizer": "sgd"}, {"momentum": 0.5}))  # inherited sgd: fine
    load_config(_cfg({"warmup_steps": 500}, {"warmup_steps": None, "warmup_fraction": 0.2}))
