"""Caption augmentation by variations: every caption has ``variations`` fixed,
seeded rewrites (word dropout, adjacent word swaps, one deleted span), and each
training step shows a caption as itself or one of them, drawn at random.

A variation depends only on (train.seed, caption row, variation number), so the
same caption always has the same few variants (the hard-negative study's "up to 3
variations of a caption") and a resumed run sees exactly what an uninterrupted one
would. No synonyms or external vocabulary: nothing to download, nothing invented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _dropout(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    keep = [w for w in words if rng.random() >= p]
    return keep or [words[rng.integers(len(words))]]  # never an empty caption


def _swap(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    out = list(words)
    i = 0
    while i < len(out) - 1:
        if rng.random() < p:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2  # a swapped word is not moved twice
        else:
            i += 1
    return out


def _delete_span(words: list[str], p: float, max_span: int, rng: np.random.Generator,
                 ) -> list[str]:
    if len(words) < 2 or rng.random() >= p:
        return words
    n = int(rng.integers(1, min(max_span, len(words) - 1) + 1))  # at least one word stays
    start = int(rng.integers(0, len(words) - n + 1))
    return words[:start] + words[start + n:]


def caption_variation(text: str, row: int, variation: int, settings: Mapping,
                      seed: int) -> str:
    """Variation ``variation`` (1-based; 0 is the caption itself) of caption ``row``."""
    words = text.split()
    if variation == 0 or not words:
        return text
    rng = np.random.default_rng([seed, int(row), int(variation)])
    words = _dropout(words, settings["word_dropout"], rng)
    words = _swap(words, settings["word_swap"], rng)
    words = _delete_span(words, settings["span_deletion"], settings["max_span"], rng)
    return " ".join(words)


def vary_captions(texts: Sequence[str], rows: Sequence[int], settings: Mapping, seed: int,
                  rng: np.random.Generator) -> list[str]:
    """Each caption as itself or one of its variations, uniformly (``rng``: the step's)."""
    n = settings["variations"]
    if not n:
        return list(texts)
    picks = rng.integers(0, n + 1, size=len(texts))
    return [caption_variation(t, r, int(v), settings, seed)
            for t, r, v in zip(texts, rows, picks, strict=True)]
