"""Config validation: every mistake stops the run with one message naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from cliptune.config.load import (
    ConfigError,
    canonical_json,
    encoder_key,
    load_config,
    resolve_run,
    resolve_variant,
    run_names,
    variant_names,
)


@pytest.fixture()
def demo(repo):
    return yaml.safe_load((repo / "config" / "demo.yaml").read_text())


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    return str(err.value)


def test_shipped_configs_validate(repo):
    for name in ("demo.yaml", "config.yaml"):
        cfg = load_config(yaml.safe_load((repo / "config" / name).read_text()))
        for variant in variant_names(cfg):
            resolved = resolve_variant(cfg, variant)
            assert resolved["name"] == variant


def test_unknown_key_names_key_and_suggests(demo):
    demo["train"]["epoch"] = 3
    msg = _error(demo)
    assert "train.'epoch'" in msg and "did you mean 'epochs'" in msg
    assert "batch_size" in msg  # lists allowed keys


def test_unknown_key_inside_variant(demo):
    demo["variants"]["bn"]["model"]["head"]["nrom"] = "batchnorm"
    msg = _error(demo)
    assert "variants.bn.model.head" in msg and "'nrom'" in msg and "norm" in msg


def test_bad_enum_lists_allowed_values(demo):
    demo["variants"]["bn"]["model"]["head"]["norm"] = "batchnrom"
    msg = _error(demo)
    assert "variants.bn.model.head.norm" in msg
    assert "'batchnrom'" in msg and "batchnorm" in msg and "layernorm" in msg


def test_wrong_type(demo):
    demo["train"]["lr"] = "fast"
    msg = _error(demo)
    assert "train.lr" in msg and "number" in msg


def test_impossible_value(demo):
    demo["train"]["batch_size"] = 1
    assert "train.batch_size" in _error(demo)
    demo["train"]["batch_size"] = 64
    demo["train"]["lr"] = -1.0
    assert "train.lr" in _error(demo)


def test_baseline_must_be_a_variant(demo):
    demo["baseline"] = "nope"
    msg = _error(demo)
    assert "baseline" in msg and "bn" in msg


def test_reserved_variant_name(demo):
    demo["variants"]["untrained"] = {}
    assert "untrained" in _error(demo)


def test_coco_needs_root(demo):
    demo["dataset"] = {"name": "coco", "source": "coco"}
    assert "dataset.root" in _error(demo)


def test_variant_deep_merge_touches_only_its_keys(demo):
    cfg = load_config(demo)
    base = resolve_variant(cfg, "baseline")
    bn = resolve_variant(cfg, "bn")
    assert bn["model"]["head"]["norm"] == "batchnorm"
    assert bn["model"]["head"]["hidden_dim"] == base["model"]["head"]["hidden_dim"]
    assert bn["train"] == base["train"]


def test_untrained_is_baseline_with_zero_epochs(demo):
    cfg = load_config(demo)
    untrained = resolve_variant(cfg, "untrained")
    base = resolve_variant(cfg, "baseline")
    assert untrained["train"]["epochs"] == 0
    assert untrained["model"] == base["model"]


def test_canonical_json_ignores_key_order():
    a = {"b": 1, "a": {"d": 2, "c": 3}}
    b = copy.deepcopy({"a": {"c": 3, "d": 2}, "b": 1})
    assert canonical_json(a) == canonical_json(b)


def test_encoder_key_depends_on_what_changes_embeddings():
    base = {"model": "openai/clip-vit-base-patch32", "pooling": "auto", "max_length": 77,
            "batch_size": 256}
    assert encoder_key(base) == "openai-clip-vit-base-patch32_len77"
    assert encoder_key({**base, "batch_size": 8}) == encoder_key(base)
    assert encoder_key({**base, "max_length": 32}) != encoder_key(base)
    assert encoder_key({**base, "pooling": "mean"}) != encoder_key(base)


def test_lab_config_follows_the_handout(repo):
    """config/config.yaml is the ELEC 475 lab study: fine-tuned ImageNet ResNet50 + GELU
    head against the frozen CLIP text tower, the handout's optimiser settings, and its
    four flag combinations plus the frozen-trunk setup."""
    cfg = load_config(yaml.safe_load((repo / "config" / "config.yaml").read_text()))
    base = resolve_variant(cfg, "baseline")
    assert base["text_encoder"]["model"] == "openai/clip-vit-base-patch32"
    m, t = base["model"], base["train"]
    # resnet50(pretrained=True) of the handout = torchvision's IMAGENET1K_V1.
    assert (m["backbone"], m["weights"], m["pooling"]) == ("resnet50", "IMAGENET1K_V1", "avg")
    assert m["freeze_backbone"] is False and m["trainable_stages"] is None
    assert m["head"] == {"hidden_dim": 1024, "depth": 2, "norm": "none", "dropout": 0.0}
    assert (t["optimizer"], t["lr"], t["weight_decay"], t["warmup_steps"], t["grad_clip"],
            t["epochs"], t["batch_size"], t["temperature"], t["loss"]) == (
        "adamw", 1e-4, 0.01, 500, 1.0, 10, 128, 0.07, "infonce")
    flags = {n: (resolve_variant(cfg, n)["model"]["head"]["norm"],
                 resolve_variant(cfg, n)["model"]["pooling"])
             for n in ("baseline", "bn", "attn", "bn_attn")}
    assert flags == {"baseline": ("none", "avg"), "bn": ("batchnorm", "avg"),
                     "attn": ("none", "attention"), "bn_attn": ("batchnorm", "attention")}
    assert resolve_variant(cfg, "frozen_trunk")["model"]["freeze_backbone"] is True
    # The evaluation notebook's zero-shot classes, a figure without labels.
    assert cfg["report"]["zero_shot"]["tasks"]["lab_classes"]["classes"] == [
        "a person", "an animal", "a landscape"]
    assert cfg["report"]["zero_shot"]["tasks"]["lab_classes"]["labels"] == "none"


def test_demo_is_a_miniature_of_the_lab(demo):
    cfg = load_config(demo)
    base = resolve_variant(cfg, "baseline")
    assert (base["model"]["backbone"], base["model"]["weights"]) == ("efficientnet_lite0",
                                                                     "imagenet")
    assert base["model"]["freeze_backbone"] is False
    assert set(variant_names(cfg)) == {"baseline", "bn", "attn", "bn_attn", "frozen_trunk",
                                       "untrained"}
    assert resolve_variant(cfg, "frozen_trunk")["model"]["freeze_backbone"] is True
    # The lab fixes the InfoNCE temperature at 0.07 (the schema's default learns it).
    for name in variant_names(cfg):
        train = resolve_variant(cfg, name)["train"]
        assert (train["temperature"], train["learnable_temperature"]) == (0.07, False), name


def test_one_seed_is_the_default_and_keeps_single_run_names(demo):
    cfg = load_config(demo)
    assert run_names(cfg) == {v: [v] for v in variant_names(cfg)}
    assert "seeds" not in resolve_variant(cfg, "baseline")["train"]
    assert cfg["bootstrap"] == {"resamples": 1000, "confidence": 0.95, "seed": 0,
                                "memory_mb": 64}


def test_seeds_make_one_run_per_seed_and_leave_the_primary_unchanged(demo):
    single = resolve_variant(load_config(demo), "bn")
    demo["variants"]["bn"]["train"] = {"seeds": [0, 3, 1]}
    cfg = load_config(demo)
    runs = run_names(cfg)
    assert runs["bn"] == ["bn", "bn/seed3", "bn/seed1"]
    assert runs["baseline"] == ["baseline"] and runs["untrained"] == ["untrained"]
    # Adding seeds never changes (so never reruns) the primary run's resolved config.
    assert canonical_json(resolve_run(cfg, "bn")) == canonical_json(single)
    replicate = resolve_run(cfg, "bn/seed3")
    assert replicate["train"]["seed"] == 3 and replicate["name"] == "bn/seed3"
    assert {k: v for k, v in replicate["train"].items() if k != "seed"} == {
        k: v for k, v in single["train"].items() if k != "seed"}
    with pytest.raises(ConfigError, match="unknown run 'bn/seed7'"):
        resolve_run(cfg, "bn/seed7")


def test_seed_conflicting_with_seeds_is_an_error(demo):
    demo["train"]["seed"] = 5
    demo["train"]["seeds"] = [0, 1]
    msg = _error(demo)
    assert "train.seed = 5" in msg and "list 5 first in train.seeds" in msg
    demo["train"]["seeds"] = [5, 1]
    assert run_names(load_config(demo))["baseline"] == ["baseline", "baseline/seed1"]


@pytest.mark.parametrize("bad", [{"seeds": [0, 0]}, {"seeds": []}, {"seeds": [-1]}])
def test_bad_seed_lists_are_rejected(demo, bad):
    demo["train"].update(bad)
    assert "train.seeds" in _error(demo)


@pytest.mark.parametrize("key, value", [("confidence", 1.0), ("confidence", 0.4),
                                        ("resamples", 10), ("size", 3),
                                        ("memory_mb", 0)])
def test_bad_bootstrap_settings_are_rejected(demo, key, value):
    demo["bootstrap"] = {key: value}
    assert "bootstrap" in _error(demo)


def test_bootstrap_is_shared_not_per_variant(demo):
    demo["variants"]["bn"]["bootstrap"] = {"resamples": 500}
    assert "'bootstrap'" in _error(demo)
