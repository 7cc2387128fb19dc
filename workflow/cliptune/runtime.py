"""Process-level helpers shared by the stages: logging, devices, threads, seeds."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

# torch is imported inside the functions that need it: the Snakefile imports
# this module (via captions) at parse time, and a no-op `snakemake -n` should
# not pay several seconds for importing torch.


def setup_logging(log_file: str | None = None, level=logging.INFO) -> None:
    """Log to stderr and, under Snakemake, to the rule's ``log:`` file too."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)


def progress(iterable=None, **kwargs):
    """tqdm that redraws rarely when stderr is a log file rather than a terminal."""
    from tqdm import tqdm

    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


class DeviceError(RuntimeError):
    pass


def pick_device(requested: str = "auto"):
    """CUDA when present; a GPU asked for but not visible fails fast instead of
    silently training for hours on the CPU."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "train.device = cuda but no CUDA device is visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); request a GPU from the "
            "scheduler (--resources gpu=1 / the slurm profile) or set device: auto or cpu"
        )
    return torch.device(requested)


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device) -> dict:
    """What trained the model, for train_report.json and the lab report: GPU name, total
    and peak allocated memory (torch.cuda.max_memory_allocated since the last reset) on
    CUDA; CPU model and the threads torch used otherwise."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"kind": "cuda", "gpu": props.name, "gpu_count": torch.cuda.device_count(),
                "gpu_memory_gb": round(props.total_memory / 2**30, 2),
                "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {"kind": device.type, "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def set_threads(threads: int | None) -> None:
    """Honour the rule's ``threads``. torch takes its thread count from OMP_NUM_THREADS
    when it is first imported, so a job that never needs torch (tables, plots, copies)
    does not pay for importing it here; a torch already imported is set directly."""
    if not threads:
        return
    count = max(1, int(threads))
    os.environ["OMP_NUM_THREADS"] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device):
    """bf16 on GPUs by default; fp32 on the CPU where autocast buys little."""
    import torch

    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def embed_all(encode, batches, device, amp_dtype, sink=None):
    """``encode(batch)`` for every batch of ``batches``, without gradients and under
    autocast at ``amp_dtype`` (None: full precision): the one loop that embeds a whole set
    (evaluation, the folder search, hard-negative mining, the trunk feature cache).

    Returns the outputs concatenated (an empty tensor for no batches), or None when every
    output went to ``sink`` instead (a set too large to hold in memory)."""
    import torch

    outs = []
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                         enabled=amp_dtype is not None):
        for batch in batches:
            out = encode(batch)
            if sink is None:
                outs.append(out)
            else:
                sink(out)
    if sink is not None:
        return None
    return torch.cat(outs) if outs else torch.empty(0)
