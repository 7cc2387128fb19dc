"""Replicated training seeds end to end: one job per seed, cached per seed, one table row
(the baseline of the suite's finished toy run, conftest.TOY_RUN, has seeds 0 and 1)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import AGGREGATES, TOY_RUN, dry_run_of_toy_run_with, planned
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TARGET = "results/ablation.csv"


def test_seeds_run_as_separate_cached_jobs(toy_run, repo):
    vdir = toy_run.workdir / "results/tiny/variants/baseline"
    # The first seed keeps the single-seed paths; the second gets its own folder.
    primary, replicate = vdir / "model.safetensors", vdir / "seed1/model.safetensors"
    assert primary.is_file() and replicate.is_file()
    a, b = load_file(str(primary)), load_file(str(replicate))
    assert any(not a[k].equal(b[k]) for k in a)  # different seeds, different weights
    assert json.loads((vdir / "seed1/train_report.json").read_text())["config"]["train"][
        "seed"] == 1
    table = pd.read_csv(toy_run.workdir / TARGET).set_index("variant")
    assert table["n_seeds"].to_dict() == {"baseline": 2, "frozen": 1, "untrained": 1}
    assert table.loc["baseline", "rsum_seed_std"] >= 0

    # A third seed schedules that seed's training and evaluation plus the aggregates only.
    cfg = json.loads(json.dumps(TOY_RUN))
    cfg["variants"]["baseline"]["train"]["seeds"] = [0, 1, 2]
    jobs = planned(dry_run_of_toy_run_with(toy_run.workdir, repo, cfg, TARGET))
    per_run = {(r, w) for r, w in jobs if r not in AGGREGATES}
    assert per_run == {("train", "variant=baseline/seed2"),
                       ("evaluate", "variant=baseline/seed2")}, jobs
    assert {r for r, _ in jobs} - {"train", "evaluate"} == {"aggregate", "current_study"}
