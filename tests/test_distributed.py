"""Data-parallel training on CPU with gloo: the distributed step equals the
single-process step on the same global batch, and a 2-process run trains once."""

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

from cliptune.training.distributed import (
    DistContext,
    gather_batch,
    gather_with_grad,
    shard,
    shard_micro,
    sync_gradients,
    torchrun_argv,
)
from cliptune.training.losses import clip_loss

REPO = Path(__file__).resolve().parents[1]
WORLD, BATCH, DIM = 2, 8, 6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM))
    model.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
    return model


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
    emb = torch.nn.functional.normalize(model(x), dim=-1)
    scale = model.logit_scale.exp()
    if formulation == "single":
        loss = clip_loss(emb, text, scale)
    elif formulation == "local":
        loss = clip_loss_local(emb, text, scale, ctx)
    else:  # "global": any batch loss on the gathered batch
        loss = clip_loss(*gather_batch(emb, text), scale)
    loss.backward()
    return loss.detach()


def _worker(rank: int, port: int, formulation: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    ctx = DistContext(rank, rank, WORLD, torch.device("cpu"))
    model = _model()
    x, text = _batch()
    rows = shard(np.arange(BATCH), ctx)
    loss = _step(model, x[rows], text[rows], formulation, ctx)
    sync_gradients(model, ctx)
    # The loss of the global batch: mean of the local losses, or the global one itself.
    total = loss.clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / WORLD if formulation == "local" else loss,
                    "grads": {n: p.grad for n, p in model.named_parameters()}}, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("formulation", ["local", "global"])
def test_two_process_step_equals_single_process(tmp_path, formulation):
    model = _model()
    x, text = _batch()
    loss = _step(model, x, text, "single", None)
    expected = {n: p.grad for n, p in model.named_parameters()}
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), formulation, str(out)), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=True)
    torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=1e-6)
    for name, grad in expected.items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=name)


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
    spec = write_spec(tmp_path, tiny_variant(epochs=1, batch_size=8, devices=2, log_every_steps=1),
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
