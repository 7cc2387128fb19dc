"""Cluster and GPU requests: the exact sbatch arguments each rule gets under
profiles/slurm (dry run + the SLURM plugin's own argument builders), no
workstation limits inherited, refused over-large local requests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import TINY, snakemake_batch

from cliptune.config.load import deep_merge

CONFIG = deep_merge(TINY, {"train": {"epochs": 1}, "include_untrained": False})
CONFIG["variants"] = {
    "baseline": {},
    "two_gpus": {"train": {"devices": 2}},
    "two_nodes": {"train": {"devices": 4, "nodes": 2}},
    "on_cpu": {"train": {"device": "cpu"}},
}


def dry_run(workdir: Path, repo: Path, *args: str, config=CONFIG) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["-s", str(repo / "Snakefile"), "--directory", str(workdir), "--configfile",
            str(workdir / "config.yaml"), "-n", *args]
    # Run from the repository, as a user would: profiles/default is then auto-loaded.
    return snakemake_batch([{"args": args, "cwd": repo}])[0]


def _value(text: str):
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def planned_jobs(proc) -> list[dict]:
    """rule, wildcards, threads, benchmark and resources of every job in a dry run."""
    jobs, job = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        if m := re.match(r"^(local)?rule (\w+):$", line):
            job = {"rule": m.group(2), "wildcards": "", "threads": 1, "resources": {},
                   "benchmark": None}
            jobs.append(job)
        elif job and (m := re.match(r"^(wildcards|threads|resources|benchmark): (.*)$", line)):
            key, value = m.groups()
            if key == "resources":
                pairs = (item.split("=", 1) for item in value.split(", "))
                job["resources"] = {k: _value(v) for k, v in pairs}
            else:
                job[key] = _value(value)
    return jobs


def planned_resources(proc) -> list[tuple[str, str, int, dict]]:
    """(rule, wildcards, threads, resources) of every job in a dry run's output."""
    return [(j["rule"], j["wildcards"], j["threads"], j["resources"]) for j in planned_jobs(proc)]


class _Resources(dict):
    """What the plugin reads from job.resources: .get() and attribute access."""

    def __getattr__(self, name):
        return self[name]


def sbatch_args(rule: str, threads: int, resources: dict) -> list[str]:
    """The resource part of the sbatch command line the SLURM plugin builds for a job."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(name=rule, threads=threads, resources=_Resources(resources))
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": f"rule_{rule}",
              "account": "", "partition": "", "workdir": None}
    call = get_submit_command(job, params) + set_gres_string(job)
    flags = call.split(f"--comment rule_{rule}", 1)[1].split()
    return sorted(flags)


@pytest.fixture(scope="module")
def slurm_dry_run(tmp_path_factory, repo):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    workdir = tmp_path_factory.mktemp("slurm_plan")
    # A dry run defaults to --cores 1, which caps every job's threads; a real SLURM run
    # has no --cores (no cap), so plan with more cores than any rule asks for.
    proc = dry_run(workdir, repo, "--profile", str(repo / "profiles/slurm"), "--cores", "64")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def slurm_plan(slurm_dry_run):
    return {(r, wc): (threads, res) for r, wc, threads, res in planned_resources(slurm_dry_run)}


def sbatch_for(plan, rule: str, wildcards: str = "") -> list[str]:
    threads, resources = plan[(rule, wildcards)]
    return sbatch_args(rule, threads, resources)


def cache_job(plan, rule: str, split: str) -> str:
    """Wildcards of the one planned cache job of `split` (caches are keyed by content)."""
    [wildcards] = [wc for r, wc in plan if r == rule and f"ckey={split}-" in wc]
    return wildcards


def test_workflow_profile_holds_no_machine_limits(repo):
    # profiles/default is loaded next to --profile profiles/slurm and wins over it.
    default = yaml.safe_load((repo / "profiles/default/config.yaml").read_text())
    assert not {"cores", "resources", "jobs", "default-resources", "set-resources",
                "executor"} & set(default)
    local = yaml.safe_load((repo / "profiles/local/config.yaml").read_text())
    assert local["resources"] == {"gpu": 1} and local["cores"] == "all"


def test_single_node_train_jobs_get_exactly_their_gpus(slurm_plan):
    one = sbatch_for(slurm_plan, "train", "variant=baseline")
    assert one == sorted(["--gpus=1", "--nodes=1", "--cpus-per-gpu=8", "--mem", "64000",
                          "-t", "720"])
    two = sbatch_for(slurm_plan, "train", "variant=two_gpus")
    assert "--gpus=2" in two and "--nodes=1" in two  # not shrunk to a global gpu=1
    assert not any(f.startswith("--gres") for f in one + two)


def test_multi_node_train_asks_per_node(slurm_plan):
    args = sbatch_for(slurm_plan, "train", "variant=two_nodes")
    # --gres is per node: 2 nodes x 4 GPUs; a --gpus total could be spread unevenly.
    assert "--gres=gpu:4" in args and "--nodes=2" in args
    assert not any(f.startswith("--gpus=") for f in args)


def test_cpu_variant_asks_for_no_gpu(slurm_plan):
    args = sbatch_for(slurm_plan, "train", "variant=on_cpu")
    assert not any(f.startswith(("--gpus", "--gres")) for f in args)
    assert "--cpus-per-task=8" in args


def test_gpu_and_cpu_rules(slurm_plan):
    for rule, wc in [("evaluate", "variant=baseline"),
                     ("text_embeddings", cache_job(slurm_plan, "text_embeddings", "train"))]:
        assert "--gpus=1" in sbatch_for(slurm_plan, rule, wc), rule
    captions = sbatch_for(slurm_plan, "captions", cache_job(slurm_plan, "captions", "train"))
    assert not any(f.startswith(("--gpus", "--gres")) for f in captions)
    assert "--ntasks=1" in captions and "--cpus-per-task=1" in captions
    # Figures read what evaluate wrote (no model): no GPU asked for.
    _, figures = slurm_plan[("figures", "variant=baseline")]
    assert not figures.get("gpu")


def test_local_run_refuses_a_request_above_its_gpu_limit(tmp_path, repo):
    proc = dry_run(tmp_path, repo, "--cores", "2", "--resources", "gpu=1")
    assert proc.returncode != 0
    assert "variant 'two_gpus' asks for 2 GPU(s)" in proc.stdout + proc.stderr
    assert "--resources gpu=2" in proc.stdout + proc.stderr


def test_local_profile_plans_with_enough_gpus(tmp_path, repo):
    config = deep_merge(CONFIG, {})
    config["variants"] = {"baseline": {}, "two_gpus": {"train": {"devices": 2}}}
    proc = dry_run(tmp_path, repo, "--profile", str(repo / "profiles/local"),
                   "--resources", "gpu=2", config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = {(r, w): res for r, w, _, res in planned_resources(proc)}
    assert plan[("train", "variant=two_gpus")]["gpu"] == 2


def test_every_job_has_a_benchmark_memory_and_runtime(slurm_dry_run):
    jobs = [j for j in planned_jobs(slurm_dry_run) if j["rule"] != "all"]
    assert len({j["rule"] for j in jobs}) >= 10
    for job in jobs:
        assert job["benchmark"] and job["benchmark"].endswith(".benchmark.tsv"), job
        assert job["resources"]["mem_mb"] > 0 and job["resources"]["runtime"] > 0, job
    benchmarks = [j["benchmark"] for j in jobs]
    assert len(benchmarks) == len(set(benchmarks))  # one record per job


def test_retries_ask_for_more():
    from cliptune.jobs.resources import grow

    mem = grow(64000)
    assert [mem(None, attempt) for attempt in (1, 2, 3)] == [64000, 96000, 128000]


def test_weights_are_fetched_on_the_submit_host_before_model_jobs(tmp_path, repo):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    config = deep_merge(CONFIG, {"text_encoder": {"model": "openai/clip-vit-base-patch32"},
                                 "model": {"weights": "IMAGENET1K_V1"}})
    config["variants"] = {"baseline": {}}
    proc = dry_run(tmp_path, repo, "--profile", str(repo / "profiles/slurm"), config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Not submitted: compute nodes may be offline (the dry run does not mark local rules).
    assert re.search(r"localrules:\s+weights,", (repo / "workflow/rules/weights.smk").read_text())
    jobs = planned_jobs(proc)
    keys = {j["wildcards"] for j in jobs if j["rule"] == "weights"}
    assert keys == {"wkey=hf/openai--clip-vit-base-patch32@main",
                    "wkey=torchvision/resnet18.IMAGENET1K_V1"}
    # Every model-loading job waits for the markers of what it loads.
    hub = "resources/weights/hf/openai--clip-vit-base-patch32@main.json"
    for rule in ("text_embeddings", "train", "evaluate"):
        assert any(j["rule"] == rule for j in jobs)
    assert hub in text_of(proc, "train") and hub in text_of(proc, "text_embeddings")


def text_of(proc, rule: str) -> str:
    """The dry run's block for the first job of ``rule``."""
    text = proc.stdout + proc.stderr
    return text.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]
