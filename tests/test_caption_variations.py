"""train.caption_augment: fixed, seeded caption variations drawn per step."""

from __future__ import annotations

import numpy as np
import pytest

from cliptune.config.load import DEFAULTS
from cliptune.training.caption_variations import caption_variation, vary_captions

TEXT = "a man riding a red bicycle down a busy city street"
ON = {**DEFAULTS["train"]["caption_augment"], "variations": 3}


def test_variations_are_fixed_per_caption_and_seed():
    first = [caption_variation(TEXT, 7, v, ON, seed=0) for v in range(4)]
    assert first[0] == TEXT  # variation 0 is the caption itself
    assert first == [caption_variation(TEXT, 7, v, ON, seed=0) for v in range(4)]
    assert len(set(first[1:])) == 3 and TEXT not in first[1:]  # three distinct rewrites
    assert first[1:] != [caption_variation(TEXT, 8, v, ON, seed=0) for v in range(1, 4)]
    assert first[1:] != [caption_variation(TEXT, 7, v, ON, seed=1) for v in range(1, 4)]


def test_each_operation_alone_does_what_it_says():
    words = TEXT.split()
    off = {**ON, "word_dropout": 0.0, "word_swap": 0.0, "span_deletion": 0.0}
    assert caption_variation(TEXT, 1, 1, off, seed=0) == TEXT
    swapped = caption_variation(TEXT, 1, 1, {**off, "word_swap": 1.0}, seed=0).split()
    assert sorted(swapped) == sorted(words) and swapped[:2] == ["man", "a"]
    for row in range(20):
        cut = caption_variation(TEXT, row, 1, {**off, "span_deletion": 1.0}, seed=0).split()
        gone = len(words) - len(cut)
        assert 1 <= gone <= ON["max_span"]
        # what is left is the caption minus one contiguous span, order kept
        assert any(cut == words[:i] + words[i + gone:] for i in range(len(words) - gone + 1))
        dropped = caption_variation(TEXT, row, 1, {**off, "word_dropout": 0.9}, seed=0).split()
        assert dropped and all(w in words for w in dropped)
    assert caption_variation("dog", 0, 1, {**off, "span_deletion": 1.0}, seed=0) == "dog"
    assert caption_variation("dog", 0, 1, {**off, "word_dropout": 0.9}, seed=0) == "dog"


def test_vary_captions_draws_among_original_and_variations():
    texts, rows = [TEXT] * 400, [5] * 400
    out = vary_captions(texts, rows, ON, 0, np.random.default_rng(0))
    allowed = {caption_variation(TEXT, 5, v, ON, seed=0) for v in range(4)}
    assert set(out) == allowed  # all four show up, nothing else
    assert out == vary_captions(texts, rows, ON, 0, np.random.default_rng(0))
    off = {**ON, "variations": 0}
    assert vary_captions(texts, rows, off, 0, np.random.default_rng(0)) == texts


def test_cached_text_tower_rejects_variations(tmp_path):
    from tiny_pairs import load_train_val, tiny_variant

    from cliptune.training.trainer import train_variant

    v = tiny_variant(epochs=1, tensorboard=False)  # a ResNet against the text cache
    v["train"]["caption_augment"] = ON
    with pytest.raises(ValueError, match="caption_augment.variations is set but"):
        train_variant(v, *load_train_val(tmp_path / "pairs"), tmp_path / "out",
                      tmp_path / "state.pt", show_progress=False)
