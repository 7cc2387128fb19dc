"""Opt-in: the demo workflow through profiles/slurm on a real single-node SLURM.

Needs root and apt (it installs munge/slurmctld/slurmd); run with
``make test-slurm`` or ``CLIPTUNE_SLURM_TEST=1 pytest tests/test_slurm.py``.

One run checks what a cluster user relies on: two single-GPU trainings at the same
time, a ``devices: 2`` variant on two GPUs, a preempted training job that SLURM
requeues and that resumes from its checkpoint to the uninterrupted result, and the
``weights`` step on the submit host with every GPU job loading offline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO_ID, TINY, FakeHub
from safetensors.torch import load_file

from cliptune.config.load import deep_merge

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("CLIPTUNE_SLURM_TEST") != "1",
                       reason="opt-in: set CLIPTUNE_SLURM_TEST=1 (or make test-slurm)"),
]

# The end-to-end test's tiny config, smaller still: model selection on the eval split
# (three fewer data jobs), a text encoder from the stand-in hub (so a weights job
# exists), two epochs so a training job can be caught mid-run, a step log every step.
CONFIG = deep_merge(TINY, {
    "dataset": {"demo": {"train_images": 96, "val_images": 32}, "selection": {"split": "val"}},
    "text_encoder": {"model": REPO_ID},
    "model": {"head": {"hidden_dim": 32}},
    "train": {"epochs": 2, "log_every_steps": 1},
    "eval": {"score_memory_mb": 0.02},
    "include_untrained": False,
})
# Two single-GPU variants with the same settings (the fake node has two GPUs: they run
# side by side; one is requeued mid-run and must end where the other does) and one
# that trains on two GPUs (torchrun, gloo on the CPU here) and gets SIGTERM mid-run,
# as `--signal=TERM@N` sends it, after its first epoch, then resumes in Snakemake's
# retry (four epochs, so that it is still training when the signal comes).
CONFIG["variants"] = {"baseline": {}, "preempted": {},
                      "two_gpus": {"train": {"devices": 2, "epochs": 4}}}
MARKER = f"resources/weights/hf/{REPO_ID.replace('/', '--')}@main.json"
OFFLINE = "pretrained weights load from {} only (HF_HUB_OFFLINE=1)"


class Cluster:
    """What the test does to the running cluster, from a thread beside the workflow."""

    def __init__(self, run: Path, state: Path, hub: FakeHub):
        self.run, self.hub = run, hub
        self.env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
        self.hub_requests_at_marker: int | None = None
        self.requeued: dict | None = None  # job id, squeue snapshot, requeue result
        self.termed: dict | None = None  # the same for the SIGTERM to two_gpus's job steps
        self.error: str | None = None  # what stopped the watcher, if anything did

    def squeue(self) -> list[list[str]]:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], env=self.env,
                             capture_output=True, text=True, timeout=30).stdout
        return [line.split("|") for line in out.splitlines()]

    def watch(self, proc: subprocess.Popen) -> None:
        try:
            self._watch(proc)
        except Exception as exc:  # a thread's exception would go unseen: keep it for the test
            self.error = repr(exc)

    def _watch(self, proc: subprocess.Popen) -> None:
        while proc.poll() is None:
            if self.hub_requests_at_marker is None and (self.run / MARKER).exists():
                # From now on the hub is gone: a job that reached for it would fail.
                self.hub_requests_at_marker = len(self.hub.requests)
                self.hub.shutdown()
                self.hub.server_close()
            if self.requeued is None and self.stepped("preempted"):
                self.requeued = self.signal("preempted", ["scontrol", "requeue"])
            elif self.requeued and not self.requeued.get("released"):
                self.release()
            if self.termed is None and "epoch 1:" in self.log("two_gpus"):
                # What --signal=TERM@N does: SIGTERM to every process of the job steps.
                self.termed = self.signal("two_gpus", ["scancel", "--signal=TERM"])
            time.sleep(0.2)

    def stepped(self, variant: str) -> bool:
        """A training step is logged (log_every_steps: 1): the job is inside its
        signal-guarded loop."""
        return "step 1 (epoch 1)" in self.log(variant)

    def log(self, variant: str) -> str:
        """The training log (torchrun's rank 0 logs there)."""
        path = self.run / f"logs/tiny/train/{variant}.log"
        return path.read_text() if path.exists() else ""

    def signal(self, variant: str, command: list[str]) -> dict | None:
        """Run ``command JOBID`` on the variant's training job (``scontrol requeue``: what
        a preempting scheduler does to a --requeue job, SIGTERM then requeue)."""
        jobs = self.squeue()
        job = next((j for j, comment, _ in jobs
                    if comment == f"rule_train_wildcards_{variant}"), None)
        if job is None:  # not listed yet: try again at the next poll
            return None
        done = subprocess.run([*command, job], env=self.env, capture_output=True, text=True,
                              timeout=30)
        return {"job": job, "jobs": jobs, "rc": done.returncode, "err": done.stderr}

    def release(self) -> None:
        """SLURM holds a requeued job for 121 s before it may start again (a real cluster
        does too); once it is pending, let it start now to keep the test short."""
        job = self.requeued["job"]
        if [j for j, _, state in self.squeue() if j == job and state == "PENDING"]:
            done = subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                                  env=self.env, capture_output=True, timeout=30)
            self.requeued["released"] = done.returncode == 0


def run_workflow(tmp_path: Path, repo: Path, hub: FakeHub) -> tuple[int, str, Cluster]:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME")}
    # The state folder must be reachable by the munge user: not below pytest's 0700 tmp.
    state = Path(tempfile.mkdtemp(prefix="cliptune-slurm."))  # the script removes it
    # RETRIES: the profile's retries (2), lowered to the one the SIGTERMed job needs.
    env.update(PYTHON=sys.executable, HF_ENDPOINT=hub.url, SLURM_STATE=str(state), RETRIES="1")
    cluster = Cluster(tmp_path, state, hub)
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(["bash", str(repo / "scripts/local_slurm.sh"), str(tmp_path)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        watcher = threading.Thread(target=cluster.watch, args=(proc,), daemon=True)
        watcher.start()
        try:
            rc = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                proc.terminate()  # the script's trap stops the daemons
                proc.wait(timeout=60)
        watcher.join(timeout=30)
    return rc, (tmp_path / "out.txt").read_text(), cluster


def slurm_jobs(path: Path) -> dict[str, dict[str, str]]:
    """`scontrol show job --oneliner` records by job id (key=value fields)."""
    jobs = {}
    for line in path.read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def test_demo_runs_through_the_slurm_profile(tmp_path, repo, tiny_clip_dir):
    files = {p.name: p.read_bytes() for p in tiny_clip_dir.iterdir() if p.is_file()}
    hub = FakeHub(files)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        rc, out, cluster = run_workflow(tmp_path, repo, hub)
    finally:
        hub.shutdown()  # a no-op wait when the watcher already stopped it
    assert rc == 0, out[-8000:]
    assert cluster.error is None, cluster.error
    assert "cluster up" in out and "finished with status 0" in out
    table = pd.read_csv(tmp_path / "results/ablation.csv")
    assert list(table["variant"]) == ["baseline", "preempted", "two_gpus"]
    jobs = slurm_jobs(tmp_path / "slurm_jobs.txt")
    check_gpus(tmp_path, cluster)
    check_preemption(tmp_path, cluster, jobs)
    check_weights_offline(tmp_path, out, cluster, jobs)


def check_gpus(run: Path, cluster: Cluster) -> None:
    logs = run / "logs/tiny/train"
    # Each single-GPU job got one GPU of its own from SLURM ...
    seen = {re.search(r"CUDA_VISIBLE_DEVICES=(\S*) \(assigned by SLURM\)",
                      (logs / f"{v}.log").read_text()).group(1) for v in ("baseline", "preempted")}
    assert seen <= {"0", "1"}, seen
    # ... and single-GPU jobs share the two-GPU node: when preempted was requeued,
    # another single-GPU job (baseline's training, or its evaluation when the two-GPU
    # job was queued between the two trainings) ran beside it.
    running = {c for _, c, s in cluster.requeued["jobs"] if s == "RUNNING"}
    assert "rule_train_wildcards_preempted" in running, cluster.requeued
    beside = {"rule_train_wildcards_baseline", "rule_evaluate_wildcards_baseline"}
    assert running & beside, cluster.requeued
    # devices: 2 was submitted with two GPUs (sbatch --gpus=2) and trained on both.
    two = (logs / "two_gpus.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=0,1 (assigned by SLURM)" in two
    assert "launching 1 x 2 processes" in two


def check_preemption(run: Path, cluster: Cluster, jobs: dict) -> None:
    assert cluster.requeued and cluster.requeued["rc"] == 0, cluster.requeued
    # SLURM requeued the job (same id, started twice); Snakemake did not resubmit it.
    job = jobs[cluster.requeued["job"]]
    assert job["Restarts"] == "1" and job["JobState"] == "COMPLETED", job
    # The second start resumed from the state the first one saved on SIGTERM ...
    log = (run / "logs/tiny/train/preempted.log").read_text()
    resumed = re.search(r"resuming preempted from results/tiny/checkpoints/preempted/state.pt "
                        r"at epoch (\d+) step (\d+)", log)
    assert resumed, log[-3000:]
    assert (int(resumed.group(1)), int(resumed.group(2))) > (1, 0), resumed.group(0)
    # ... and ended with the weights and numbers of the uninterrupted twin.
    variants = run / "results/tiny/variants"
    a, b = (load_file(variants / v / "model.safetensors") for v in ("baseline", "preempted"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    ma, mb = (json.loads((variants / v / "metrics.json").read_text())
              for v in ("baseline", "preempted"))
    ma.pop("variant"), mb.pop("variant")
    assert ma == mb and ma["rsum"] > 0, (ma, mb)
    check_term_and_retry(run, cluster, jobs)


def check_term_and_retry(run: Path, cluster: Cluster, jobs: dict) -> None:
    """SIGTERM to the job steps of the two-GPU training (torchrun): it saved, the job
    failed, and Snakemake's retry (a second SLURM job) resumed from that state."""
    assert cluster.termed and cluster.termed["rc"] == 0, cluster.termed
    mine = sorted((int(j), f["JobState"]) for j, f in jobs.items()
                  if f.get("Comment") == "rule_train_wildcards_two_gpus")
    assert [state for _, state in mine] == ["FAILED", "COMPLETED"], mine
    assert str(mine[0][0]) == cluster.termed["job"], (mine, cluster.termed)
    log = (run / "logs/tiny/train/two_gpus.log").read_text()
    resumed = re.search(r"resuming two_gpus from results/tiny/checkpoints/two_gpus/state.pt "
                        r"at epoch (\d+) step (\d+)", log)
    assert resumed, log[-3000:]
    assert (int(resumed.group(1)), int(resumed.group(2))) > (1, 0), resumed.group(0)


def check_weights_offline(run: Path, out: str, cluster: Cluster, jobs: dict) -> None:
    # The weights step ran in the snakemake process on the submit host, never as a job ...
    assert "localrule weights:" in out
    assert not (run / ".snakemake/slurm_logs/rule_weights").exists()
    rules = {j.get("Comment", "") for j in jobs.values()}
    assert not [r for r in rules if r.startswith("rule_weights")], rules
    assert {"rule_train_wildcards_baseline", "rule_evaluate_wildcards_baseline"} <= rules
    # ... fetched from the hub, which was shut down once its marker existed: every GPU
    # job after it loaded from resources/weights with the hub offline.
    assert cluster.hub_requests_at_marker, "the weights step never reached the stand-in hub"
    line = OFFLINE.format(run / "resources/weights")
    logs = run / "logs/tiny"
    # Caches are shared between studies: their logs live under logs/cache/.
    text_logs = list((run / "logs/cache").glob("text/*/train-*.log"))
    assert text_logs, "no text_embeddings log"
    for log in [*text_logs, logs / "train/baseline.log",
                logs / "evaluate/baseline.log"]:
        assert line in log.read_text(), log
