"""Text towers: tiny local CLIP, the offline MiniLM, and the offline error."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cliptune.data.caches.text import build_text_cache, load_text_cache
from cliptune.models.text_encoder import (
    OFFLINE_ALIAS,
    EncoderUnavailableError,
    TextEncoder,
    encode_texts,
)


def test_tiny_clip_uses_projection_and_normalises(tiny_clip_dir):
    enc = TextEncoder(str(tiny_clip_dir))
    assert enc.pooling == "clip" and enc.dim == 16
    emb = encode_texts(enc, ["a red circle", "two blue squares on the left", "a"], batch_size=2,
                       show_progress=False)
    assert emb.shape == (3, 16)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_length_sorted_batches_keep_input_order(tiny_clip_dir):
    enc = TextEncoder(str(tiny_clip_dir))
    texts = ["a", "a red circle on the left and a small blue star", "red", "two squares"]
    batched = encode_texts(enc, texts, batch_size=2, show_progress=False)
    single = torch.cat([encode_texts(enc, [t], batch_size=1, show_progress=False) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)


def test_offline_minilm_mean_pooling():
    enc = TextEncoder(OFFLINE_ALIAS, max_length=32)
    assert enc.pooling == "mean" and enc.dim == 384
    emb = encode_texts(enc, ["a red circle", "a red circle", "a blue square"], show_progress=False)
    assert torch.allclose(emb[0], emb[1], atol=1e-6)
    assert float(emb[0] @ emb[2]) < 0.99


def test_clip_pooling_on_non_clip_model_is_a_clear_error():
    with pytest.raises(EncoderUnavailableError, match="pooling: mean or auto"):
        TextEncoder(OFFLINE_ALIAS, pooling="clip")


def test_offline_hub_id_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailableError) as err:
        TextEncoder("openai/clip-vit-base-patch32")
    msg = str(err.value)
    assert "offline-minilm" in msg and "local directory" in msg and "`weights` rule" in msg
    assert "hf download openai/clip-vit-base-patch32 --cache-dir resources/weights/hf" in msg


def test_missing_local_dir_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderUnavailableError, match="save_pretrained"):
        TextEncoder(str(tmp_path / "nope"))


def test_cache_roundtrip_follows_parquet_rows(tmp_path, tiny_clip_dir):
    caps = pd.DataFrame({"image_id": [1, 1, 2], "caption_id": [10, 11, 12],
                         "caption": ["a red circle", "a round red shape", "a blue square"],
                         "file_name": ["x", "x", "y"], "split": ["val"] * 3})
    caps.to_parquet(tmp_path / "c.parquet")
    build_text_cache(tmp_path / "c.parquet", tmp_path / "t.safetensors", str(tiny_clip_dir),
                     batch_size=2, device="cpu")
    full = load_text_cache(tmp_path / "t.safetensors", caps)
    subset = load_text_cache(tmp_path / "t.safetensors", caps.iloc[[2, 0]])
    assert torch.equal(subset, full[[2, 0]])
    with pytest.raises(RuntimeError, match="does not match"):
        load_text_cache(tmp_path / "t.safetensors", caps.assign(caption_id=[10, 11, 99]))
