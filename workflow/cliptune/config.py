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

# A short, general subset of the CLIP paper's zero-shot ensembling templates.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "a picture of a {}.",
)

DEFAULTS: dict[str, Any] = {
    "dataset": {
        "root": None,  # per source: see _resolve_dataset
        "splits": None,  # None: SOURCE_SPLITS[source]
        "annotations": None,  # caption file; Karpathy sources default to {root}/dataset_*.json
        "download": False,  # coco / karpathy_coco: fetch COCO 2014 into root
        "keep_archives": False,  # keep the downloaded zips after extraction
        "download_files": {},  # per-archive {url, size, md5, sha256} overrides
        "use_restval": True,  # karpathy_coco: train on train + restval (113k images)
        "subset": {"images": None, "mode": "random", "seed": 0},
        "holdout": {"val": 1000, "test": 1000, "seed": 0},  # sources without splits
        "columns": {"image": None, "caption": None, "split": None},  # table: auto-detect
        "samples": {"count": 16, "seed": 0},  # samples.png grid
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
        "kind": "resnet",
        "backbone": "resnet50",
        "weights": "IMAGENET1K_V2",
        "pooling": "avg",
        "attention_heads": 8,
        "head": {"hidden_dim": 1024, "depth": 2, "norm": "none", "dropout": 0.0},
        "freeze_backbone": False,
        "trainable_stages": None,
        "freeze_bn_stats": True,
        "clip": {
            "model": "openai/clip-vit-base-patch32",
            "lock_image": False,
            "lock_text": True,
            "lora": {"text": False, "vision": False, "r": 8, "alpha": 16, "dropout": 0.05,
                     "target_modules": ["q_proj", "v_proj"]},
        },
        "dual_encoder": {
            "tokenizer": None,
            "embed_dim": 256,
            "vision": {"patch_size": 8, "width": 256, "depth": 4, "heads": 4},
            "text": {"width": 256, "depth": 4, "heads": 4, "max_length": 64},
        },
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
        # Replicated training: one run per seed (separate jobs); null = just train.seed.
        "seeds": None,
        "device": "auto",
        "precision": "auto",
        "max_nonfinite_steps": 20,
        "checkpoint_every_epochs": 1,
        "head_lr": None,
        "loss": "infonce",
        "triplet": {"margin": 0.2, "mining": "semihard"},
        "hard_negatives": {"k": 8, "refresh_epochs": 1, "hardest_weight": 1.0, "margin": 0.2},
        "accum_steps": 1,
        "augment": {"enabled": False, "scale": [0.5, 1.0], "flip": 0.5, "color_jitter": 0.2,
                    "rotation": 10.0},
        "caption_word_dropout": 0.0,
        "channels_last": True,
        "compile": False,
        "monitor": "val_loss",
        "patience": None,
        "min_delta": 0.0,
        "val_max_images": None,
        "divergence": {"max_restarts": 2, "lr_factor": 0.5},
        "tensorboard": True,
        "log_every_steps": 10,
        # Mid-epoch checkpoints for preemption (SLURM time limits); 0 turns either off.
        "checkpoint_every_steps": 0,
        "checkpoint_every_minutes": 15,
        "devices": 1,
        "nodes": 1,
    },
    "eval": {"split": "val", "ks": [1, 5, 10], "block_size": 1024, "batch_size": 256},
    # Cluster-bootstrap intervals (docs/report.md); shared by all variants, since paired
    # comparisons with the baseline must use the same resamples.
    "bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 0},
    "baseline": "baseline",
    "include_untrained": True,
    # Optuna search (rule hpo; its own target, not part of `all`).
    "hpo": {
        "trials": 20,
        "epochs": None,
        "metric": "val_recall",
        "seed": 0,
        "space": {"lr": [1e-5, 1e-2], "temperature": [0.01, 0.2],
                  "weight_decay": [0.0, 0.2], "batch_size": [32, 64, 128]},
    },
    # Figures and results/summary.md (docs/report.md); changing it reruns only those.
    "report": {
        "queries": ["a dog playing", "sport", "a cat", "food on a plate"],
        "top_k": 5,
        "n_images": 4,
        "heatmap_size": 12,
        "seed": 0,
        "anchors_comparable": False,
        "zero_shot": {
            "classes": None,  # null: COCO's 80 categories (demo: its shape names)
            "templates": list(DEFAULT_TEMPLATES),
            "top_classes": 5,
        },
    },
}


# cliptune split -> source split label, when dataset.splits is not given.
SOURCE_SPLITS: dict[str, dict[str, str]] = {
    "demo": {"train": "train2014", "val": "val2014"},
    "coco": {"train": "train2014", "val": "val2014"},
    "karpathy_coco": {"train": "train", "val": "val", "test": "test"},
    "flickr30k": {"train": "train", "val": "val", "test": "test"},
    "json": {"train": "train", "val": "val"},
    "folder": {"train": "train", "val": "val"},
    "table": {"train": "train", "val": "val"},
}
KARPATHY_FILES = {"karpathy_coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
COCO_DOWNLOAD_ROOT = "resources/coco2014"


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
    _resolve_dataset(cfg["dataset"], config["dataset"])
    variants = cfg["variants"]
    if cfg["baseline"] not in variants:
        raise ConfigError(
            f"config error: baseline = {cfg['baseline']!r} is not a variant; "
            f"use one of {sorted(variants)}"
        )
    for name in variants:
        _check_seeds(config, cfg, name)
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


def _resolve_dataset(ds: dict, raw: Mapping) -> None:
    """Fill the source-dependent dataset defaults and reject combinations that cannot work."""
    source = ds["source"]
    # Given splits replace the per-source default (a deep merge would keep stale entries).
    ds["splits"] = dict(raw.get("splits") or SOURCE_SPLITS[source])
    if ds["download"] and source not in ("coco", "karpathy_coco"):
        raise ConfigError(
            f"config error: dataset.download downloads COCO 2014 only; with dataset.source = "
            f"{source!r} set download: false and point dataset.root at your data"
        )
    if ds["download"] and source == "coco":
        bad = sorted(set(ds["splits"].values()) - {"train2014", "val2014"})
        if bad:
            raise ConfigError(
                f"config error: dataset.splits names folder(s) {bad} that dataset.download "
                "cannot fetch; COCO 2014 has train2014 and val2014"
            )
    if ds["annotations"] is None and source in ("json", "table"):
        kind = "the JSON file" if source == "json" else "the CSV or Parquet file"
        raise ConfigError(
            f"config error: dataset.annotations is required when dataset.source is "
            f"{source!r}; point it at {kind} with the captions"
        )
    if ds["root"] is None:
        if source == "demo":
            ds["root"] = f"resources/{ds['name']}"
        elif ds["download"]:
            ds["root"] = COCO_DOWNLOAD_ROOT
        elif source in ("json", "table") and ds["annotations"]:
            ds["root"] = str(Path(ds["annotations"]).parent)  # image paths relative to it
        else:
            what = {
                "coco": "a folder holding annotations/ and the image folders (or set "
                        "dataset.download: true)",
                "karpathy_coco": "the folder holding train2014/ and val2014/ (or set "
                                 "dataset.download: true)",
                "flickr30k": "the folder holding the Flickr30k images",
                "folder": "the folder holding one subfolder of images per split",
            }.get(source, "the folder the image paths are relative to")
            raise ConfigError(
                f"config error: dataset.root is required when dataset.source is "
                f"{source!r}; point it at {what}"
            )
    if ds["annotations"] is None and source in KARPATHY_FILES:
        ds["annotations"] = str(Path(ds["root"]) / KARPATHY_FILES[source])
    images = ds["subset"]["images"]
    if isinstance(images, Mapping):
        unknown = sorted(set(images) - set(ds["splits"]))
        if unknown:
            raise ConfigError(
                f"config error: dataset.subset.images names split(s) {unknown} that are not "
                f"in dataset.splits; use one of {sorted(ds['splits'])}"
            )


def variant_names(cfg: Mapping) -> list[str]:
    names = list(cfg["variants"])
    if cfg.get("include_untrained", True):
        names.append(UNTRAINED)
    return names


def _merged_variant(cfg: Mapping, name: str) -> dict:
    if name not in cfg["variants"]:
        raise ConfigError(f"unknown variant {name!r}; configured: {sorted(cfg['variants'])}")
    shared = {key: cfg[key] for key in VARIANT_SECTIONS}
    resolved = deep_merge(shared, cfg["variants"][name] or {})
    resolved["name"] = name
    return resolved


def resolve_variant(cfg: Mapping, name: str) -> dict:
    """Shared sections deep-merged with the variant's overrides: its primary run.

    ``untrained`` is the baseline's architecture with zero epochs: the
    reference row that shows what training bought. ``train.seeds`` is replaced
    by the run's own ``train.seed`` (the first seed), so adding a replicate seed
    never changes, and so never reruns, the primary run.
    """
    if name == UNTRAINED:
        resolved = resolve_variant(cfg, cfg["baseline"])
        resolved["train"]["epochs"] = 0
        resolved["name"] = UNTRAINED
        return resolved
    resolved = _merged_variant(cfg, name)
    seeds = resolved["train"].pop("seeds", None)
    if seeds:
        resolved["train"]["seed"] = seeds[0]
    return resolved


def variant_seeds(cfg: Mapping, name: str) -> list[int]:
    """Training seeds of a variant, primary first (``untrained`` is never replicated:
    it is a reference row, not a training result)."""
    if name == UNTRAINED:
        return [resolve_variant(cfg, name)["train"]["seed"]]
    train = _merged_variant(cfg, name)["train"]
    return list(train["seeds"]) if train.get("seeds") else [train["seed"]]


def replicate_run(variant: str, seed: int) -> str:
    """Run name (and folder below variants/) of a replicate: ``{variant}/seed{seed}``."""
    return f"{variant}/seed{seed}"


def run_names(cfg: Mapping) -> dict[str, list[str]]:
    """variant -> its runs, primary first: the primary keeps the variant's own paths,
    every further seed of ``train.seeds`` gets ``{variant}/seed{seed}``."""
    return {v: [v] + [replicate_run(v, s) for s in variant_seeds(cfg, v)[1:]]
            for v in variant_names(cfg)}


def resolve_run(cfg: Mapping, run: str) -> dict:
    """The resolved config of one run (a variant name or a ``{variant}/seed{s}`` replicate)."""
    variant, sep, seed = run.partition("/seed")
    resolved = resolve_variant(cfg, variant)
    if sep:
        if not seed.isdigit() or int(seed) not in variant_seeds(cfg, variant)[1:]:
            raise ConfigError(f"unknown run {run!r}; {variant}'s train.seeds are "
                              f"{variant_seeds(cfg, variant)}")
        resolved["train"]["seed"] = int(seed)
        resolved["name"] = run
    return resolved


def _check_seeds(raw: Mapping, cfg: Mapping, name: str) -> None:
    """An explicit train.seed must agree with train.seeds (whose first seed wins)."""
    seeds = _merged_variant(cfg, name)["train"].get("seeds")
    own = ((raw["variants"].get(name) or {}).get("train") or {})
    explicit = own.get("seed", (raw.get("train") or {}).get("seed"))
    if seeds and explicit is not None and explicit != seeds[0]:
        raise ConfigError(
            f"config error: variant {name!r} sets train.seed = {explicit} and train.seeds = "
            f"{seeds}; with train.seeds the first seed is the primary run, so drop train.seed "
            f"or list {explicit} first in train.seeds")


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
