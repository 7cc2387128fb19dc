"""Evaluation memory stays bounded as the data grows: the blocked scoring and the
bootstrap hold one block of scores and per-image counts, never the images x captions
score matrix. Each size runs in a fresh process; its peak RSS above the inputs
(VmHWM, reset once the embeddings exist and a small warm-up run has loaded everything)
is compared."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MEASURE = r"""
import json, sys
from pathlib import Path
import torch
from cliptune.config.load import DEFAULTS
from cliptune.evaluation.bootstrap import Ranks, metric_intervals
from cliptune.evaluation.retrieval_metrics import retrieval_metrics_and_ranks

torch.set_num_threads(1)

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024

def evaluate(n):
    g = torch.Generator().manual_seed(n)
    img = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5 * n, 16, generator=g), dim=1)
    idx = torch.arange(5 * n) % n
    return img, txt, idx

def run(img, txt, idx):
    _, r_i2t, r_t2i = retrieval_metrics_and_ranks(img, txt, idx, block_size=128)
    ranks = Ranks.of(r_i2t, r_t2i, idx, torch.arange(len(img)), torch.arange(len(txt)))
    metric_intervals(ranks, DEFAULTS["eval"]["ks"], DEFAULTS["bootstrap"])

run(*evaluate(40))  # warm-up: lazy imports, thread pool, allocator
inputs = evaluate(int(sys.argv[1]))
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
base = rss("VmRSS:")
run(*inputs)
print(json.dumps({"extra": rss("VmHWM:") - base}))
"""


def extra_peak(n: int) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(n)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc VmHWM")
def test_evaluation_and_bootstrap_memory_grows_at_most_linearly():
    n = 1000
    small, large = extra_peak(n), extra_peak(4 * n)
    full_matrix = 4 * n * 5 * 4 * n * 4  # float32 images x captions scores at 4x the data
    # 4x the data is 16x the image-caption pairs; blocked scoring and per-image bootstrap
    # counts grow with images + captions only (4x), so 2x slack on linear growth still
    # fails any method whose memory follows the pairs.
    assert large < 2 * 4 * max(small, 1 << 20), (small, large)
    assert large < full_matrix / 4, (large, full_matrix)
