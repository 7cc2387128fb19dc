"""Damaged artifacts are caught before use (cliptune.files.integrity): a truncated or
byte-flipped image cache, text cache, trunk-feature cache, model.safetensors or resume
state.pt stops with an error naming the file and the fix."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tiny_pairs import load_train_val, tiny_variant

from cliptune.data.caches.features import build_feature_cache, feature_spec, with_features
from cliptune.data.caches.images import build_image_cache, open_cache
from cliptune.data.caches.text import build_text_cache, load_text_cache
from cliptune.data.loading.pairs import PairData
from cliptune.files import integrity
from cliptune.files.integrity import DamagedFileError, sidecar
from cliptune.models.factory import load_variant_model
from cliptune.models.text_encoder import OFFLINE_ALIAS

SIZE = 32


def truncate(path, keep: float = 0.9) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def flip(path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "byte-flipped": flip}


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    names = []
    for i in range(6):
        name = f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / name)
        names.append(name)
    pd.DataFrame({"image_id": range(6), "file_name": names, "caption_id": range(6),
                  "caption": [f"picture {i}" for i in range(6)]}).to_parquet(d / "caps.parquet")
    build_image_cache(d / "caps.parquet", d, SIZE, d / "cache.npy", d / "cache.index.parquet",
                      workers=1)
    return d


def _copy(src_dir, dst_dir, *names):
    for name in names:
        for p in (src_dir / name, sidecar(src_dir / name)):
            (dst_dir / p.name).write_bytes(p.read_bytes())


def test_producers_seal_and_intact_files_load(image_cache):
    assert sidecar(image_cache / "cache.npy").exists()
    assert sidecar(image_cache / "cache.index.parquet").exists()
    arr, index = open_cache(image_cache / "cache.npy", image_cache / "cache.index.parquet")
    assert arr.shape == (6, SIZE, SIZE, 3) and len(index) == 6


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", ["cache.npy", "cache.index.parquet"])
def test_damaged_image_cache_is_refused(image_cache, tmp_path, damage, name):
    _copy(image_cache, tmp_path, "cache.npy", "cache.index.parquet")
    DAMAGE[damage](tmp_path / name)
    with pytest.raises(DamagedFileError, match=rf"{tmp_path / name}.*delete .* and rerun"):
        open_cache(tmp_path / "cache.npy", tmp_path / "cache.index.parquet")


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_text_cache_is_refused(image_cache, tmp_path, damage):
    out = tmp_path / "text.safetensors"
    build_text_cache(image_cache / "caps.parquet", out, OFFLINE_ALIAS, max_length=16,
                     device="cpu")
    caps = pd.read_parquet(image_cache / "caps.parquet")
    assert load_text_cache(out, caps).shape[0] == 6
    DAMAGE[damage](out, 0.95)  # past the header: in the embeddings
    with pytest.raises(DamagedFileError, match=str(out)):
        load_text_cache(out, caps)


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_feature_cache_is_refused(image_cache, tmp_path, damage):
    variant = tiny_variant()
    variant["model"]["freeze_backbone"] = True
    spec = feature_spec(variant)
    out, meta = tmp_path / "feats.npy", tmp_path / "feats.json"
    build_feature_cache(image_cache / "cache.npy", image_cache / "cache.index.parquet", spec,
                        out, meta, batch_size=4, device="cpu", show_progress=False)
    pixels, index = open_cache(image_cache / "cache.npy", image_cache / "cache.index.parquet")
    pairs = PairData(pixels, pd.DataFrame({"caption_id": range(6), "image_id": range(6)}),
                     torch.zeros(6, 4), np.arange(6), np.arange(6), np.arange(6))
    assert with_features(pairs, out, meta).pixels.shape[0] == 6
    DAMAGE[damage](out)
    with pytest.raises(DamagedFileError, match=str(out)):
        with_features(pairs, out, meta)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cliptune.training.trainer import train_variant

    d = tmp_path_factory.mktemp("train")
    pairs = load_train_val(d / "pairs", n_train=16, n_val=8)
    v = tiny_variant(epochs=1, batch_size=8, tensorboard=False)
    train_variant(v, *pairs, d / "out", d / "ckpt" / "state.pt", show_progress=False)
    return d, v, pairs


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_model_weights_are_refused(trained, tmp_path, damage):
    d, v, _ = trained
    _copy(d / "out", tmp_path, "model.safetensors")
    weights = tmp_path / "model.safetensors"
    load_variant_model(v, weights, 16, torch.device("cpu"))
    DAMAGE[damage](weights)
    with pytest.raises(DamagedFileError, match=str(weights)):
        load_variant_model(v, weights, 16, torch.device("cpu"))


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_resume_state_is_refused(trained, tmp_path, damage):
    from cliptune.training.trainer import train_variant

    d, v, pairs = trained
    (tmp_path / "ckpt").mkdir()
    _copy(d / "ckpt", tmp_path / "ckpt", "state.pt")
    state = tmp_path / "ckpt" / "state.pt"
    DAMAGE[damage](state)
    with pytest.raises(DamagedFileError, match=rf"{state}.*delete .* to train this variant"):
        train_variant(v, *pairs, tmp_path / "out", state, show_progress=False)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_big_files_get_a_sampled_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "FULL_DIGEST_MAX_BYTES", 0)
    path = tmp_path / "big.npy"
    np.save(path, np.zeros((64, 1024), dtype=np.float32))
    integrity.seal(path, path)
    assert integrity.record(path)["mode"] == "sampled"
    integrity.verify(path)
    flip(path, 0.5)  # inside the first MiB, which the sample always covers
    with pytest.raises(DamagedFileError, match="SHA-256"):
        integrity.verify(path)


def test_without_a_record_the_structure_is_still_checked(tmp_path, caplog):
    path = tmp_path / "old.npy"
    np.save(path, np.zeros((8, 8), dtype=np.float32))
    with caplog.at_level(logging.WARNING):
        integrity.verify(path)
    assert "no integrity record" in caplog.text
    truncate(path)
    with pytest.raises(DamagedFileError, match="header describes"):
        integrity.verify(path)


def test_an_unreadable_record_is_an_error(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3))
    sidecar(path).write_text("{not json")
    with pytest.raises(DamagedFileError, match="integrity record"):
        integrity.verify(path)
