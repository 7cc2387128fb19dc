"""Data-parallel training across processes started by torchrun.

``train.batch_size`` is the *global* (micro-)batch: every rank takes its
contiguous slice of each planned batch, and the contrastive loss is computed on
the features of all ranks gathered with gradients, so the negatives span the
global batch; gradients are then averaged over ranks (DistributedDataParallel), which
makes one step equal to a single-process step on the same global batch.

Two equivalent formulations are provided: ``gather_batch`` (any batch loss on
the gathered global batch; what training uses, since train.loss may be a
triplet or hard-negative loss) and ``clip_loss_local`` (open_clip's
``local_loss``: each rank scores only its own rows against the global batch,
B/W x B logits instead of B x B). tests/test_distributed.py checks both against
one process.

Gradients are averaged by ``DistributedDataParallel`` (``data_parallel``): it
all-reduces them in buckets while the backward pass is still running, so communication
overlaps computation. DDP synchronises only the backward of its own forward, so the step
drives every trainable path (pixels or cached trunk features, a running text tower, the
temperature) through one module call (cliptune.training.step.TrainForward); gradient
accumulation runs all but the last micro-batch under ``no_sync()``, so one all-reduce per
optimiser step carries the accumulated gradients. benchmarks/results/grad_sync.md
measures this path against the hand-written alternative (one flat all-reduce after the
backward pass).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cliptune.runtime import pick_device

log = logging.getLogger(__name__)

# Environment torchrun sets for every worker.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
RDZV_PORT = 29500


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def single(cls, device: torch.device) -> DistContext:
        return cls(0, 0, 1, device)


def init_from_env(requested_device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (NCCL on GPUs,
    gloo on CPUs); without torchrun's variables this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(requested_device)
    if world == 1:
        return DistContext.single(device)
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} unset; start training "
                           "with torchrun (train.devices > 1 does this for you)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"rank {rank} wants cuda:{local_rank} but only {torch.cuda.device_count()} GPUs "
                "are visible; train.devices must not exceed the GPUs requested per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, local_rank, world, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: np.ndarray, ctx: DistContext) -> np.ndarray:
    """This rank's contiguous slice of one global batch."""
    if not ctx.distributed:
        return rows
    if len(rows) % ctx.world_size:
        raise ValueError(f"a batch of {len(rows)} rows cannot be split evenly over "
                         f"{ctx.world_size} processes; make train.batch_size a multiple of "
                         "train.devices × train.nodes")
    per = len(rows) // ctx.world_size
    return rows[ctx.rank * per:(ctx.rank + 1) * per]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the rows it sent.

    Written with all_reduce (not the stock reduce-scatter) so it works on
    every backend, gloo included."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank (rank order); gradients flow back to each."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_batch(image_emb: torch.Tensor, text_emb: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch's embeddings on every rank, gradients flowing back to their
    rank (identity on one process).

    Any batch loss computed on them is the single-process loss of the global
    batch; its gradient reaches each rank's rows W times (the gather's backward
    sums the W identical copies) and DDP divides by W, so the parameter update
    is exactly the single-process one. Works for every train.loss; for InfoNCE
    ``clip_loss_local`` computes the same with B/W x B instead of B x B logits.
    """
    return gather_with_grad(image_emb), gather_with_grad(text_emb)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few Python numbers over ranks (one collective; identity on one process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def prepare_model(model: torch.nn.Module, ctx: DistContext) -> None:
    """Make every rank start from rank 0's weights; on GPUs BatchNorm becomes
    SyncBatchNorm (in place) so its statistics cover the global batch. PyTorch has
    no CPU SyncBatchNorm, so CPU runs keep per-rank statistics."""
    if not ctx.distributed:
        return
    if ctx.device.type == "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the root is not a BatchNorm
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, 0)


def data_parallel(module: torch.nn.Module, ctx: DistContext,
                  find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel on several ranks (itself on one): the
    backward of its forward averages the gradients over ranks, as one process would get
    them from the global batch.

    ``find_unused_parameters`` is for a module with trainable parameters that the loss
    never reaches (DDP would otherwise wait for their gradients). Buffers are not
    broadcast on each forward: BatchNorm statistics are synchronised by SyncBatchNorm on
    GPUs and stay per rank on CPUs (``prepare_model``), and a broadcast would replace
    them with rank 0's. The wrapper has no weights of its own: checkpoints hold
    ``module``'s state_dict, keys unchanged."""
    if not ctx.distributed:
        return module
    ddp = torch.nn.parallel.DistributedDataParallel
    # The per-forward buffer broadcast is called forward_sync_buffers where torch has it
    # (broadcast_buffers is deprecated there) and broadcast_buffers before.
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else {"broadcast_buffers": False})
    cuda = ctx.device.type == "cuda"
    return ddp(module, device_ids=[ctx.device.index] if cuda else None,
               output_device=ctx.device.index if cuda else None,
               find_unused_parameters=find_unused_parameters, **no_buffer_sync)


def no_sync(forward: torch.nn.Module):
    """DDP's ``no_sync()``: the gradients of backward passes of forwards inside it stay on
    this rank, accumulating until the next synchronised backward reduces them all; a
    plain module (one process) needs nothing."""
    if isinstance(forward, torch.nn.parallel.DistributedDataParallel):
        return forward.no_sync()
    return contextlib.nullcontext()


def shard_micro(rows: np.ndarray, micro_batch: int, ctx: DistContext) -> np.ndarray:
    """This rank's rows of an accumulated batch: its slice of every micro-batch, so
    the gathered features of each micro-batch come back in the planned order."""
    if not ctx.distributed:
        return rows
    return np.concatenate([shard(rows[i:i + micro_batch], ctx)
                           for i in range(0, len(rows), micro_batch)])


# ---------------------------------------------------------------- launching


def world_size(train_cfg: dict) -> int:
    return int(train_cfg["devices"]) * int(train_cfg["nodes"])


def torchrun_argv(spec_path: Path, devices: int, nodes: int,
                  env: dict[str, str] | None = None) -> list[str]:
    """The command that starts ``devices`` workers per node of cliptune.training.torchrun_entry.

    One node: torchrun --standalone (free port, no rendezvous server). Several
    nodes: one torchrun per node started by srun inside the SLURM allocation,
    meeting at a c10d rendezvous on the allocation's first node."""
    env = os.environ if env is None else env
    entry = ["-m", "cliptune.training.torchrun_entry", "--spec", str(spec_path)]
    run = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        return [*run, "--standalone", "--nnodes=1", f"--nproc-per-node={devices}", *entry]
    if "SLURM_JOB_ID" not in env:
        raise RuntimeError(f"train.nodes = {nodes} needs a SLURM allocation (run with "
                           "--profile profiles/slurm); outside SLURM use nodes: 1")
    have = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    if have < nodes:
        raise RuntimeError(f"train.nodes = {nodes} but the SLURM job has {have} node(s); "
                           "set resources nodes for rule train in the profile to match")
    head = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                          check=True, capture_output=True, text=True).stdout.split()[0]
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", *run,
            f"--nnodes={nodes}", f"--nproc-per-node={devices}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={head}:{RDZV_PORT}", f"--rdzv-id={env['SLURM_JOB_ID']}", *entry]


def launch(spec: dict, spec_path: Path, devices: int, nodes: int) -> None:
    """Write the job spec and run torchrun; SIGTERM/SIGUSR1 sent to this process
    are passed on so the workers can checkpoint before exiting."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    argv = torchrun_argv(spec_path, devices, nodes)
    env = dict(os.environ)
    workflow_dir = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (workflow_dir, env.get("PYTHONPATH")) if p)
    # The rule's log was opened with mode "w"; reopen it for appending so the
    # lines rank 0 appends are not overwritten by this process's later writes.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.mode != "a":
            handler.acquire()
            try:
                handler.close()
                handler.mode = "a"
                handler.stream = handler._open()
            finally:
                handler.release()
    log.info("launching %d x %d processes: %s", nodes, devices, " ".join(argv))
    proc = subprocess.Popen(argv, env=env)

    def forward(signum, _frame):
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if rc != 0:
        raise RuntimeError(f"distributed training exited with status {rc}; the workers' "
                           "errors are in the log above (rerun resumes from the checkpoint)")
