"""Gradient sync across 2 processes: cliptune's training step (DistributedDataParallel)
vs a bare DDP loop vs one flat all-reduce after the backward pass.

    python benchmarks/bench_grad_sync.py [--backbone resnet18] [--size 64] [--batch-size 16]
                                         [--steps 12] [--accum 1]

All three sides train the same ResNet image tower (``build_model``, random weights, one
copy each with the same weights) on the same uint8 images with the gathered-negatives
InfoNCE of a multi-process run, 2 gloo processes on the CPU, and compute the same
gradients (with ``--accum`` > 1: open_clip's cached-feature accumulation, so every
micro-batch's negatives span the whole accumulated batch):

* cliptune: the trainer's own path: ``StepContext`` with ``TrainForward`` wrapped by
  ``distributed.data_parallel`` (DDP's bucketed all-reduce overlapped with the backward
  pass; all but the last micro-batch under ``no_sync()``), ``prepare`` and
  ``accumulated_backward``;
* bare DDP: a minimal loop over a minimal module (normalise, tower, logit scale) wrapped
  in ``DistributedDataParallel`` with the same accumulation, none of cliptune's step code;
* flat all-reduce: cliptune's step without DDP, then every gradient averaged in one
  flat all-reduce after the backward pass (the hand-written alternative to DDP).

Reports the median step time of each (sides alternate step by step, each going first in
turn), the time of the
flat all-reduce alone, and the largest gradient difference between the sides after
one step.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_common import WORK, command_line, header, load_average, write_result

WORLD = 2
CLIPTUNE, BARE, FLAT = "cliptune step (DDP)", "bare DDP loop", "flat all-reduce after backward"


def _variant(backbone: str, size: int, batch_size: int, accum: int) -> dict:
    """A variant from the config defaults: a trainable ResNet tower with random weights."""
    from cliptune.config.load import DEFAULTS, deep_merge

    return deep_merge({"model": DEFAULTS["model"], "train": DEFAULTS["train"]}, {
        "name": "bench", "image_size": size,
        "model": {"backbone": backbone, "weights": None, "freeze_backbone": False},
        "train": {"batch_size": batch_size, "accum_steps": accum, "loss": "infonce",
                  "augment": {"enabled": False}}})


def _data(args, rank: int):
    """This rank's slice of every micro-batch: uint8 NHWC images (the cache layout) and
    unit text embeddings."""
    g = torch.Generator().manual_seed(100 + rank)
    per = args.batch_size // WORLD
    images = torch.randint(0, 256, (args.accum, per, args.size, args.size, 3),
                           dtype=torch.uint8, generator=g)
    text = torch.nn.functional.normalize(torch.randn(args.accum, per, 64, generator=g), dim=-1)
    return images, text


class _Bare(torch.nn.Module):
    """The least a DDP loop needs: normalised pixels -> embeddings, and the logit scale."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x01: torch.Tensor):
        return self.model.embed_images(x01), self.model.scale()


def _bare_step(ddp, micro: list) -> None:
    """The same gradients as cliptune's accumulated_backward, in a bare loop."""
    from cliptune.training.distributed import gather_batch
    from cliptune.training.losses import clip_loss

    if len(micro) == 1:
        emb, scale = ddp(micro[0][0])
        clip_loss(*gather_batch(emb, micro[0][1]), scale).backward()
        return
    with torch.no_grad():
        cached = [gather_batch(ddp(x)[0], t) for x, t in micro]
    for j, (x, t) in enumerate(micro):
        last = j == len(micro) - 1
        with ddp.no_sync() if not last else _Null():
            emb, scale = ddp(x)
            img, txt = gather_batch(emb, t)
            imgs = torch.cat([c[0] for c in cached[:j]] + [img] + [c[0] for c in cached[j + 1:]])
            txts = torch.cat([c[1] for c in cached[:j]] + [txt] + [c[1] for c in cached[j + 1:]])
            clip_loss(imgs, txts, scale if last else scale.detach()).backward()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def flat_all_reduce(model: torch.nn.Module, world: int) -> None:
    """Average gradients over ranks in one flat all-reduce after the backward pass."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _worker(rank: int, port: int, args, out: str) -> None:
    from cliptune.models.factory import build_model
    from cliptune.models.image_tower import to_unit_float
    from cliptune.training.distributed import (
        DistContext,
        data_parallel,
        gather_batch,
        prepare_model,
    )
    from cliptune.training.step import (
        StepContext,
        TrainForward,
        accumulated_backward,
        prepare,
        unused_temperature,
    )

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    ctx = DistContext(rank, rank, WORLD, torch.device("cpu"))
    tcfg = args.variant["train"]
    torch.manual_seed(0)
    base = build_model(args.variant, 64).train()
    prepare_model(base, ctx)
    models = {name: copy.deepcopy(base) for name in (CLIPTUNE, BARE, FLAT)}
    steps = {
        CLIPTUNE: StepContext(models[CLIPTUNE], tcfg, ctx.device, None, gather=gather_batch,
                              forward=data_parallel(TrainForward(models[CLIPTUNE]), ctx,
                                                    unused_temperature(models[CLIPTUNE], tcfg))),
        FLAT: StepContext(models[FLAT], tcfg, ctx.device, None, gather=gather_batch),
    }
    bare = data_parallel(_Bare(models[BARE]), ctx)
    images, text = _data(args, rank)
    micro = [prepare(steps[CLIPTUNE], None, None, images[j], text[j], train=False)
             for j in range(args.accum)]
    bare_micro = [(to_unit_float(images[j], "cpu"), text[j]) for j in range(args.accum)]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    times = {CLIPTUNE: [], BARE: [], FLAT: [], "flat all-reduce alone": []}
    grads = {}
    names = list(models)
    for step in range(args.steps + 1):  # step 0 warms up, untimed
        # Each side goes first in turn: no side always runs right after the barrier.
        for name in names[step % 3:] + names[:step % 3]:
            model = models[name]
            model.zero_grad(set_to_none=True)
            dist.barrier()
            t0 = time.perf_counter()
            if name == BARE:
                _bare_step(bare, bare_micro)
            else:
                accumulated_backward(steps[name], micro, scaler)
            if name == FLAT:
                t1 = time.perf_counter()
                flat_all_reduce(model, WORLD)
                times["flat all-reduce alone"].append(time.perf_counter() - t1)
            times[name].append(time.perf_counter() - t0)
            if step == 0:
                grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()
                                         if p.grad is not None])
    if rank == 0:
        diff = {k: float((grads[k] - grads[CLIPTUNE]).abs().max()) for k in (BARE, FLAT)}
        n_params = sum(p.numel() for p in base.parameters() if p.requires_grad)
        result = {k: statistics.median(v[1:]) for k, v in times.items()}
        with open(out, "w") as f:
            json.dump({"median_s": result, "max_grad_diff": diff, "params": n_params}, f)
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="global micro-batch")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args(argv)
    if args.batch_size % WORLD:
        ap.error(f"--batch-size must be a multiple of the {WORLD} processes")
    load0 = load_average()
    args.variant = _variant(args.backbone, args.size, args.batch_size, args.accum)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "grad_sync.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, args, str(out)), nprocs=WORLD, join=True)
    res = json.loads(out.read_text())
    med = res["median_s"]
    lines = header("Gradient sync: cliptune's DDP step vs a bare DDP loop vs one flat "
                   "all-reduce", command_line(), load0)
    lines += [
        f"{WORLD} gloo processes (1 torch thread each) on this CPU, {args.backbone} image "
        f"tower ({res['params']:,} trainable parameters) at {args.size} px, global micro-batch "
        f"{args.batch_size} x {args.accum} micro-batch(es) per step, gathered-negatives "
        f"InfoNCE; median of {args.steps} steps after one warm-up, the three sides "
        "alternating step by step, each going first in turn.",
        "",
        "| gradient sync | step (ms) | vs cliptune |", "|---|---|---|",
        *[f"| {k} | {1000 * v:.1f} | "
          f"{f'{v / med[CLIPTUNE]:.2f}x' if k in (CLIPTUNE, BARE, FLAT) else 'part of the above'} |"
          for k, v in med.items()],
        "",
        f"- Largest gradient difference after one step, vs cliptune: bare DDP "
        f"{res['max_grad_diff'][BARE]:.2e}, flat all-reduce {res['max_grad_diff'][FLAT]:.2e}.",
        f"- cliptune's step is {100 * (med[CLIPTUNE] / med[BARE] - 1):+.1f}% against the bare "
        f"DDP loop and {100 * (med[CLIPTUNE] / med[FLAT] - 1):+.1f}% against the flat "
        f"all-reduce, which alone takes {100 * med['flat all-reduce alone'] / med[FLAT]:.1f}% "
        "of its step (the communication DDP overlaps with the backward pass).",
        "",
    ]
    write_result("grad_sync.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
