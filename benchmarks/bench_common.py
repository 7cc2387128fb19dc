"""Shared by the benchmarks: machine description, load average, scratch dir, result files,
and the random inputs several of them build (a CLIP checkpoint, a memory-mapped image cache)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"  # git-ignored scratch: generated data, caches
RESULTS = HERE / "results"
sys.path.insert(0, str(REPO / "workflow"))

from cliptune.runtime import cpu_model  # noqa: E402 - one copy: the training report's


def machine() -> str:
    mem = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 2**20
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {gpu}; torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def header(title: str, command: str, load_at_start: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"- Date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine()}",
        f"- Load average at start: {load_at_start}; at end: {load_average()}. The machine is "
        f"shared, so a load above {os.cpu_count()} means other processes competed for the "
        "cores during the run; every comparison below runs both sides in the same process, "
        "interleaved where it matters, so they see the same contention.",
        f"- Command: `{command}`",
        "",
    ]


def write_result(name: str, lines: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    text = "\n".join(lines).rstrip() + "\n"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(text)
    return out


def command_line() -> str:
    return " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


@dataclass(frozen=True)
class TinyClip:
    """A small CLIP shape: both towers ``layers`` x ``width`` (MLP ``intermediate``)."""

    width: int
    intermediate: int
    heads: int
    image_size: int
    projection_dim: int
    layers: int = 2
    patch_size: int = 8


def save_random_clip(folder: Path, shape: TinyClip | None) -> Path:
    """A CLIPModel with random weights and CLIP's BPE tokenizer, saved in ``folder`` (where
    ``model.clip.model`` can point) unless already there. ``shape`` None: transformers'
    default CLIPConfig (ViT-B/32 vision, 12-layer 512-wide text, 512-d projection)."""
    from transformers import CLIPConfig, CLIPModel

    from cliptune.models.clip_bpe import clip_bpe_tokenizer

    if (folder / "config.json").exists():
        return folder
    tok = clip_bpe_tokenizer()
    if shape is None:
        cfg = CLIPConfig()
    else:
        tower = {"hidden_size": shape.width, "intermediate_size": shape.intermediate,
                 "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads}
        cfg = CLIPConfig(text_config={**tower, "vocab_size": len(tok)},
                         vision_config={**tower, "image_size": shape.image_size,
                                        "patch_size": shape.patch_size},
                         projection_dim=shape.projection_dim)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def random_image_cache(path: Path, n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` random ``size`` px images in the image cache's layout (a uint8 NHWC ``.npy``),
    written at ``path`` unless already there, opened memory-mapped."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        tmp = path.with_name(path.name + ".tmp")  # an interrupted run leaves no short cache
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        for i in range(0, n, 512):  # a chunk at a time: large caches exceed memory
            arr[i:i + 512] = rng.integers(0, 256, arr[i:i + 512].shape, dtype=np.uint8)
        arr.flush()
        del arr
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
