"""The ablation table, paired comparison and chart from metrics and per-query ranks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rank_samples import synthetic_ranks

from cliptune.evaluation.bootstrap import Ranks, point_metrics, save_ranks
from cliptune.reporting.ablation import COLUMNS, METRICS, write_ablation

SETTINGS = {"resamples": 300, "confidence": 0.95, "seed": 0, "memory_mb": 64}
KS = (1, 5, 10, 50)


def write_run(tmp_path, name: str, ranks: Ranks):
    """metrics.json (as evaluate writes it) and ranks.safetensors of one run."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(point_metrics(ranks, KS)))
    save_ranks(folder / "ranks.safetensors", ranks)
    return folder / "metrics.json", folder / "ranks.safetensors"


@pytest.fixture
def study(tmp_path):
    """baseline, a clearly better variant with two seeds, a same-as-baseline variant."""
    rng = np.random.default_rng(0)
    hit = rng.beta(2, 3, 200)
    runs = {"baseline": synthetic_ranks(200, 5, hit, rng),
            "better": synthetic_ranks(200, 5, np.clip(hit + 0.2, 0, 1), rng),
            "better/seed1": synthetic_ranks(200, 5, np.clip(hit + 0.15, 0, 1), rng),
            "same": synthetic_ranks(200, 5, hit, rng)}
    files = {name: write_run(tmp_path, name, r) for name, r in runs.items()}
    metrics = {v: files[v][0] for v in ("baseline", "better", "same")}
    ranks = {v: files[v][1] for v in ("baseline", "better", "same")}
    run_files = {"baseline": [files["baseline"][0]],
                 "better": [files["better"][0], files["better/seed1"][0]],
                 "same": [files["same"][0]]}
    return tmp_path, metrics, ranks, run_files


def run_ablation(tmp_path, metrics, ranks, run_files):
    out = tmp_path / "out"
    table = write_ablation(metrics, ranks, run_files, "baseline", SETTINGS, out / "a.csv",
                           out / "a.png", out / "paired.csv", ks=KS)
    return table, pd.read_csv(out / "a.csv"), pd.read_csv(out / "paired.csv")


def test_table_keeps_its_first_columns_and_adds_intervals_and_seeds(study):
    table, csv, _ = run_ablation(*study)
    assert list(csv.columns[:8]) == COLUMNS
    assert list(csv["variant"]) == ["baseline", "better", "same"]
    # rsum is over the six standard recalls even when eval.ks has more cut-offs.
    row = csv.set_index("variant").loc["better"]
    assert row["rsum"] == pytest.approx(sum(row[c] for c in COLUMNS[1:7]), abs=1e-3)
    for m in METRICS:
        assert (csv[f"{m}_lo"] <= csv[m] + 1e-3).all() and (csv[m] <= csv[f"{m}_hi"] + 1e-3).all()
    assert list(csv["n_seeds"]) == [1, 2, 1]
    assert row["rsum_seed_std"] > 0 and math.isnan(csv.loc[0, "rsum_seed_std"])
    assert row["rsum_seed_mean"] < row["rsum"]  # seed1 was built weaker than the primary
    with Image.open(study[0] / "out" / "a.png") as img:
        assert img.format == "PNG" and min(img.size) > 500


def test_paired_comparison_separates_real_from_noise(study):
    _, csv, paired = run_ablation(*study)
    assert set(paired["variant"]) == {"better", "same"}
    assert set(paired["metric"]) >= set(METRICS) | {"i2t_R@50", "t2i_R@50"}
    rsum = paired[paired["metric"] == "rsum"].set_index("variant")
    assert bool(rsum.loc["better", "excludes_zero"]) and rsum.loc["better", "lo"] > 0
    assert not bool(rsum.loc["same", "excludes_zero"])
    assert rsum.loc["same", "lo"] < 0 < rsum.loc["same", "hi"]
    by_variant = csv.set_index("variant")
    assert by_variant.loc["better", "rsum_diff"] == pytest.approx(
        by_variant.loc["better", "rsum"] - by_variant.loc["baseline", "rsum"], abs=1e-3)
    assert math.isnan(by_variant.loc["baseline", "rsum_diff"])


def test_identical_inputs_give_identical_outputs(study):
    a = run_ablation(*study)
    b = run_ablation(*study)
    pd.testing.assert_frame_equal(a[1], b[1])
    pd.testing.assert_frame_equal(a[2], b[2])


def test_variants_on_different_images_cannot_be_paired(study):
    tmp_path, metrics, ranks, run_files = study
    r = synthetic_ranks(150, 5, np.full(150, 0.5), np.random.default_rng(1))
    metrics["small"], ranks["small"] = write_run(tmp_path, "small", r)
    run_files["small"] = [metrics["small"]]
    with pytest.raises(ValueError, match="cannot pair 'small' with 'baseline'"):
        run_ablation(tmp_path, metrics, ranks, run_files)


def test_summary_parts_follow_the_paired_interval(study):
    from cliptune.reporting.comparison import (
        Comparison,
        comparison_observations,
        comparison_section,
    )

    tmp_path = study[0]
    run_ablation(*study)
    comp = Comparison.load(tmp_path / "out" / "a.csv", tmp_path / "out" / "paired.csv",
                           "baseline")
    table = "\n".join(comparison_section(comp))
    assert "| better |" in table and "better than the baseline |" in table
    assert "(2 seeds)" in table and "| baseline (baseline) |" in table
    assert "| same |" in table and "not distinguishable from the baseline at this size |" in table
    obs = comparison_observations(comp)
    assert obs[0].startswith("Better than the baseline") and "`better`" in obs[0]
    assert "`same`" in obs[1] and obs[1].startswith("Not distinguishable")
    assert "`better` " in obs[2] and "(2 seeds)" in obs[2]  # training randomness
