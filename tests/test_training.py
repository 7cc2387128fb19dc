"""Training options: every loss/loop flag trains a few CPU steps with a tiny ResNet;
gradient accumulation, divergence recovery, early stopping, resume and logs."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_pairs import load_train_val, tiny_variant

from cliptune.config.load import deep_merge
from cliptune.files import integrity
from cliptune.training.train_log import STEP_COLUMNS


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return load_train_val(tmp_path_factory.mktemp("pairs"), n_train=32, n_val=16)


def variant(**overrides) -> dict:
    base = tiny_variant(epochs=1, tensorboard=False)
    return deep_merge(base, overrides)


def train(v, pairs, tmp_path, **kwargs):
    from cliptune.training.trainer import train_variant

    return train_variant(v, *pairs, tmp_path / "out", tmp_path / "ckpt" / "state.pt",
                         show_progress=False, **kwargs)


# Options are combined so that each flag trains at least once with few (slow) CPU runs.
OPTIONS = {
    "attention_bn_head_headlr_recall": {
        "model": {"pooling": "attention", "head": {"norm": "batchnorm", "depth": 3}},
        "train": {"head_lr": 3e-3, "monitor": "val_recall", "compile": True,
                  "val_max_images": 8}},
    "layernorm_augment_semihard_bf16": {
        "model": {"head": {"norm": "layernorm", "dropout": 0.2}},
        "train": {"augment": {"enabled": True}, "loss": "triplet",
                  "triplet": {"mining": "semihard"}, "precision": "bf16",
                  "channels_last": False}},
    "frozen_backbone_hardest_random_captions_fp16": {
        "model": {"freeze_backbone": True},
        "train": {"loss": "triplet", "triplet": {"mining": "hardest"},
                  "sampler": "random_captions", "learnable_temperature": False,
                  "precision": "fp16"}},
    "last_stage_hard_negatives_accumulate": {
        "model": {"trainable_stages": 1, "freeze_bn_stats": True},
        "train": {"loss": "hard_negative", "hard_negatives": {"k": 3}, "batch_size": 4,
                  "accum_steps": 2}},
    "random_negatives": {
        "train": {"loss": "hard_negative",
                  "hard_negatives": {"k": 3, "strategy": "random"}}},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_trains_a_few_steps(name, pairs, tmp_path):
    from cliptune.models.factory import build_model

    v = variant(**OPTIONS[name])
    torch.manual_seed(0)
    before = {k: t.clone() for k, t in build_model(v, 16).state_dict().items()}
    result = train(v, pairs, tmp_path, write_outputs=False)
    hist = pd.DataFrame(result["history"])
    assert len(hist) == 1 and np.isfinite(hist["train_loss"]).all()
    assert hist["skipped_steps"].iloc[0] == 0 and 0 <= hist["val_recall"].iloc[0] <= 100
    row = hist.iloc[0]
    if v["train"]["loss"] == "hard_negative":
        # InfoNCE (with the mined negatives) + hardest_weight x hinge, per epoch and step;
        # the in-batch form drops the mined negatives, like the validation loss.
        assert row["train_loss"] == pytest.approx(
            row["train_loss_infonce"] + row["train_loss_hinge"], rel=1e-5)
        assert row["train_loss_in_batch"] < row["train_loss"]
        assert row["val_loss"] == pytest.approx(
            row["val_loss_infonce"] + row["val_loss_hinge"], rel=1e-5)
    elif v["train"]["loss"] == "infonce":
        assert row["train_loss_infonce"] == pytest.approx(row["train_loss"], rel=1e-6)
        assert math.isnan(row["train_loss_hinge"]) and math.isnan(row["val_loss_hinge"])
    else:  # triplet: the hinge is the loss, there is no InfoNCE part
        assert row["train_loss_hinge"] == pytest.approx(row["train_loss"], rel=1e-6)
        assert row["train_loss_in_batch"] == pytest.approx(row["train_loss"], rel=1e-6)
        assert math.isnan(row["train_loss_infonce"]) and math.isnan(row["val_loss_infonce"])
        assert row["val_loss_hinge"] == pytest.approx(row["val_loss"], rel=1e-5)
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    after = state["model"]
    changed = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    assert any(k.startswith("image.head") for k in changed)
    trunk_changed = any(k.startswith("image.trunk") and "running" not in k
                        and "num_batches" not in k for k in changed)
    if name.startswith("frozen_backbone"):
        assert not any(k.startswith("image.trunk") for k in changed)  # BN stats kept too
        assert torch.equal(before["logit_scale"], after["logit_scale"])  # fixed temperature
    elif name.startswith("last_stage"):
        assert not any(k.startswith(("image.trunk.0", "image.trunk.1", "image.trunk.4",
                                     "image.trunk.5", "image.trunk.6")) for k in changed)
        assert any(k.startswith("image.trunk.7") for k in changed)
    else:
        assert trunk_changed
    assert (tmp_path / "ckpt" / "last.safetensors").is_file()


def test_freezing_keeps_frozen_batchnorm_statistics():
    from cliptune.models.image_tower import ImageEncoder

    cfg = deep_merge(tiny_variant()["model"], {"trainable_stages": 2})
    enc = ImageEncoder(cfg, 16, 32).train()
    trainable = {n.split(".")[1] for n, p in enc.named_parameters()
                 if p.requires_grad and n.startswith("trunk.")}
    assert trainable == {"6", "7"}  # layer3 and layer4
    assert not enc.trunk[1].training and not enc.trunk[4][0].bn1.training
    assert enc.trunk[6][0].bn1.training
    stats = enc.trunk[1].running_mean.clone()
    enc(torch.randn(4, 3, 32, 32))
    assert torch.equal(stats, enc.trunk[1].running_mean)
    with pytest.raises(ValueError, match="conflicts"):
        ImageEncoder(deep_merge(cfg, {"freeze_backbone": True}), 16, 32)


def test_trunk_bn_eval_keeps_every_trunk_statistic_while_the_trunk_trains():
    from cliptune.models.image_tower import ImageEncoder

    cfg = deep_merge(tiny_variant()["model"], {"trunk_bn_eval": True})
    enc = ImageEncoder(cfg, 16, 32).train()
    bns = [m for m in enc.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(m.weight.requires_grad for m in bns)  # affine weights still train
    before = [m.running_mean.clone() for m in bns]
    enc(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True))
    assert bns[0].weight.grad is not None
    plain = ImageEncoder(deep_merge(cfg, {"trunk_bn_eval": False}), 16, 32).train()
    assert all(m.training for m in plain.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_accumulation_gives_the_full_batch_gradient(pairs):
    from cliptune.models.factory import build_model
    from cliptune.training.step import StepContext, accumulated_backward, prepare

    v = variant(train={"temperature": 0.1})
    torch.manual_seed(0)
    model = build_model(v, 16).eval()  # BN from running stats: micro == full batch forward
    ctx = StepContext(model, v["train"], torch.device("cpu"), None)
    rows = np.arange(8)
    images, text = pairs[0].fetch(rows)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def grads(chunks):
        model.zero_grad()
        micro = [prepare(ctx, pairs[0], rows[c], images[c], text[c], train=False)
                 for c in chunks]
        loss, accuracy, _ = accumulated_backward(ctx, micro, scaler)
        grads.accuracy = accuracy
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_loss, full = grads([slice(0, 8)])
    full_accuracy = grads.accuracy
    acc_loss, acc = grads([slice(0, 4), slice(4, 8)])
    assert torch.isclose(full_loss, acc_loss, atol=1e-5)
    # in-batch accuracy is over the whole accumulated batch, both ways
    assert torch.equal(full_accuracy, grads.accuracy) and full_accuracy.shape == (2,)
    assert full.keys() == acc.keys() and "logit_scale" in full
    for name in full:
        assert torch.allclose(full[name], acc[name], atol=1e-5, rtol=1e-4), name
    # Micro-batches alone (negatives only within each half) give a different gradient.
    model.zero_grad()
    half = [prepare(ctx, pairs[0], rows[:4], images[:4], text[:4], train=False)]
    accumulated_backward(ctx, half, scaler)
    assert not torch.allclose(model.image.head[0].weight.grad, full["image.head.0.weight"])


def test_accumulation_updates_batchnorm_statistics_once_per_micro_batch(pairs):
    """The no-grad feature pass must not move BN running stats: with accum_steps = 2 they
    end exactly where one train-mode forward per micro-batch puts them."""
    import copy

    from cliptune.models.factory import build_model
    from cliptune.training.step import StepContext, accumulated_backward, prepare

    v = variant(model={"head": {"norm": "batchnorm"}, "freeze_backbone": False})
    torch.manual_seed(0)
    model = build_model(v, 16).train()
    reference = copy.deepcopy(model)
    ctx = StepContext(model, v["train"], torch.device("cpu"), None)
    rows = np.arange(8)
    images, text = pairs[0].fetch(rows)
    micro = [prepare(ctx, pairs[0], rows[c], images[c], text[c], train=False)
             for c in (slice(0, 4), slice(4, 8))]
    accumulated_backward(ctx, micro, torch.amp.GradScaler("cpu", enabled=False))
    with torch.no_grad():
        for x, _, _ in micro:
            reference.embed_images(x)
    got, want = model.state_dict(), reference.state_dict()
    stats = [k for k in got if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert any(k.startswith("image.head") for k in stats) and any("trunk" in k for k in stats)
    for key in stats:
        assert torch.allclose(got[key].float(), want[key].float(), atol=1e-6), key
    assert int(got["image.trunk.1.num_batches_tracked"]) == 2


def _nan_for(calls: int, monkeypatch):
    import cliptune.training.step as ts

    real = ts.batch_loss
    count = {"n": 0}

    def flaky(*args, **kwargs):
        count["n"] += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if count["n"] <= calls else loss

    monkeypatch.setattr(ts, "batch_loss", flaky)


def test_divergence_restores_good_state_with_lower_lr(pairs, tmp_path, monkeypatch):
    _nan_for(2, monkeypatch)  # epoch 1 diverges (2 > max_nonfinite_steps), the retry works
    v = variant(model={"freeze_backbone": True},  # only the head trains: a fast test
                train={"max_nonfinite_steps": 1, "divergence": {"max_restarts": 1,
                                                                 "lr_factor": 0.25}})
    result = train(v, pairs, tmp_path, write_outputs=False)
    row = result["history"][0]
    assert row["restarts"] == 1 and row["skipped_steps"] == 0 and math.isfinite(row["train_loss"])
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert state["scheduler"]["base_lrs"][0] == pytest.approx(v["train"]["lr"] * 0.25)


def test_repeated_divergence_fails_naming_cause_and_epoch(pairs, tmp_path, monkeypatch):
    from cliptune.training.trainer import DivergenceError

    _nan_for(10**6, monkeypatch)
    v = variant(train={"max_nonfinite_steps": 1, "divergence": {"max_restarts": 2}})

    def caller_handler(signum, frame):  # what the process had before training
        raise AssertionError("never called")

    previous = {s: signal.signal(s, caller_handler) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with pytest.raises(DivergenceError, match=r"epoch 1 \(2 steps with NaN/Inf loss; gave "
                                                  r"up after 2 restarts"):
            train(v, pairs, tmp_path)
        # The preemption guard is gone: an HPO process running its next trial (or anything
        # else) gets its own SIGTERM/SIGUSR1 handling back.
        assert all(signal.getsignal(s) is caller_handler for s in previous)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert not (tmp_path / "ckpt" / "state.pt").exists()  # never a NaN checkpoint
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_early_stopping_with_patience(pairs, tmp_path):
    v = variant(model={"freeze_backbone": True},
                train={"epochs": 6, "patience": 1, "min_delta": 1e9, "batch_size": 16})
    result = train(v, pairs, tmp_path, write_outputs=False)
    # Epoch 1 improves on nothing; epoch 2 does not beat it by min_delta: stop.
    assert len(result["history"]) == 2 and result["best_epoch"] == 1
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert state["progress"]["stopped"] and state["epoch"] == 2
    again = train(v, pairs, tmp_path, write_outputs=False)  # resumed: nothing left to do
    assert len(again["history"]) == 2


def test_eval_every_validates_every_nth_and_the_last_epoch(pairs, tmp_path, monkeypatch):
    import cliptune.training.trainer as tr

    calls = []
    real = tr.validate
    monkeypatch.setattr(tr, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    v = variant(model={"freeze_backbone": True},
                train={"epochs": 5, "eval_every": 2, "patience": 1, "min_delta": 1e9,
                       "batch_size": 16})
    result = train(v, pairs, tmp_path, write_outputs=False)
    hist = pd.DataFrame(result["history"])
    # Validated after epochs 2 and 4; patience counts validations, so 4 stops the run.
    assert len(calls) == 2 and list(hist["epoch"]) == [1, 2, 3, 4]
    assert hist["val_loss"].isna().tolist() == [True, False, True, False]
    assert hist["val_recall"].isna().tolist() == [True, False, True, False]
    assert result["best_epoch"] == 2  # an unvalidated epoch is never selected
    calls.clear()
    v["train"].update(patience=None, epochs=3)
    result = train(v, pairs, tmp_path / "b", write_outputs=False)
    assert len(calls) == 2 and result["best_epoch"] in (2, 3)  # epoch 2, and the last


def test_resume_continues_exactly(pairs, tmp_path, monkeypatch):
    import cliptune.training.trainer as tr

    # Frozen trunk keeps the test fast; augmentation makes resume depend on restored RNG.
    v = variant(model={"freeze_backbone": True},
                train={"epochs": 2, "augment": {"enabled": True}, "tensorboard": True,
                       "log_every_steps": 1, "batch_size": 16})
    straight = train(v, pairs, tmp_path / "a", write_outputs=False)

    real, calls = tr.validate, {"n": 0}

    def crash_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "validate", crash_in_epoch_2)
    logs = tmp_path / "b" / "logs"
    with pytest.raises(KeyboardInterrupt):
        train(v, pairs, tmp_path / "b", log_dir=logs)
    monkeypatch.setattr(tr, "validate", real)
    resumed = train(v, pairs, tmp_path / "b", log_dir=logs)
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    a = torch.load(tmp_path / "a" / "ckpt" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "ckpt" / "state.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    # The live TensorBoard events continue across the resume.
    assert list((logs / "tensorboard").glob("events.out.tfevents.*"))
    report = json.loads((tmp_path / "b" / "out" / "train_report.json").read_text())
    assert report["epochs_run"] == 2
    # steps.csv (an output) keeps every optimiser step across the resume, exactly once.
    out_steps = pd.read_csv(tmp_path / "b" / "out" / "steps.csv")
    assert out_steps["step"].tolist() == [1, 2, 3, 4] and out_steps["epoch"].tolist() == [1, 1, 2, 2]
    assert list(out_steps.columns) == STEP_COLUMNS
    assert report["selected_on"] == {"split": "select", "images": pairs[1].n_images,
                                     "monitor": "val_loss"}


def test_train_report_lists_resnet_parameter_groups(pairs, tmp_path):
    """Pretrained trunk stages train at train.lr, the new pool/head and temperature at
    head_lr; biases, norms and the temperature without weight decay."""
    from cliptune.models.factory import build_model

    v = variant(model={"trainable_stages": 1}, train={"head_lr": 3e-3, "weight_decay": 0.05})
    train(v, pairs, tmp_path)
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    groups = {g["name"]: g for g in report["param_groups"]}
    lr = v["train"]["lr"]
    assert {n: (g["lr"], g["weight_decay"]) for n, g in groups.items()} == {
        "trunk": (lr, 0.05), "trunk.no_decay": (lr, 0.0), "head": (3e-3, 0.05),
        "head.no_decay": (3e-3, 0.0), "temperature": (3e-3, 0.0)}
    model = build_model(v, 16)
    layer4 = sum(p.numel() for n, p in model.named_parameters() if n.startswith("image.trunk.7."))
    assert groups["trunk"]["parameters"] + groups["trunk.no_decay"]["parameters"] == layer4
    assert groups["temperature"]["parameters"] == 1
    assert sum(g["parameters"] for g in groups.values()) == report["trainable_parameters"]


def test_state_with_another_optimizer_layout_is_not_resumed(pairs, tmp_path, caplog):
    """A resume state whose optimiser groups differ from this run's (another set of
    trainable parameters) starts fresh instead of failing inside torch."""
    v = variant(model={"freeze_backbone": True}, train={"batch_size": 16})
    train(v, pairs, tmp_path, write_outputs=False)
    path = tmp_path / "ckpt" / "state.pt"
    state = torch.load(path, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["name"] = "other." + group["name"]
    torch.save(state, path)
    integrity.seal(path, path)  # a sound file of another layout, not a damaged one
    with caplog.at_level("WARNING"):  # same config: only the layout differs
        result = train(v, pairs, tmp_path, write_outputs=False)
    assert "optimiser layout" in caplog.text and len(result["history"]) == 1
    restored = torch.load(path, weights_only=True)["optimizer"]["param_groups"]
    assert not any(g["name"].startswith("other.") for g in restored)  # trained afresh


def test_batch_larger_than_data_is_a_clear_error(pairs, tmp_path):
    v = variant(train={"batch_size": 16, "accum_steps": 4})
    with pytest.raises(ValueError, match="batch_size x accum_steps = 64"):
        train(v, pairs, tmp_path)


def test_in_batch_accuracy_both_ways():
    from cliptune.training.step import in_batch_accuracy

    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.0, 0.1]])
    # every image's best caption is its own (image 2: 0.1 beats 0), but caption 2's best
    # image is image 0 (0.9 > 0.1): image->text 3/3, text->image 2/3
    assert in_batch_accuracy(img, txt).tolist() == pytest.approx([1.0, 2 / 3])


def test_epoch_seconds_and_throughput_leave_validation_out(pairs, tmp_path, monkeypatch):
    import time

    import cliptune.training.trainer as tr

    # The clock jumps 1000 s inside validation: the epoch's seconds (history.csv) must
    # not contain the jump.
    real_clock, jumped = time.perf_counter, []
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + 1000.0 * len(jumped))
    real = tr.validate
    monkeypatch.setattr(tr, "validate", lambda *a, **k: jumped.append(1) or real(*a, **k))
    v = variant(model={"freeze_backbone": True}, train={"batch_size": 8})
    hist = pd.DataFrame(train(v, pairs, tmp_path, write_outputs=False)["history"])
    assert jumped and 0 < hist["seconds"].iloc[0] < 1000
    assert hist["images_per_s"].iloc[0] == pytest.approx(32 / hist["seconds"].iloc[0])


def test_history_steps_and_report_carry_accuracy_and_hardware(pairs, tmp_path):
    v = variant(model={"freeze_backbone": True},
                train={"epochs": 2, "batch_size": 8, "warmup_steps": 3, "lr": 1e-3,
                       "tensorboard": True})
    train(v, pairs, tmp_path, log_dir=tmp_path / "logs")
    hist = pd.read_csv(tmp_path / "out" / "history.csv")
    acc_cols = ["train_acc_i2t", "train_acc_t2i", "val_acc_i2t", "val_acc_t2i"]
    assert set(acc_cols) <= set(hist.columns) and len(hist) == 2
    assert ((hist[acc_cols] >= 0) & (hist[acc_cols] <= 100)).all().all()
    assert (hist["grad_norm_min"] <= hist["grad_norm"]).all()
    assert (hist["grad_norm"] <= hist["grad_norm_max"]).all()
    steps = pd.read_csv(tmp_path / "out" / "steps.csv")
    assert steps["step"].tolist() == list(range(1, 9))  # 32 images / 8 = 4 steps x 2 epochs
    # the learning rate each step used: linear warmup over 3 steps, then cosine decay
    assert steps["lr"].iloc[:3].tolist() == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert steps["lr"].iloc[3] == pytest.approx(1e-3) and steps["lr"].iloc[4] < 1e-3
    train_acc = steps.groupby("epoch")[["acc_i2t", "acc_t2i"]].mean()
    assert train_acc.to_numpy() == pytest.approx(hist[acc_cols[:2]].to_numpy())
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    hw = report["hardware"]
    assert hw["kind"] == "cpu" and hw["cpu"] and hw["torch_threads"] >= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    events.Reload()
    assert {f"epoch/{c}" for c in acc_cols} <= set(events.Tags()["scalars"])


def test_hardware_info_on_cuda_reports_gpu_and_peak_memory(monkeypatch):
    from cliptune.runtime import hardware_info

    class Props:
        name, total_memory = "NVIDIA H200", 140 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**30)
    hw = hardware_info(torch.device("cuda", 0))
    assert hw == {"kind": "cuda", "gpu": "NVIDIA H200", "gpu_count": 1,
                  "gpu_memory_gb": 140.0, "peak_gpu_memory_gb": 3.0}


def test_log_opens_with_device_steps_and_batch_plan(pairs, tmp_path, caplog):
    v = variant(model={"freeze_backbone": True}, train={"batch_size": 4, "accum_steps": 2})
    with caplog.at_level("INFO", logger="cliptune.training.trainer"):
        train(v, pairs, tmp_path, write_outputs=False)
    first = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("training"))
    # 32 train images / (4 x 2) = 4 optimizer steps per epoch, 1 epoch.
    assert "on cpu" in first and "1 epochs x 4 steps = 4 optimizer steps" in first
    assert "8 images/step (2 micro-batches of 4" in first and "over 1 process(es)" in first
    # Written before the first epoch's summary line.
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index(first) < next(i for i, m in enumerate(messages)
                                        if m.startswith("epoch 1:"))
