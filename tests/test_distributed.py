"""Data-parallel training on CPU with gloo: the distributed step (gathered negatives,
gradients averaged by DistributedDataParallel) equals the single-process step on the
same global batch, and a 2-process run trains once."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tiny_pairs import tiny_variant, write_spec
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from cliptune.training.distributed import (
    DistContext,
    data_parallel,
    gather_batch,
    gather_with_grad,
    prepare_model,
    shard,
    shard_micro,
    torchrun_argv,
)
from cliptune.training.losses import clip_loss

REPO = Path(__file__).resolve().parents[1]
WORLD, BATCH, DIM = 2, 8, 6


class _Tiny(torch.nn.Module):
    """Embeddings and the logit scale from one forward, as DDP needs them."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, DIM))
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return torch.nn.functional.normalize(self.net(x), dim=-1), self.logit_scale.exp()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _Tiny()


def clip_loss_local(image_emb: torch.Tensor, text_emb: torch.Tensor,
                    logit_scale: torch.Tensor | float, ctx: DistContext) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's rows against the global batch (open_clip's local
    loss), the reference the gathered-batch loss is compared with. With one process it is
    exactly ``losses.clip_loss``."""
    image_emb, text_emb = image_emb.float(), text_emb.float()
    all_images, all_text = gather_with_grad(image_emb), gather_with_grad(text_emb)
    n = image_emb.shape[0]
    labels = torch.arange(n, device=image_emb.device) + ctx.rank * n
    logits_i2t = logit_scale * image_emb @ all_text.T
    logits_t2i = logit_scale * text_emb @ all_images.T
    return 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 10, generator=g), torch.nn.functional.normalize(
        torch.randn(BATCH, DIM, generator=g), dim=-1)


def _step(model, x, text, formulation: str, ctx: DistContext | None):
    emb, scale = model(x)
    if formulation == "single":
        loss = clip_loss(emb, text, scale)
    elif formulation == "local":
        loss = clip_loss_local(emb, text, scale, ctx)
    else:  # "global": any batch loss on the gathered batch
        loss = clip_loss(*gather_batch(emb, text), scale)
    loss.backward()
    return loss.detach()


FORMULATIONS = ("local", "global")


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    ctx = DistContext(rank, rank, WORLD, torch.device("cpu"))
    results = {}
    for formulation in FORMULATIONS:  # one process group for both: each start imports torch
        model = _model()
        forward = data_parallel(model, ctx)
        assert isinstance(forward, torch.nn.parallel.DistributedDataParallel)
        x, text = _batch()
        rows = shard(np.arange(BATCH), ctx)
        loss = _step(forward, x[rows], text[rows], formulation, ctx)
        # The loss of the global batch: mean of the local losses, or the global one itself.
        total = loss.clone()
        dist.all_reduce(total)
        results[formulation] = {"loss": total / WORLD if formulation == "local" else loss,
                                "grads": {n: p.grad for n, p in model.named_parameters()}}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_step_equals_single_process(tmp_path):
    model = _model()
    x, text = _batch()
    loss = _step(model, x, text, "single", None)
    expected = {n: p.grad for n, p in model.named_parameters()}
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    results = torch.load(out, weights_only=True)
    assert set(results) == set(FORMULATIONS)
    for formulation, got in results.items():
        torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=1e-6, msg=formulation)
        for name, grad in expected.items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-5, atol=1e-6,
                                       msg=f"{formulation}: {name}")


# Variants of the real training step (TrainForward, accumulated_backward) with 2
# micro-batches per optimiser step; BatchNorm normalises with running statistics so a
# rank's half batch sees the same normalisation as the whole batch in one process.
STEP_VARIANTS = {
    # Every weight trains, from pixels; the temperature trains through InfoNCE.
    "trainable_trunk_pixels": ({"freeze_backbone": False, "trunk_bn_eval": True},
                               {"loss": "infonce"}, False),
    # Frozen trunk (requires_grad False) read as cached pooled features; the triplet loss
    # never uses the learnable temperature, so DDP has an unused parameter to skip.
    "frozen_trunk_features_triplet": ({"freeze_backbone": True, "freeze_bn_stats": True},
                                      {"loss": "triplet"}, True),
}
STEP_ROWS, STEP_MICRO = 8, 4


def _step_setup(name: str):
    from cliptune.config.load import deep_merge
    from cliptune.models.factory import build_model

    model_cfg, train_cfg, features = STEP_VARIANTS[name]
    v = deep_merge(tiny_variant(accum_steps=STEP_ROWS // STEP_MICRO, batch_size=STEP_MICRO,
                                **train_cfg), {"model": model_cfg})
    torch.manual_seed(0)
    model = build_model(v, DIM).train()
    g = torch.Generator().manual_seed(3)
    images = (torch.randn(STEP_ROWS, 512, generator=g) if features  # resnet18 pooled
              else torch.randint(0, 256, (STEP_ROWS, 32, 32, 3), dtype=torch.uint8, generator=g))
    text = F.normalize(torch.randn(STEP_ROWS, DIM, generator=g), dim=-1)
    return v, model, images, text


def _accumulated_step(ctx, rows_per_micro: int, images, text, reduced: list | None = None):
    """Two optimiser steps' gradients on the same batch (no update in between), so DDP
    state left over from the first (an unfinished reduction) would fail the second.
    ``reduced``: the list a comm hook appends reduced buckets to; a None marks each
    step's end."""
    from cliptune.training.step import accumulated_backward, prepare

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    micro = [prepare(ctx, None, None, images[i:i + rows_per_micro], text[i:i + rows_per_micro],
                     train=False) for i in range(0, len(images), rows_per_micro)]
    out = []
    for _ in range(2):
        ctx.model.zero_grad(set_to_none=True)
        loss, _, _ = accumulated_backward(ctx, micro, scaler)
        if reduced is not None:
            reduced.append(None)
        out.append((loss, {n: None if p.grad is None else p.grad.clone()
                           for n, p in ctx.model.named_parameters() if p.requires_grad}))
    return out


def _step_worker(rank: int, port: int, out: str) -> None:
    from cliptune.training.step import StepContext, TrainForward, unused_temperature

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    ctx = DistContext(rank, rank, WORLD, torch.device("cpu"))
    results = {}
    for name in STEP_VARIANTS:
        v, model, images, text = _step_setup(name)
        prepare_model(model, ctx)
        unused = unused_temperature(model, v["train"])
        forward = data_parallel(TrainForward(model), ctx, unused)
        reduced: list = []

        def count(state, bucket, reduced=reduced):
            reduced.append(bucket.index())
            return default_hooks.allreduce_hook(state, bucket)

        forward.register_comm_hook(None, count)
        step = StepContext(model, v["train"], ctx.device, None, gather=gather_batch,
                           forward=forward)
        local = shard_micro(np.arange(STEP_ROWS), STEP_MICRO, ctx)
        results[name] = {"steps": _accumulated_step(step, STEP_MICRO // WORLD, images[local],
                                                    text[local], reduced),
                         "unused": unused, "reduced": reduced}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_two_process_accumulated_training_step_equals_single_process(tmp_path):
    from cliptune.training.step import StepContext

    out = tmp_path / "rank0.pt"
    mp.spawn(_step_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    results = torch.load(out, weights_only=True)
    for name, (_, _, unused) in STEP_VARIANTS.items():
        v, model, images, text = _step_setup(name)
        (want_loss, want), _ = _accumulated_step(
            StepContext(model, v["train"], torch.device("cpu"), None), STEP_MICRO, images, text)
        got = results[name]
        assert got["unused"] == unused, name
        # Only the last micro-batch's backward communicates: every gradient bucket is
        # all-reduced once per optimiser step (no_sync holds back the first pass).
        steps = " ".join(map(str, got["reduced"])).split("None")[:-1]
        assert len(steps) == 2 and all(
            s.split() and len(s.split()) == len(set(s.split())) for s in steps), got["reduced"]
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert bool(frozen) == name.startswith("frozen"), name
        assert want["image.head.0.weight"] is not None
        # The triplet loss leaves the learnable temperature without a gradient, as in one
        # process.
        assert (want["logit_scale"] is None) == (v["train"]["loss"] == "triplet"), name
        for loss, grads in got["steps"]:
            torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6, msg=name)
            assert grads.keys() == want.keys(), name
            for n, g in want.items():
                if g is None:
                    assert grads[n] is None, (name, n)
                else:
                    torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6,
                                               msg=f"{name}: {n}")


def test_sharding_keeps_the_global_order():
    rows = np.arange(12)
    parts = [shard_micro(rows, 6, DistContext(r, r, 2, torch.device("cpu"))) for r in range(2)]
    assert parts[0].tolist() == [0, 1, 2, 6, 7, 8] and parts[1].tolist() == [3, 4, 5, 9, 10, 11]
    with pytest.raises(ValueError, match="multiple of train.devices"):
        shard(np.arange(5), DistContext(0, 0, 2, torch.device("cpu")))


def test_torchrun_command(tmp_path):
    argv = torchrun_argv(tmp_path / "launch.json", 4, 1, env={})
    assert argv[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in argv and argv[-2:] == ["--spec", str(tmp_path / "launch.json")]
    with pytest.raises(RuntimeError, match="needs a SLURM allocation"):
        torchrun_argv(tmp_path / "launch.json", 4, 2, env={})


@pytest.mark.slow
def test_two_process_training_run_writes_outputs_once(tmp_path):
    # Two micro-batches per step: the first backward runs under DDP's no_sync.
    spec = write_spec(tmp_path, tiny_variant(epochs=1, batch_size=4, accum_steps=2, devices=2,
                                             log_every_steps=1),
                      name="ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "OMP_NUM_THREADS": "1"}
    argv = torchrun_argv(spec, 2, 1, env={})
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "ddp" / "out"
    # Training draws nothing: loss_curves.png is the loss_curves rule's (report.smk).
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "model.safetensors", "model.safetensors.sha256", "steps.csv",
        "train_report.json"]
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == 1 and np.isfinite(hist["val_loss"]).all()
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert "rank 0 of 2" in log and "rank1" not in log  # only rank 0 writes the log file
    assert len(pd.read_csv(out / "steps.csv")) == 4  # every optimiser step, once
    # The live log lines (log_every_steps: 1) and TensorBoard events, from rank 0 only.
    assert log.count("step 1 (epoch 1)") == 1 and "step 4 (epoch 1)" in log
    assert list((tmp_path / "ddp" / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "ddp" / "ckpt" / "state.pt").is_file()
