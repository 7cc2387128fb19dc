"""Cluster-bootstrap confidence intervals for Recall@K and rsum (R@1/5/10 both ways, the
definition of metrics.json), from per-query ranks.

An image's captions are not independent queries (they share the image, and usually its
difficulty), so the resampling unit is the **image**: a resample draws N images with
replacement and each drawn image brings its image→text query and all of its captions'
text→image queries. A resample is then just a vector of draw counts ``w`` [N], and every
recall is a weighted mean of per-image counts (``w @ hits / w @ queries``), so B
resamples cost one [B, N] x [N, S] product on the saved ranks: seconds, never a
re-scoring of embeddings. The product runs over blocks of resamples sized to
``bootstrap.memory_mb``, so peak memory is that budget plus the per-image counts (O(N)),
never B x N.

The interval is the percentile interval of the B resampled statistics. A **paired**
comparison evaluates two variants on the *same* resamples and takes the interval of the
difference, which cancels the shared "which images happened to be in the split" noise;
it needs both variants ranked on the same images and captions.

What the intervals cover: the sampling of evaluation images (how much a metric would move
on another split of the same size from the same distribution). Not covered: training
randomness (seed, data order), which is what replicated ``train.seeds`` measure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cliptune.evaluation.retrieval_metrics import RSUM_KS
from cliptune.files.atomic import atomic_path

DIRECTIONS = ("i2t", "t2i")
# Bytes per image and resample of a block being drawn: the int64 draws, their int64
# bincount, the float32 counts and the float64 copy the product may take (rounded up).
_BYTES_PER_DRAW = 32


@dataclass(frozen=True)
class Ranks:
    """Per-query ranks of one evaluated variant, with the ids that make them comparable."""

    i2t: np.ndarray  # [N] rank of each image's first relevant caption
    t2i: np.ndarray  # [M] rank of each caption's image
    text_image: np.ndarray  # [M] image position of each caption
    image_id: np.ndarray  # [N]
    caption_id: np.ndarray  # [M]

    @classmethod
    def of(cls, r_i2t, r_t2i, text_image, image_id, caption_id) -> Ranks:
        """From tensors or arrays (as ``retrieval_metrics_and_ranks`` returns them)."""
        as_np = [np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.int64)
                 for x in (r_i2t, r_t2i, text_image, image_id, caption_id)]
        return cls(*as_np)

    @property
    def n_images(self) -> int:
        return int(self.i2t.shape[0])


def save_ranks(path: Path, ranks: Ranks) -> None:
    arrays = {"i2t": ranks.i2t, "t2i": ranks.t2i, "text_image_index": ranks.text_image,
              "image_id": ranks.image_id, "caption_id": ranks.caption_id}
    with atomic_path(path) as tmp:
        # torch.tensor copies: the arrays may be read-only views of a loaded table.
        save_file({k: torch.tensor(np.asarray(v, dtype=np.int64)) for k, v in arrays.items()},
                  str(tmp))


def load_ranks(path: Path) -> Ranks:
    t = {k: v.numpy() for k, v in load_file(str(path)).items()}
    return Ranks(t["i2t"], t["t2i"], t["text_image_index"], t["image_id"], t["caption_id"])


def per_image_counts(ranks: Ranks, ks: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """Metric names and per-image [hits..., queries] columns: a metric over any multiset
    of images is 100 * sum(hits) / sum(queries) of its column pair."""
    n = ranks.n_images
    captions = np.bincount(ranks.text_image, minlength=n).astype(np.float64)
    names, cols = [], []
    for d in DIRECTIONS:
        for k in ks:
            if d == "i2t":
                hits, queries = (ranks.i2t <= k).astype(np.float64), np.ones(n)
            else:
                hits = np.bincount(ranks.text_image, weights=ranks.t2i <= k, minlength=n)
                queries = captions
            names.append(f"{d}_R@{k}")
            cols += [hits, queries]
    return names, np.stack(cols, axis=1)


def resample_blocks(n_images: int, resamples: int, seed: int,
                    memory_mb: float) -> Iterator[np.ndarray]:
    """The [B, N] draw counts of B cluster resamples (each row sums to N), as consecutive
    [b, N] blocks whose working arrays fit ``memory_mb`` MiB (at least one resample each).

    The rows are a function of (N, B, seed) only, whatever the block size (the generator
    yields the same stream however its draws are split), so every variant evaluated on
    the same images gets the same resamples. float32 counts are exact: every count and
    every product sum below is an integer under 2**24."""
    if n_images < 2:
        raise ValueError(f"a bootstrap needs at least 2 images, got {n_images}")
    rng = np.random.default_rng(seed)
    rows = max(1, int(memory_mb * 2**20) // (_BYTES_PER_DRAW * n_images))
    for b0 in range(0, resamples, rows):
        b = min(rows, resamples - b0)
        draws = rng.integers(0, n_images, size=(b, n_images))
        draws += (np.arange(b) * n_images)[:, None]  # resample r's images -> bins r*N + i
        counts = np.bincount(draws.ravel(), minlength=b * n_images)
        del draws
        block = counts.reshape(b, n_images).astype(np.float32)
        del counts  # not held while the caller uses the block
        yield block


def _metric_columns(ranks: Ranks, ks: Sequence[int]) -> tuple[list[str], np.ndarray]:
    return per_image_counts(ranks, sorted(set(ks) | set(RSUM_KS)))


def _weighted_metrics(names: list[str], cols: np.ndarray,
                      counts: np.ndarray) -> dict[str, np.ndarray]:
    # Every sum is an integer at most N * max(cols) (a resample's counts sum to N): float32
    # is exact below 2**24 and halves the memory, float64 beyond. Divided in float64.
    dtype = np.float32 if counts.sum(axis=1).max() * cols.max() < 2**24 else np.float64
    sums = (counts.astype(dtype, copy=False) @ cols.astype(dtype)).astype(np.float64)
    out = {n: 100.0 * sums[:, 2 * i] / sums[:, 2 * i + 1] for i, n in enumerate(names)}
    out["rsum"] = np.sum([out[f"{d}_R@{k}"] for d in DIRECTIONS for k in RSUM_KS], axis=0)
    return out


def resampled_metrics(ranks: Ranks, ks: Sequence[int],
                      counts: np.ndarray) -> dict[str, np.ndarray]:
    """R@K for ``ks`` and R@1/5/10, and rsum (over R@1/5/10 both ways, RSUM_KS, as in
    metrics.json) on each resample of ``counts`` [b, N]: name -> [b] (percent)."""
    if counts.shape[1] != ranks.n_images:
        raise ValueError(f"resample counts cover {counts.shape[1]} images, the ranks "
                         f"{ranks.n_images}")
    return _weighted_metrics(*_metric_columns(ranks, ks), counts)


def bootstrap_samples(rank_sets: Sequence[Ranks], ks: Sequence[int],
                      settings: Mapping) -> list[dict[str, np.ndarray]]:
    """``resampled_metrics`` of each of ``rank_sets`` (all over the same N images) on the
    B resamples of ``settings``, drawn once, block by block within
    ``settings["memory_mb"]``: per rank set, name -> [B]."""
    n = rank_sets[0].n_images
    if any(r.n_images != n for r in rank_sets):
        raise ValueError(f"rank sets over different image counts: "
                         f"{sorted({r.n_images for r in rank_sets})}")
    columns = [_metric_columns(r, ks) for r in rank_sets]
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in rank_sets]
    for counts in resample_blocks(n, settings["resamples"], settings["seed"],
                                  settings["memory_mb"]):
        for part, (names, cols) in zip(parts, columns, strict=True):
            part.append(_weighted_metrics(names, cols, counts))
    return [{name: np.concatenate([p[name] for p in part]) for name in part[0]}
            for part in parts]


def point_metrics(ranks: Ranks, ks: Sequence[int]) -> dict[str, float]:
    """The full-sample statistics (all draw counts 1), equal to retrieval_metrics' values."""
    stats = resampled_metrics(ranks, ks, np.ones((1, ranks.n_images)))
    return {k: float(v[0]) for k, v in stats.items()}


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def metric_intervals(ranks: Ranks, ks: Sequence[int], settings: Mapping) -> dict:
    """{metric: [lo, hi]} for every R@K and rsum, plus the settings that produced them."""
    (stats,) = bootstrap_samples([ranks], ks, settings)
    out = {name: list(percentile_interval(s, settings["confidence"])) for name, s in stats.items()}
    return {"intervals": out, **_describe(settings)}


def _describe(settings: Mapping) -> dict:
    return {"confidence": float(settings["confidence"]), "resamples": int(settings["resamples"]),
            "seed": int(settings["seed"]), "unit": "image (with all its captions)"}


def check_same_queries(a: Ranks, b: Ranks, name_a: str, name_b: str) -> None:
    """A paired comparison needs both variants ranked on the same images and captions."""
    same = (np.array_equal(a.image_id, b.image_id) and np.array_equal(a.caption_id, b.caption_id)
            and np.array_equal(a.text_image, b.text_image))
    if not same:
        raise ValueError(
            f"cannot pair {name_a!r} with {name_b!r}: they were evaluated on different images "
            f"or captions ({a.n_images} vs {b.n_images} images, {a.caption_id.size} vs "
            f"{b.caption_id.size} captions); give every variant the same eval.split")


def paired_differences(variant: Ranks, baseline: Ranks, ks: Sequence[int], settings: Mapping,
                       names: tuple[str, str] = ("variant", "baseline")) -> dict:
    """variant - baseline for every R@K and rsum on the same resamples:
    {"differences": {metric: {diff, lo, hi, excludes_zero}}} plus the settings."""
    check_same_queries(variant, baseline, *names)
    sv, sb = bootstrap_samples([variant, baseline], ks, settings)
    pv, pb = point_metrics(variant, ks), point_metrics(baseline, ks)
    out = {}
    for name in sv:
        lo, hi = percentile_interval(sv[name] - sb[name], settings["confidence"])
        out[name] = {"diff": pv[name] - pb[name], "lo": lo, "hi": hi,
                     "excludes_zero": bool(lo > 0.0 or hi < 0.0)}
    return {"differences": out, **_describe(settings)}
