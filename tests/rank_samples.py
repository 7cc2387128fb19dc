"""Synthetic per-query ranks with a known per-image difficulty (bootstrap tests)."""

from __future__ import annotations

import numpy as np

from cliptune.evaluation.bootstrap import Ranks


def synthetic_ranks(n_images: int, captions: int, hit: np.ndarray, rng) -> Ranks:
    """Ranks where image i's queries are rank 1 with probability hit[i], else rank 20
    (a shared per-image difficulty: captions of one image are correlated)."""
    text_image = np.repeat(np.arange(n_images), captions)
    i2t = np.where(rng.random(n_images) < hit, 1, 20)
    t2i = np.where(rng.random(text_image.size) < hit[text_image], 1, 20)
    return Ranks(i2t, t2i, text_image, np.arange(n_images) + 100, np.arange(text_image.size))
