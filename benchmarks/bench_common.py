"""Shared by the benchmarks: machine description, load average, scratch dir, result files."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

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
