"""GPU requests and local GPU assignment.

Two halves of one contract:

* What a job asks the scheduler for (``gpu_request``): the ``gpu`` / ``gres``
  resources of a rule. Under SLURM (snakemake-executor-plugin-slurm 2.x) the
  ``gpu`` resource becomes ``sbatch --gpus=N``, a total for the job, and
  ``gres`` becomes ``--gres=gpu:N``, a count *per node*; a multi-node training
  run therefore asks with ``gres`` so every node gets ``train.devices`` GPUs.
* Which devices a local job may touch (``assign_gpus``): Snakemake only counts
  GPU slots, it assigns no device ids, so two jobs started with
  ``--resources gpu=2`` would both use ``cuda:0``. Each job takes its GPUs
  from a small lock-file allocator and exports ``CUDA_VISIBLE_DEVICES`` before
  torch starts CUDA; a job that asked for no GPU sees none.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

log = logging.getLogger("cliptune.jobs.gpus")

LOCK_DIR_ENV = "CLIPTUNE_GPU_LOCK_DIR"
# Lock files stay open for the life of the job process: the kernel releases them
# when it exits, however it exits (SIGKILL included), so no lock is ever stale.
_HELD: list = []


class GpuRequestError(ValueError):
    """A job asks for more GPUs than it can be given."""


def train_gpus(train: Mapping) -> int:
    """GPUs one training run occupies in total: a CPU run needs none."""
    if train["device"] == "cpu":
        return 0
    return int(train["devices"]) * int(train["nodes"])


def gpu_request(name: str, train: Mapping, local_limit: int | None) -> dict:
    """Resources for the ``train`` rule of variant ``name``.

    ``local_limit`` is the run's global ``--resources gpu=N`` (None: unlimited).
    Snakemake silently lowers a job's request to that limit, and torchrun would
    then start ``devices`` workers on fewer GPUs; refuse instead.
    """
    total = train_gpus(train)
    if local_limit is not None and total > local_limit:
        raise GpuRequestError(
            f"variant {name!r} asks for {total} GPU(s) (train.devices x train.nodes) but this "
            f"run allows --resources gpu={local_limit}; Snakemake would shrink the job to "
            f"{local_limit} GPU(s). Pass --resources gpu={total} (the machine must have that "
            "many), lower train.devices, or set train.device: cpu. On a cluster, run with "
            "--profile profiles/slurm and no global gpu limit (docs/cluster.md)."
        )
    nodes = int(train["nodes"])
    if total and nodes > 1:
        # --gpus=N would be a job total that SLURM may spread unevenly over the nodes.
        return {"gpu": 0, "gres": f"gpu:{int(train['devices'])}"}
    return {"gpu": total, "gres": ""}


def local_gpu_limit(global_resources: Mapping) -> int | None:
    """The run's ``--resources gpu=N`` (a Snakemake Resource or a plain int), if any."""
    res = global_resources.get("gpu")
    value = getattr(res, "value", res)
    return None if value is None else int(value)


def count_gpus() -> int:
    """NVIDIA GPUs on this host, found without starting CUDA (CUDA_VISIBLE_DEVICES
    must still be changeable afterwards)."""
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def gpu_pool(env: Mapping[str, str]) -> list[str]:
    """Devices this process may hand out: an existing CUDA_VISIBLE_DEVICES, else all."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    return [str(i) for i in range(count_gpus())]


def lock_dir(env: Mapping[str, str]) -> Path:
    # Per user and host-local: every cliptune run of this user on this machine shares it.
    return Path(env.get(LOCK_DIR_ENV) or f"/tmp/cliptune-gpu-locks-{os.getuid()}")


def _try_lock(directory: Path, device: str):
    path = directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open on purpose until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _acquire(directory: Path, pool: list[str], count: int):
    """All-or-nothing: ``count`` free devices and their lock handles, or None."""
    got = []
    for device in pool:
        handle = _try_lock(directory, device)
        if handle is not None:
            got.append((device, handle))
            if len(got) == count:
                return got
    for _, handle in got:
        handle.close()
    return None


def assign_gpus(count: int, env: MutableMapping[str, str] | None = None, *,
                pool: list[str] | None = None, poll_s: float = 2.0,
                timeout_s: float | None = None) -> list[str] | None:
    """Give this job ``count`` GPUs of its own by setting CUDA_VISIBLE_DEVICES.

    Call before torch initialises CUDA. Returns the devices, or None where the
    scheduler already decided (inside a SLURM job, which sees only its own GPUs).
    ``count == 0`` hides every GPU: a job that did not ask for one must not use one.
    Waits while other cliptune jobs hold the GPUs (a global ``--resources gpu=N``
    above the number of GPUs); a request larger than the machine is an error.
    """
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" in env:
        log.info("SLURM job %s: CUDA_VISIBLE_DEVICES=%s (assigned by SLURM)", env["SLURM_JOB_ID"],
                 env.get("CUDA_VISIBLE_DEVICES", "<unset>"))
        return None
    if count <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
        return []
    pool = gpu_pool(env) if pool is None else pool
    if not pool:
        log.info("job asked for %d GPU(s) but this host has none visible; torch sees no GPU",
                 count)
        return []
    if count > len(pool):
        raise GpuRequestError(
            f"job asks for {count} GPU(s) but this host has {len(pool)} ({','.join(pool)}); "
            f"lower the request (train.devices) or the run's --resources gpu=N to {len(pool)}")
    directory = lock_dir(env)
    directory.mkdir(parents=True, exist_ok=True)
    start = next_note = time.monotonic()
    while (got := _acquire(directory, pool, count)) is None:
        now = time.monotonic()
        if timeout_s is not None and now - start > timeout_s:
            raise TimeoutError(f"no {count} free GPU(s) among {pool} after {timeout_s:.0f} s "
                               f"(locks in {directory})")
        if now >= next_note:  # say why the job is idle, once a minute
            log.info("waiting for %d free GPU(s) among %s (held by other jobs; locks in %s)",
                     count, ",".join(pool), directory)
            next_note = now + 60
        time.sleep(poll_s)
    _HELD.extend(handle for _, handle in got)
    devices = [device for device, _ in got]
    # Number GPUs as nvidia-smi does, so the ids in the pool mean the same to CUDA.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    log.info("GPU job: CUDA_VISIBLE_DEVICES=%s", env["CUDA_VISIBLE_DEVICES"])
    return devices
