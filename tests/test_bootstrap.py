"""Cluster-bootstrap intervals and paired comparisons from per-query ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rank_samples import synthetic_ranks

from cliptune.evaluation.bootstrap import (
    Ranks,
    check_same_queries,
    load_ranks,
    metric_intervals,
    paired_differences,
    point_metrics,
    resample_blocks,
    resampled_metrics,
    save_ranks,
)
from cliptune.evaluation.retrieval_metrics import retrieval_metrics_and_ranks

SETTINGS = {"resamples": 1000, "confidence": 0.95, "seed": 0, "memory_mb": 64}
KS = (1, 5, 10)


@pytest.mark.parametrize("ks", [KS, (1, 5, 10, 50), (2,)])
def test_point_metrics_match_retrieval_metrics(ks):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    tii = torch.arange(30).repeat_interleave(3)[torch.randperm(90, generator=g)]
    txt = torch.nn.functional.normalize(img[tii] + 0.4 * torch.randn(90, 16, generator=g), dim=1)
    metrics, r_i2t, r_t2i = retrieval_metrics_and_ranks(img, txt, tii, ks=ks, score_memory=7 * 8 * 90)
    ranks = Ranks.of(r_i2t, r_t2i, tii, np.arange(30), np.arange(90))
    got = point_metrics(ranks, ks)
    for name in [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in ks] + ["rsum"]:
        assert got[name] == pytest.approx(metrics[name], abs=1e-9)
    # One rsum whatever eval.ks holds: R@1/5/10 of both directions, never R@50 or R@2.
    standard = sum(got[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert metrics["rsum"] == pytest.approx(standard, abs=1e-9)
    if 50 in ks:
        assert got["i2t_R@50"] > 0 and metrics["rsum"] < standard + got["i2t_R@50"]
    # The paired difference of a variant with itself is the same quantity: zero.
    same = paired_differences(ranks, ranks, ks, {**SETTINGS, "resamples": 50})
    assert same["differences"]["rsum"]["diff"] == 0


def test_ranks_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ranks = synthetic_ranks(12, 3, np.full(12, 0.5), rng)
    save_ranks(tmp_path / "ranks.safetensors", ranks)
    back = load_ranks(tmp_path / "ranks.safetensors")
    for field in ("i2t", "t2i", "text_image", "image_id", "caption_id"):
        np.testing.assert_array_equal(getattr(back, field), getattr(ranks, field))


def resample_counts(n_images, resamples, seed, memory_mb=64):
    return np.concatenate(list(resample_blocks(n_images, resamples, seed, memory_mb)))


def test_resamples_are_seeded_cluster_draws():
    a = resample_counts(50, 250, seed=3)
    np.testing.assert_array_equal(a, resample_counts(50, 250, seed=3))
    assert not np.array_equal(a, resample_counts(50, 250, seed=4))
    assert a.shape == (250, 50) and (a.sum(axis=1) == 50).all()
    # The same resamples whatever the memory budget: one resample per block (a budget
    # below one row), 7 per block (a ragged last block), all in one.
    for memory_mb in (1e-9, 7 * 32 * 50 / 2**20, 1.0):
        np.testing.assert_array_equal(resample_counts(50, 250, 3, memory_mb), a)
    assert len(list(resample_blocks(50, 250, 3, 7 * 32 * 50 / 2**20))) == 36
    # An image enters with all its captions: a caption-level t2i recall of a resample equals
    # the recall over the explicit list of drawn images' captions.
    rng = np.random.default_rng(1)
    ranks = synthetic_ranks(50, 4, rng.random(50), rng)
    stats = resampled_metrics(ranks, KS, a[:1])
    drawn = np.repeat(np.arange(50), a[0].astype(int))
    caps = np.concatenate([np.flatnonzero(ranks.text_image == i) for i in drawn])
    assert stats["t2i_R@1"][0] == pytest.approx(100 * np.mean(ranks.t2i[caps] <= 1))
    assert stats["i2t_R@1"][0] == pytest.approx(100 * np.mean(ranks.i2t[drawn] <= 1))


def test_intervals_are_deterministic_and_contain_the_estimate():
    rng = np.random.default_rng(2)
    ranks = synthetic_ranks(200, 5, rng.beta(2, 2, 200), rng)
    a, b = metric_intervals(ranks, KS, SETTINGS), metric_intervals(ranks, KS, SETTINGS)
    assert a == b and a["resamples"] == 1000 and a["confidence"] == 0.95
    point = point_metrics(ranks, KS)
    for name, (lo, hi) in a["intervals"].items():
        assert lo <= point[name] <= hi and hi > lo, name
    narrower = metric_intervals(ranks, KS, {**SETTINGS, "confidence": 0.5})["intervals"]
    assert narrower["rsum"][1] - narrower["rsum"][0] < a["intervals"]["rsum"][1] - a[
        "intervals"]["rsum"][0]


def test_intervals_do_not_depend_on_the_memory_budget():
    rng = np.random.default_rng(8)
    base = synthetic_ranks(120, 5, rng.beta(2, 2, 120), rng)
    other = synthetic_ranks(120, 5, rng.beta(2, 2, 120), rng)
    small = {**SETTINGS, "memory_mb": 5 * 32 * 120 / 2**20}  # 5 resamples per block
    assert metric_intervals(base, KS, small) == metric_intervals(base, KS, SETTINGS)
    assert (paired_differences(other, base, KS, small)
            == paired_differences(other, base, KS, SETTINGS))


def test_paired_interval_excludes_zero_for_a_known_difference():
    rng = np.random.default_rng(3)
    hit = rng.beta(2, 2, 300)
    base = synthetic_ranks(300, 5, hit, rng)
    better = synthetic_ranks(300, 5, np.clip(hit + 0.15, 0, 1), rng)
    res = paired_differences(better, base, KS, SETTINGS)["differences"]
    for name in ("i2t_R@1", "t2i_R@1", "rsum"):
        assert res[name]["excludes_zero"] and res[name]["lo"] > 0, (name, res[name])
    worse = paired_differences(base, better, KS, SETTINGS)["differences"]["rsum"]
    assert worse["excludes_zero"] and worse["hi"] < 0


def test_paired_interval_contains_zero_for_identical_variants():
    rng = np.random.default_rng(4)
    ranks = synthetic_ranks(300, 5, rng.beta(2, 2, 300), rng)
    res = paired_differences(ranks, ranks, KS, SETTINGS)["differences"]
    for d in res.values():
        assert d["lo"] <= 0 <= d["hi"] and not d["excludes_zero"] and d["diff"] == 0


def test_paired_interval_contains_zero_for_exchangeable_variants():
    """Two independent draws from the same model: a difference that is pure noise."""
    rng = np.random.default_rng(5)
    hit = rng.beta(2, 2, 300)
    a, b = synthetic_ranks(300, 5, hit, rng), synthetic_ranks(300, 5, hit, rng)
    d = paired_differences(a, b, KS, SETTINGS)["differences"]["rsum"]
    assert d["lo"] < 0 < d["hi"] and not d["excludes_zero"]


def test_pairing_different_images_is_an_error():
    rng = np.random.default_rng(6)
    a = synthetic_ranks(40, 2, np.full(40, 0.5), rng)
    b = Ranks(a.i2t, a.t2i, a.text_image, a.image_id + 1, a.caption_id)
    with pytest.raises(ValueError, match="different images.*same eval.split"):
        check_same_queries(a, b, "x", "baseline")
    with pytest.raises(ValueError, match="cannot pair 'x' with 'baseline'"):
        paired_differences(a, b, KS, SETTINGS, names=("x", "baseline"))


def test_coverage_is_near_nominal_with_clustered_captions():
    """Repeated samples from a population with strongly correlated captions: the 90%
    cluster-bootstrap interval covers the true t2i R@1 in ~90% of them, while treating
    captions as independent queries covers far less (why the unit is the image)."""
    rng = np.random.default_rng(7)
    population = rng.beta(0.5, 0.5, 200_000)  # per-image hit probability
    truth = 100 * population.mean()  # expected caption-level recall (5 captions each)
    settings = {"resamples": 400, "confidence": 0.9, "seed": 0, "memory_mb": 64}
    trials, covered, naive_covered = 200, 0, 0
    for t in range(trials):
        hit = rng.choice(population, 150)
        ranks = synthetic_ranks(150, 5, hit, rng)
        lo, hi = metric_intervals(ranks, (1,), {**settings, "seed": t})["intervals"]["t2i_R@1"]
        covered += lo <= truth <= hi
        # Caption-level bootstrap: every caption its own "image" (no clustering).
        flat = Ranks(ranks.t2i, ranks.t2i, np.arange(ranks.t2i.size),
                     np.arange(ranks.t2i.size), np.arange(ranks.t2i.size))
        lo, hi = metric_intervals(flat, (1,), {**settings, "seed": t})["intervals"]["t2i_R@1"]
        naive_covered += lo <= truth <= hi
    assert abs(covered / trials - 0.9) < 0.06, covered / trials  # ~3 standard errors
    assert naive_covered / trials < 0.75, naive_covered / trials
