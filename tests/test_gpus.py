"""Local GPU assignment: each job gets its own devices (fake pool, real file locks)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cliptune.jobs.gpus import GpuRequestError, assign_gpus, gpu_request, local_gpu_limit

HOLD = textwrap.dedent("""
    import os, sys, time
    from cliptune.jobs.gpus import assign_gpus
    env = {"CLIPTUNE_GPU_LOCK_DIR": sys.argv[1]}
    print(assign_gpus(int(sys.argv[2]), env, pool=["0", "1"]), flush=True)
    time.sleep(60)
""")


@pytest.fixture
def locks(tmp_path):
    return {"CLIPTUNE_GPU_LOCK_DIR": str(tmp_path / "locks")}


def hold(locks, count):
    """Another job (a separate process) that takes ``count`` GPUs and keeps them."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, locks["CLIPTUNE_GPU_LOCK_DIR"],
                             str(count)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_two_jobs_get_different_gpus(locks):
    other, got = hold(locks, 1)
    try:
        assert got == "['0']"
        env = dict(locks)
        assert assign_gpus(1, env, pool=["0", "1"]) == ["1"]
        assert env["CUDA_VISIBLE_DEVICES"] == "1"
        # Both taken now: a third job waits (here: times out) instead of sharing one.
        with pytest.raises(TimeoutError, match="no 1 free GPU"):
            assign_gpus(1, dict(locks), pool=["0", "1"], poll_s=0.05, timeout_s=0.3)
    finally:
        other.kill()
        other.wait()
    # The killed job's lock went with it: its GPU is free again at once.
    assert assign_gpus(1, dict(locks), pool=["0", "1"], timeout_s=2) == ["0"]


def test_two_gpu_job_is_all_or_nothing(locks):
    other, got = hold(locks, 1)
    try:
        with pytest.raises(TimeoutError):
            assign_gpus(2, dict(locks), pool=["0", "1"], poll_s=0.05, timeout_s=0.3)
    finally:
        other.kill()
        other.wait()
    env = dict(locks)
    assert assign_gpus(2, env, pool=["0", "1"], timeout_s=2) == ["0", "1"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_no_gpu_asked_means_none_visible(locks):
    env = {**locks, "CUDA_VISIBLE_DEVICES": "0,1"}
    assert assign_gpus(0, env) == [] and env["CUDA_VISIBLE_DEVICES"] == ""


def test_pool_is_the_visible_set_and_too_many_is_an_error(locks):
    env = {**locks, "CUDA_VISIBLE_DEVICES": "2,3"}
    assert assign_gpus(1, env) == ["2"] and env["CUDA_VISIBLE_DEVICES"] == "2"
    with pytest.raises(GpuRequestError, match="asks for 3 GPU"):
        assign_gpus(3, {**locks, "CUDA_VISIBLE_DEVICES": "0,1"})


def test_slurm_jobs_keep_their_allocation(locks):
    env = {**locks, "SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"}
    assert assign_gpus(1, env) is None and env["CUDA_VISIBLE_DEVICES"] == "0"


def test_gpu_request_forms():
    def train(devices, nodes=1, device="auto"):
        return {"devices": devices, "nodes": nodes, "device": device}

    assert gpu_request("a", train(2), None) == {"gpu": 2, "gres": ""}
    assert gpu_request("a", train(4, nodes=2), None) == {"gpu": 0, "gres": "gpu:4"}
    assert gpu_request("a", train(2, device="cpu"), 1) == {"gpu": 0, "gres": ""}
    with pytest.raises(GpuRequestError, match="would shrink the job to 1"):
        gpu_request("a", train(2), 1)
    assert local_gpu_limit({}) is None and local_gpu_limit({"gpu": 3}) == 3
