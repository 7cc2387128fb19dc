"""Opt-in: the demo workflow through profiles/slurm on a real single-node SLURM.

Needs root and apt (it installs munge/slurmctld/slurmd); run with
``make test-slurm`` or ``CLIPTUNE_SLURM_TEST=1 pytest tests/test_slurm.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime

import pandas as pd
import pytest
import yaml
from test_workflow import TINY

from cliptune.config import deep_merge

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("CLIPTUNE_SLURM_TEST") != "1",
                       reason="opt-in: set CLIPTUNE_SLURM_TEST=1 (or make test-slurm)"),
]

# The end-to-end test's tiny config, smaller still: one variant, one epoch.
CONFIG = deep_merge(TINY, {
    "dataset": {"demo": {"train_images": 64, "val_images": 32}},
    "model": {"head": {"hidden_dim": 32}},
    "train": {"epochs": 1},
    "eval": {"block_size": 16},
    "include_untrained": False,
})
# Two single-GPU variants (the fake node has two GPUs: they must run side by side) and
# one that trains on two GPUs (torchrun, gloo on the CPU here).
CONFIG["variants"] = {"baseline": {}, "second": {"train": {"seed": 1}},
                      "two_gpus": {"train": {"devices": 2}}}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_span(path):
    """First and last timestamp of a job's log."""
    stamps = [m.group(1) for line in path.read_text().splitlines() if (m := STAMP.match(line))]
    parse = lambda s: datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    return parse(stamps[0]), parse(stamps[-1])


def test_demo_runs_through_the_slurm_profile(tmp_path, repo):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(repo / "scripts/local_slurm.sh"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    table = pd.read_csv(tmp_path / "results/ablation.csv")
    assert list(table["variant"]) == ["baseline", "second", "two_gpus"]
    logs = tmp_path / "logs/tiny/train"
    # Each single-GPU job got one GPU of its own from SLURM, and they overlapped in time.
    seen = {re.search(r"CUDA_VISIBLE_DEVICES=(\S*) \(assigned by SLURM\)",
                      (logs / f"{v}.log").read_text()).group(1) for v in ("baseline", "second")}
    assert seen <= {"0", "1"}, seen
    (a0, a1), (b0, b1) = log_span(logs / "baseline.log"), log_span(logs / "second.log")
    assert a0 < b1 and b0 < a1, f"single-GPU trainings ran one after the other: {a0}-{a1}, {b0}-{b1}"
    # devices: 2 was submitted with two GPUs (sbatch --gpus=2) and trained on both.
    two = (logs / "two_gpus.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=0,1 (assigned by SLURM)" in two
    assert "launching 1 x 2 processes" in two
    # Every non-local rule ran as a SLURM job (one log folder per submitted rule).
    submitted = {p.name for p in (tmp_path / ".snakemake/slurm_logs").iterdir()}
    assert {"rule_train", "rule_evaluate", "rule_text_embeddings"} <= submitted
    assert "rule_aggregate" not in submitted  # a localrule
    # The daemons were stopped: nothing answers on the test cluster's port any more.
    assert "cluster up" in proc.stderr and "finished with status 0" in proc.stderr
