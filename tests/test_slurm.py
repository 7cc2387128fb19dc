"""Opt-in: the demo workflow through profiles/slurm on a real single-node SLURM.

Needs root and apt (it installs munge/slurmctld/slurmd); run with
``make test-slurm`` or ``CLIPTUNE_SLURM_TEST=1 pytest tests/test_slurm.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

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
CONFIG["variants"] = {"baseline": {}}


def test_demo_runs_through_the_slurm_profile(tmp_path, repo):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(repo / "scripts/local_slurm.sh"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    table = pd.read_csv(tmp_path / "results/ablation.csv")
    assert list(table["variant"]) == ["baseline"]
    # Every non-local rule ran as a SLURM job (one log folder per submitted rule).
    submitted = {p.name for p in (tmp_path / ".snakemake/slurm_logs").iterdir()}
    assert {"rule_train", "rule_evaluate", "rule_text_embeddings"} <= submitted
    assert "rule_aggregate" not in submitted  # a localrule
    # The daemons were stopped: nothing answers on the test cluster's port any more.
    assert "cluster up" in proc.stderr and "finished with status 0" in proc.stderr
