"""A job's thread count (``runtime.set_threads``, called for every Snakemake job) reaches
torch whether torch is imported after it or before, and costs no torch import itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# 1 first: torch would pick more on any machine with two cores or more.
CHECK = """
import json, sys
from cliptune.runtime import set_threads
set_threads(1)
imported_by_it = "torch" in sys.modules
import torch
before = torch.get_num_threads()
set_threads(2)
print(json.dumps([imported_by_it, before, torch.get_num_threads()]))
"""


def test_thread_count_reaches_torch_imported_later_or_earlier():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO / "workflow")
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          env=env, check=True)
    assert json.loads(proc.stdout) == [False, 1, 2]
