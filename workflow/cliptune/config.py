"""Configuration: defaults, JSON-Schema validation and per-variant resolution.

A variant is a small override deep-merged over the shared sections. The
resolved variant is what training and evaluation see, and its canonical JSON
(sorted keys) is what Snakemake compares to decide what to rerun.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

# Sections a variant may override; everything else is shared by all variants.
VARIANT_SECTIONS = ("text_encoder", "model", "train", "eval", "image_size")
UNTRAINED = "untrained"

DEFAULTS: dict[str, Any] = {
    "dataset": {
        "root": None,
        "splits": {"train": "train2014", "val": "val2014"},
        "max_bad_image_fraction": 0.001,
        "demo": {
            "train_images": 1500,
            "val_images": 300,
            "image_size": 96,
            "seed": 0,
            "captions_per_image": 5,
            "max_shapes": 3,
        },
    },
    "image_size": 224,
    "image_cache": {"workers": 2},
    "text_encoder": {
        "model": "openai/clip-vit-base-patch32",
        "pooling": "auto",
        "max_length": 77,
        "batch_size": 256,
    },
    "model": {
        "backbone": "resnet50",
        "weights": "IMAGENET1K_V2",
        "pooling": "avg",
        "attention_heads": 8,
        "head": {"hidden_dim": 1024, "depth": 2, "norm": "none", "dropout": 0.0},
        "freeze_backbone": False,
    },
    "train": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 1e-4,
        "weight_decay": 0.05,
        "warmup_fraction": 0.05,
        "grad_clip": 1.0,
        "temperature": 0.07,
        "learnable_temperature": True,
        "max_logit_scale": 100.0,
        "sampler": "one_caption_per_image",
        "seed": 0,
        "device": "auto",
        "precision": "auto",
        "max_nonfinite_steps": 20,
        "checkpoint_every_epochs": 1,
    },
    "eval": {"split": "val", "ks": [1, 5, 10], "block_size": 1024, "batch_size": 256},
    "baseline": "baseline",
    "include_untrained": True,
}


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key and the fix."""


def deep_merge(base: Mapping, override: Mapping | None) -> dict:
    """Return base updated recursively by override (override wins, lists replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@cache
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _path_str(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _subschema(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return schema["$defs"][ref.split("/")[-1]]
    return node


def _explain(error: jsonschema.ValidationError, schema: dict) -> str:
    """Turn a jsonschema error into one line that names the key and what is allowed."""
    where = _path_str(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(_subschema(schema, error.schema).get("properties", {}))
        extra = re.findall(r"'([^']+)'", error.message.split("(")[-1])
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        prefix = f"{where}." if error.absolute_path else ""
        return (
            f"unknown key {prefix}{', '.join(hints)}; allowed keys here: {', '.join(allowed)}"
        )
    if error.validator == "enum":
        return f"{where} = {error.instance!r} is not allowed; use one of {error.validator_value}"
    if error.validator == "type":
        return f"{where} = {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return _explain(best, schema)
    return f"{where}: {error.message}"


def validate(config: Mapping) -> None:
    """Raise ConfigError describing the first (most relevant) schema violation."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"config error: {_explain(best, schema)}")


def load_config(config: Mapping) -> dict:
    """Validate the raw user config, then fill defaults. Returns a new dict."""
    validate(config)
    cfg = deep_merge(DEFAULTS, config)
    if cfg["dataset"].get("root") is None and cfg["dataset"]["source"] == "demo":
        cfg["dataset"]["root"] = f"resources/{cfg['dataset']['name']}"
    if cfg["dataset"]["source"] == "coco" and not cfg["dataset"].get("root"):
        raise ConfigError(
            "config error: dataset.root is required when dataset.source is 'coco'; "
            "point it at a folder holding annotations/ and the image folders"
        )
    variants = cfg["variants"]
    if cfg["baseline"] not in variants:
        raise ConfigError(
            f"config error: baseline = {cfg['baseline']!r} is not a variant; "
            f"use one of {sorted(variants)}"
        )
    for name in variants:
        resolved = resolve_variant(cfg, name)
        eval_split = resolved["eval"]["split"]
        if eval_split not in cfg["dataset"]["splits"]:
            raise ConfigError(
                f"config error: variants.{name}.eval.split = {eval_split!r} is not a dataset "
                f"split; use one of {sorted(cfg['dataset']['splits'])}"
            )
    if "train" not in cfg["dataset"]["splits"]:
        raise ConfigError("config error: dataset.splits needs a 'train' entry")
    return cfg


def variant_names(cfg: Mapping) -> list[str]:
    names = list(cfg["variants"])
    if cfg.get("include_untrained", True):
        names.append(UNTRAINED)
    return names


def resolve_variant(cfg: Mapping, name: str) -> dict:
    """Shared sections deep-merged with the variant's overrides.

    ``untrained`` is the baseline's architecture with zero epochs: the
    reference row that shows what training bought.
    """
    if name == UNTRAINED:
        resolved = resolve_variant(cfg, cfg["baseline"])
        resolved["train"]["epochs"] = 0
        resolved["name"] = UNTRAINED
        return resolved
    if name not in cfg["variants"]:
        raise ConfigError(f"unknown variant {name!r}; configured: {sorted(cfg['variants'])}")
    shared = {key: cfg[key] for key in VARIANT_SECTIONS}
    resolved = deep_merge(shared, cfg["variants"][name] or {})
    resolved["name"] = name
    return resolved


def canonical_json(obj: Any) -> str:
    """Key-order independent JSON: Snakemake compares params by repr, so order matters."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def short_hash(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def encoder_key(text_encoder: Mapping) -> str:
    """Filesystem-safe, readable name of a text encoder setting for cache paths.

    Everything that changes the embeddings (model, pooling, max length) is in
    the key, so switching encoders reruns the cache and what reads it, while
    batch size (which does not change results) is not.
    """
    model = str(text_encoder["model"])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.strip("/")).strip("-").lower()
    if len(slug) > 60:
        slug = slug[-40:] + "-" + short_hash(model, 8)
    slug += f"_len{text_encoder['max_length']}"
    if text_encoder.get("pooling", "auto") != "auto":
        slug += f"_{text_encoder['pooling']}"
    return slug
