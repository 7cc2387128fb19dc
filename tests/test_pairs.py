"""Batch plans: the sampler guarantees the contrastive loss relies on."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_pairs import load_train_val

from cliptune.data.loading.pairs import plan_epoch, validation_batches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_train_val(tmp_path_factory.mktemp("pairs"), n_train=40)[0]


def test_one_caption_per_image_never_repeats_an_image(data):
    batches = plan_epoch(data, 8, "one_caption_per_image", seed=0, epoch=0)
    rows = np.concatenate(batches)
    images = data.caption_image_row[rows]
    assert len(batches) == 40 // 8 and len(set(images)) == len(images) == 40
    # Over epochs every caption of an image gets drawn, not always the first.
    drawn = {int(r) for e in range(20) for r in np.concatenate(
        plan_epoch(data, 8, "one_caption_per_image", seed=0, epoch=e))}
    assert drawn == set(range(len(data.captions)))


def test_random_captions_can_pair_an_image_with_itself(data):
    repeats = 0
    for epoch in range(10):
        for rows in plan_epoch(data, 20, "random_captions", seed=0, epoch=epoch):
            images = data.caption_image_row[rows]
            repeats += len(images) - len(set(images))
    assert repeats > 0


def test_plans_are_deterministic_in_seed_and_epoch(data):
    a = plan_epoch(data, 8, "one_caption_per_image", seed=3, epoch=1)
    b = plan_epoch(data, 8, "one_caption_per_image", seed=3, epoch=1)
    c = plan_epoch(data, 8, "one_caption_per_image", seed=3, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_drop_last_and_validation_order(data):
    assert sum(map(len, plan_epoch(data, 16, "one_caption_per_image", 0, 0))) == 32
    assert sum(map(len, plan_epoch(data, 16, "one_caption_per_image", 0, 0,
                                   drop_last=False))) == 40
    val = np.concatenate(validation_batches(data, 16))
    # First caption of each image, images in cache order.
    assert np.array_equal(data.caption_image_row[val], data.image_rows)
    assert np.array_equal(val, np.arange(0, 80, 2))
    with pytest.raises(ValueError, match="unknown sampler"):
        plan_epoch(data, 8, "nope", 0, 0)
