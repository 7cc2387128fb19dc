"""Model kinds and tower options: ResNet weights/head/pooling, LoRA and full CLIP
fine-tuning on the tiny random CLIP, zero-shot, from-scratch dual encoder, augmentation."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file
from tiny_pairs import load_train_val, tiny_variant

from cliptune.config import DEFAULTS, deep_merge


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return load_train_val(tmp_path_factory.mktemp("pairs"))


def clip_variant(clip_dir, text_model="offline-minilm", **model) -> dict:
    v = tiny_variant(epochs=1, batch_size=8, lr=1e-2, tensorboard=False)
    v["text_encoder"] = {"model": text_model, "pooling": "auto", "max_length": 32}
    v["model"] = deep_merge(v["model"], {"kind": "clip", "clip": {"model": str(clip_dir)}})
    v["model"] = deep_merge(v["model"], model)
    return v


def _train(v, pairs, out, **kw):
    from cliptune.training.trainer import train_variant

    return train_variant(v, *pairs, out / "out", out / "ckpt" / "state.pt", show_progress=False,
                         **kw)


def _pretrained(clip_dir) -> dict[str, torch.Tensor]:
    from transformers import CLIPModel

    return {f"clip.{k}": v for k, v in CLIPModel.from_pretrained(clip_dir).state_dict().items()}


def test_lora_on_text_tower_leaves_base_weights_unchanged(tiny_clip_dir, pairs, tmp_path):
    from cliptune.evaluation.evaluate import evaluate_variant

    v = clip_variant(tiny_clip_dir, clip={"lora": {"text": True, "r": 4, "alpha": 8}},
                     )
    v["train"]["head_lr"] = 5e-2
    _train(v, pairs, tmp_path)
    trained = load_file(str(tmp_path / "out" / "model.safetensors"))
    base = _pretrained(tiny_clip_dir)
    lora = [k for k in trained if "lora_" in k]
    assert lora and all("text_model" in k for k in lora)
    assert {k.split(".")[-3] for k in lora} == {"lora_A", "lora_B"}
    assert any("q_proj.lora_B" in k and trained[k].abs().sum() > 0 for k in lora)  # B starts at 0
    assert not any(k.split(".")[-3] in ("k_proj", "out_proj") for k in lora)
    for key, value in base.items():  # every pretrained tensor is bit-identical
        if key.endswith("logit_scale"):
            continue
        head, _, leaf = key.rpartition(".")
        name = key if key in trained else f"{head}.base_layer.{leaf}"  # peft-wrapped layer
        assert torch.equal(trained[name], value), key
    # Evaluation embeds captions with the adapted tower (not the frozen cache).
    metrics = evaluate_variant(v, tmp_path / "out" / "model.safetensors", pairs[1],
                               tmp_path / "eval", DEFAULTS["bootstrap"], show_progress=False)
    emb = load_file(str(tmp_path / "eval" / "embeddings.safetensors"))
    assert emb["text"].shape == pairs[1].text.shape and not torch.allclose(emb["text"], pairs[1].text)
    assert 0 <= metrics["i2t_R@1"] <= 100


def test_lora_vision_tower_and_bad_targets(tiny_clip_dir):
    from cliptune.models.factory import build_model

    v = clip_variant(tiny_clip_dir, clip={"lora": {"vision": True,
                                                   "target_modules": ["q_proj", "fc1"]}})
    model = build_model(v, 16)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("vision_model" in n and "lora_" in n for n in trainable if "logit" not in n)
    assert any("fc1.lora_A" in n for n in trainable)
    assert not model.text_trained
    bad = clip_variant(tiny_clip_dir, clip={"lora": {"text": True, "target_modules": ["qkv"]}})
    with pytest.raises(ValueError, match="target_modules"):
        build_model(bad, 16)


def test_full_finetune_with_locked_text(tiny_clip_dir, pairs, tmp_path):
    v = clip_variant(tiny_clip_dir, clip={"lock_text": True, "lock_image": False})
    _train(v, pairs, tmp_path, write_outputs=False)
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)["model"]
    base = _pretrained(tiny_clip_dir)
    text = [k for k in base if k.startswith(("clip.text_model", "clip.text_projection"))]
    vision = [k for k in base if k.startswith("clip.vision_model.encoder")]
    assert all(torch.equal(state[k], base[k]) for k in text)
    assert any(not torch.equal(state[k], base[k]) for k in vision)


def test_zero_shot_row_is_pretrained_clip_over_the_cache(tiny_clip_dir, pairs, tmp_path):
    from transformers import CLIPModel

    from cliptune.models.factory import build_model, load_variant_model

    v = clip_variant(tiny_clip_dir, text_model=str(tiny_clip_dir))
    v["train"]["epochs"] = 0
    model = build_model(v, 16)
    assert model.text_from_cache  # same checkpoint as the text cache: no tokenizing
    _train(v, pairs, tmp_path)
    loaded = load_variant_model(v, tmp_path / "out" / "model.safetensors", 16, torch.device("cpu"))
    images = torch.from_numpy(np.ascontiguousarray(pairs[1].pixels[:4]))
    ours = loaded.encode_images(images)
    # Reference: HF's own forward with CLIP normalisation.
    ref_model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    ids = loaded.tokenizer(["a red circle"] * 4, return_tensors="pt")
    with torch.no_grad():
        ref = ref_model(input_ids=ids["input_ids"], pixel_values=pixels).image_embeds
        texts = loaded.encode_texts(["a red circle"])
    assert torch.allclose(ours, ref, atol=1e-5)
    ref_text = ref_model(input_ids=ids["input_ids"][:1], pixel_values=pixels[:1]).text_embeds
    assert torch.allclose(texts, ref_text.detach(), atol=1e-5)


def test_dual_encoder_from_scratch_trains(pairs, tmp_path):
    from cliptune.models.factory import build_model

    v = tiny_variant(epochs=1, batch_size=8, lr=1e-3, tensorboard=False)
    v["text_encoder"] = {"model": "offline-minilm", "pooling": "auto", "max_length": 32}
    v["model"] = deep_merge(v["model"], {"kind": "dual_encoder", "dual_encoder": {
        "tokenizer": None, "embed_dim": 16,  # None: text_encoder.model's vocabulary
        "vision": {"patch_size": 8, "width": 32, "depth": 1, "heads": 2},
        "text": {"width": 32, "depth": 1, "heads": 2, "max_length": 16}}})
    model = build_model(v, 16)
    assert not model.text_from_cache and all(p.requires_grad for p in model.parameters())
    result = _train(v, pairs, tmp_path, write_outputs=False)
    assert np.isfinite(result["history"][0]["train_loss"])
    assert model.encode_texts(["a red circle", "two blue squares"]).shape == (2, 16)


def test_missing_weights_offline_names_the_fix(monkeypatch):
    from cliptune.models.image_tower import WeightsUnavailableError, build_trunk

    def offline(weights=None):
        if weights is not None:
            raise urllib.error.URLError("no network")
        return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2])

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(WeightsUnavailableError, match=r"checkpoints/.*weights: null"):
        build_trunk("resnet18", "IMAGENET1K_V1")
    assert len(build_trunk("resnet18", None)) == 8
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_trunk("resnet18", "IMAGENET1K_V9")


def test_head_and_pooling_options():
    from cliptune.models.image_tower import AttentionPool2d, projection_head

    head = projection_head(512, 16, 64, 3, "layernorm", 0.1)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU",
                     "Dropout", "Linear"]
    assert [type(m).__name__ for m in projection_head(8, 4, 6, 2, "batchnorm", 0.0)] == [
        "Linear", "BatchNorm1d", "GELU", "Linear"]
    pool = AttentionPool2d(2, 32, 4)
    assert pool(torch.randn(3, 32, 2, 2)).shape == (3, 32)
    assert pool(torch.randn(3, 32, 4, 4)).shape == (3, 32)  # other input size: resampled grid
    with pytest.raises(ValueError, match="attention_heads"):
        AttentionPool2d(2, 30, 4)


def test_text_dim_mismatch_is_a_clear_error(tiny_clip_dir):
    from cliptune.models.factory import build_model

    v = clip_variant(tiny_clip_dir, text_model=str(tiny_clip_dir))
    with pytest.raises(ValueError, match="same checkpoint"):
        build_model(v, 384)


def test_augmentation_is_batched_and_bounded():
    from cliptune.data.augment import augment_captions, augment_images

    x = torch.rand(6, 3, 16, 16)
    strong = {"scale": [0.3, 1.0], "flip": 0.5, "color_jitter": 0.4, "rotation": 20.0}
    a = augment_images(x, strong, torch.Generator().manual_seed(1))
    b = augment_images(x, strong, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)  # one generator draw per batch
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)
    # A constant image stays constant under any warp; only colour jitter changes it.
    flat = torch.full((4, 3, 8, 8), 0.5)
    geo = augment_images(flat, dict(strong, color_jitter=0.0), torch.Generator().manual_seed(3))
    assert torch.allclose(geo, flat, atol=1e-6)
    rng = np.random.default_rng(0)
    caps = augment_captions(["a red circle on the left", "one"], 0.9, rng)
    assert all(c for c in caps) and caps[1] == "one"
    assert set(caps[0].split()) <= {"a", "red", "circle", "on", "the", "left"}
