"""Two runs at once in one directory: Snakemake's lock refuses a second run whose jobs
overlap the running one's files (the same study, or another study that needs a shared
cache the first is still writing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY

from cliptune.config.load import deep_merge

pytestmark = pytest.mark.slow

# conftest's TINY cut to one variant and one epoch: the check needs only a run that holds
# its lock while the second starts.
TOY = {
    **deep_merge(TINY, {
        "dataset": {"demo": {"train_images": 48, "val_images": 24}},
        "model": {"head": {"hidden_dim": 32}},
        "train": {"epochs": 1},
        "include_untrained": False,
    }),
    "variants": {"baseline": {}},
}


def command(repo: Path, workdir: Path, config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory",
            str(workdir), "--configfile", str(workdir / config), "--cores", "1", *args]


def test_a_second_run_is_locked_out_while_the_first_runs(tmp_path, repo):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({**TOY, "study": "a"}))
    other = {"other": {"train": {"lr": 1.0e-3}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(
        {**TOY, "study": "b", "baseline": "other", "variants": other}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command(repo, tmp_path, "a.yaml"), env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first.poll() is None, "the first run ended before it took its lock"
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        for config in ("a.yaml", "b.yaml"):  # same study; a study sharing its caches
            second = subprocess.run(command(repo, tmp_path, config), env=env,
                                    capture_output=True, text=True, timeout=180)
            assert first.poll() is None, "the first run finished: the check proved nothing"
            out = second.stdout + second.stderr
            assert second.returncode != 0 and "LockException" in out, (config, out)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The killed run left its lock; --unlock (the documented step) clears it.
    unlock = subprocess.run(command(repo, tmp_path, "a.yaml", "--unlock"), env=env,
                            capture_output=True, text=True, timeout=180)
    assert unlock.returncode == 0, unlock.stderr
    locks = tmp_path / ".snakemake" / "locks"
    assert not locks.exists() or not any(locks.iterdir())
