"""`make bench-gpu` in its CPU mode: the GPU check must run end to end on a machine
without a GPU, so it is not broken when one appears."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_bench_gpu_cpu_mode_runs_every_section(repo, tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_gpu.py"),
                           "--mode", "cpu-tiny", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "failed" not in text and "skipped" not in text, text
    for model in ("lab baseline (ResNet50", "CLIP ViT-B/32", "ViT-B/16 dual encoder"):
        rows = [line for line in text.splitlines() if line.startswith(f"| {model}")]
        assert len(rows) == 2, (model, text)
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert float(cells[2]) > 0 and float(cells[3]) > 0, row  # both loops trained
    assert re.search(r"BatchLoader deliver \*\*\d+ images/s", text), text
    assert re.search(r"\| 400 x 2,000 \| \d+\.\d+ \| \d+\.\d+ \|", text), text
