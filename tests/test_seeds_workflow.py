"""Replicated training seeds end to end: one job per seed, cached per seed, one table row."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from safetensors.torch import load_file
from test_workflow import AGGREGATES, planned, snakemake, write_config

pytestmark = pytest.mark.slow

SEEDED = {
    "dataset": {
        "name": "seeded",
        "source": "demo",
        "demo": {"train_images": 48, "val_images": 24, "image_size": 32, "seed": 2},
    },
    "image_size": 24,
    "text_encoder": {"model": "offline-minilm", "max_length": 16},
    "model": {"backbone": "resnet18", "weights": None, "head": {"hidden_dim": 32}},
    "train": {"epochs": 1, "batch_size": 16, "seeds": [0, 1]},
    "bootstrap": {"resamples": 200},
    "include_untrained": False,
    "variants": {"baseline": {}},
}
TARGET = "results/ablation.csv"


def test_seeds_run_as_separate_cached_jobs(tmp_path, repo):
    write_config(tmp_path, SEEDED)
    snakemake(tmp_path, repo, TARGET)
    vdir = tmp_path / "results/seeded/variants/baseline"
    # The first seed keeps the single-seed paths; the second gets its own folder.
    primary, replicate = vdir / "model.safetensors", vdir / "seed1/model.safetensors"
    assert primary.is_file() and replicate.is_file()
    a, b = load_file(str(primary)), load_file(str(replicate))
    assert any(not a[k].equal(b[k]) for k in a)  # different seeds, different weights
    assert json.loads((vdir / "seed1/train_report.json").read_text())["config"]["train"][
        "seed"] == 1
    table = pd.read_csv(tmp_path / TARGET)
    assert list(table["variant"]) == ["baseline"] and int(table.loc[0, "n_seeds"]) == 2
    assert table.loc[0, "rsum_seed_std"] >= 0

    # A third seed schedules that seed's training and evaluation plus the aggregates only.
    cfg = json.loads(json.dumps(SEEDED))
    cfg["train"]["seeds"] = [0, 1, 2]
    write_config(tmp_path, cfg)
    jobs = planned(snakemake(tmp_path, repo, "-n", TARGET))
    per_run = {(r, w) for r, w in jobs if r not in AGGREGATES}
    assert per_run == {("train", "variant=baseline/seed2"),
                       ("evaluate", "variant=baseline/seed2")}, jobs
    assert {r for r, _ in jobs} - {"train", "evaluate"} == {"aggregate", "current_study"}
