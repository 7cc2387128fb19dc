"""Frozen-backbone feature cache: equals the trunk's outputs, and training from it equals
training from pixels."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from cliptune.config.load import load_config, resolve_variant
from cliptune.data.caches.features import (
    FeatureCacheMismatchError,
    build_feature_cache,
    check_features_match,
    feature_key,
    feature_spec,
    with_features,
)
from cliptune.data.loading.pairs import PairData, plan_epoch
from cliptune.files.atomic import write_parquet
from cliptune.models.factory import build_model
from cliptune.runtime import seed_everything
from cliptune.training.losses import clip_loss
from cliptune.training.trainer import train_variant

SIZE, N_IMAGES, DIM = 32, 24, 16


def _variant(pooling="avg", seed=3, **model):
    cfg = load_config({
        "dataset": {"name": "t", "source": "demo"},
        "image_size": SIZE,
        "text_encoder": {"model": "offline-minilm"},
        "model": {"backbone": "resnet18", "weights": None, "pooling": pooling,
                  "attention_heads": 4, "head": {"hidden_dim": 32},
                  "freeze_backbone": True, **model},
        "train": {"epochs": 1, "batch_size": 8, "seed": seed, "device": "cpu"},
        "variants": {"frozen": {}},
        "baseline": "frozen",
    })
    return resolve_variant(cfg, "frozen")


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)
    np.save(d / "train_32.npy", pixels)
    write_parquet(d / "train_32.index.parquet", pd.DataFrame({
        "row": np.arange(N_IMAGES), "image_id": np.arange(N_IMAGES) + 1000,
        "file_name": [f"{i}.jpg" for i in range(N_IMAGES)], "ok": True, "problem": ""}))
    return d


def _pairs(cache_dir):
    pixels = np.load(cache_dir / "train_32.npy", mmap_mode="r")
    cap_rows = np.repeat(np.arange(N_IMAGES), 2)  # two captions per image
    text = torch.nn.functional.normalize(torch.randn(len(cap_rows), DIM,
                                                     generator=torch.Generator().manual_seed(1)),
                                         dim=1)
    caps = pd.DataFrame({"caption_id": np.arange(len(cap_rows)),
                         "image_id": cap_rows + 1000})
    return PairData(pixels, caps, text, cap_rows, np.arange(N_IMAGES),
                    np.arange(N_IMAGES) + 1000)


def _features(cache_dir, variant, tag):
    spec = feature_spec(variant)
    out, meta = cache_dir / f"{tag}.npy", cache_dir / f"{tag}.json"
    if not out.exists():
        build_feature_cache(cache_dir / "train_32.npy", cache_dir / "train_32.index.parquet",
                            spec, out, meta, batch_size=10, device="cpu", show_progress=False)
    return with_features(_pairs(cache_dir), out, meta)


def _model(variant):
    seed_everything(variant["train"]["seed"])  # as train_variant does
    return build_model(variant, DIM)


def test_spec_only_for_frozen_unaugmented_resnets():
    assert feature_spec(_variant()) == {"backbone": "resnet18", "weights": None,
                                        "mode": "pooled", "seed": 3}
    assert feature_spec(_variant("attention"))["mode"] == "map"
    assert feature_key(feature_spec(_variant())) == "resnet18-random-s3-pooled"
    assert feature_spec(_variant(freeze_backbone=False)) is None
    unfrozen_bn = _variant()
    unfrozen_bn["model"]["freeze_bn_stats"] = False
    assert feature_spec(unfrozen_bn) is None
    augmented = _variant()
    augmented["train"]["augment"]["enabled"] = True
    assert feature_spec(augmented) is None
    partly = _variant()
    partly["model"]["trainable_stages"] = 1
    assert feature_spec(partly) is None
    pretrained = _variant()
    pretrained["model"]["weights"] = "IMAGENET1K_V1"
    assert feature_key(feature_spec(pretrained)) == "resnet18-IMAGENET1K_V1-pooled"


@pytest.mark.parametrize("pooling", ["avg", "attention"])
def test_cached_features_equal_the_trunk_outputs(image_cache, pooling):
    variant = _variant(pooling)
    data = _features(image_cache, variant, pooling)
    meta = json.loads((image_cache / f"{pooling}.json").read_text())
    assert meta["image_ids"] == list(range(1000, 1000 + N_IMAGES))
    model = _model(variant).eval()
    check_features_match(model, data)
    with torch.no_grad():
        pixels = torch.from_numpy(np.load(image_cache / "train_32.npy"))
        trunk = model.image.trunk(model.image.normalize_uint8(pixels))
    assert data.pixels.dtype == (np.float32 if pooling == "avg" else np.float16)
    feats = torch.from_numpy(np.asarray(data.pixels, dtype=np.float32))
    if pooling == "avg":
        assert feats.shape == (N_IMAGES, 512)
        torch.testing.assert_close(feats, model.image.pool(trunk), rtol=1e-5, atol=1e-5)
    else:  # whole map, stored as float16
        assert feats.shape == (N_IMAGES, 512, 1, 1)
        torch.testing.assert_close(feats, trunk, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("pooling,tol", [("avg", 1e-5), ("attention", 2e-3)])
def test_training_loss_from_features_equals_loss_from_pixels(image_cache, pooling, tol):
    variant = _variant(pooling)
    feat_data = _features(image_cache, variant, pooling)
    pix_data = _pairs(image_cache)
    model = _model(variant).train()  # train mode: a frozen trunk must still be deterministic
    rows = plan_epoch(pix_data, 8, "one_caption_per_image", 0, 0)[0]
    images, text = pix_data.fetch(rows)
    feats, text_f = feat_data.fetch(rows)
    assert images.dtype == torch.uint8 and feats.dtype == torch.float32
    assert torch.equal(text, text_f)
    # The two paths training takes: full image tower on pixels, pool + head on features.
    from_pixels = clip_loss(model(model.image.normalize_uint8(images)), text, model.scale())
    from_features = clip_loss(model.image.forward_features(feats), text, model.scale())
    torch.testing.assert_close(from_features, from_pixels, rtol=tol, atol=tol)
    # Same gradients for every trainable parameter as well.
    grads = []
    for loss in (from_pixels, from_features):
        model.zero_grad()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.requires_grad and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert not any(n.startswith("image.trunk.") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=20 * tol, atol=20 * tol)


def test_features_from_another_trunk_are_refused(image_cache):
    data = _features(image_cache, _variant(), "avg")
    with pytest.raises(FeatureCacheMismatchError, match="different trunk weights"):
        check_features_match(_model(_variant(seed=4)), data)
    with pytest.raises(FeatureCacheMismatchError, match="wholly frozen"):
        check_features_match(_model(_variant(freeze_backbone=False)), data)


def test_row_count_mismatch_is_refused(image_cache):
    _features(image_cache, _variant(), "avg")
    pairs = _pairs(image_cache)
    pairs.pixels = pairs.pixels[:-1]
    with pytest.raises(FeatureCacheMismatchError, match="rows but the image cache has"):
        with_features(pairs, image_cache / "avg.npy", image_cache / "avg.json")


def test_train_variant_runs_on_features(image_cache, tmp_path):
    variant = _variant()
    data = _features(image_cache, variant, "avg")
    result = train_variant(variant, data, data, tmp_path / "out", tmp_path / "state.pt",
                           show_progress=False)
    assert np.isfinite(result["best_val_loss"])
    hist = pd.read_csv(tmp_path / "out" / "history.csv")
    assert len(hist) == 1 and np.isfinite(hist["train_loss"]).all()
    # The saved model carries the (unchanged) frozen trunk, so evaluation runs on pixels.
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    ref = _model(variant).state_dict()
    assert torch.equal(saved["image.trunk.0.weight"], ref["image.trunk.0.weight"])


def test_backbone_list_matches_the_models():
    from cliptune.data.caches.feature_keys import TRUNK_BACKBONES
    from cliptune.models.image_tower import TRUNK_CHANNELS

    assert set(TRUNK_BACKBONES) == set(TRUNK_CHANNELS)


def test_feature_paths_only_for_cacheable_variants():
    from cliptune.data.caches.feature_keys import feature_paths

    # Named by trunk and by the image cache the features are computed from.
    paths = feature_paths("c/features", _variant(), "val-32px-abc", "val")
    assert paths == {"val_features": "c/features/resnet18-random-s3-pooled/val-32px-abc.npy",
                     "val_features_meta": "c/features/resnet18-random-s3-pooled/val-32px-abc.json"}
    assert feature_paths("c/features", _variant(freeze_backbone=False), "val-32px-abc",
                         "val") == {}


def test_dag_builds_features_once_for_frozen_variants(tmp_path, repo):
    from conftest import TINY, planned_jobs, snakemake, write_config

    cfg = json.loads(json.dumps(TINY))
    cfg["variants"]["frozen"] = {"model": {"freeze_backbone": True}}
    cfg["variants"]["frozen_lr"] = {"model": {"freeze_backbone": True}, "train": {"lr": 1e-4}}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, repo, "-n")
    # Both frozen variants share one trunk: one cache per split, not per variant.
    assert planned_jobs(proc)["backbone_features"] == 2
    assert re.search(r"features/resnet18-random-s0-pooled/train-32px-[0-9a-f]+\.npy", proc.stdout)
    assert planned_jobs(proc)["train"] == 5
