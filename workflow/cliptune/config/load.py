"""Configuration: loading and per-variant resolution.

Defaults and validation live in cliptune.config.schema (read from the schema); the
per-source dataset defaults and the selection split in cliptune.config.datasets.

A variant is a small override deep-merged over the shared sections. The
resolved variant is what training and evaluation see, and its canonical JSON
(sorted keys) is what Snakemake compares to decide what to rerun.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cliptune.config.datasets import (
    resolve_dataset,
    resolve_selection,
    split_names,
    training_split,
)
from cliptune.config.hpo_space import check_space

# Re-exported: callers import the schema machinery and DEFAULTS from cliptune.config.load.
from cliptune.config.schema import (  # noqa: F401
    DEFAULTS,
    SCHEMA_PATH,
    ConfigError,
    is_section,
    leaf_default,
    load_schema,
    schema_defaults,
    subschema,
    validate,
)

# Sections a variant may override; everything else is shared by all variants.
VARIANT_SECTIONS = ("text_encoder", "model", "train", "eval", "image_size")
UNTRAINED = "untrained"


def deep_merge(base: Mapping, override: Mapping | None) -> dict:
    """Return base updated recursively by override (override wins, lists replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(config: Mapping) -> dict:
    """Validate the raw user config, then fill defaults. Returns a new dict."""
    space = _given_space(config)
    if space is not None:  # before the schema: its messages name the key and the fix
        check_space(space)
    validate(config)
    cfg = deep_merge(DEFAULTS, config)
    if space is not None:  # a given space replaces the default one (keys left out: not searched)
        cfg["hpo"]["space"] = copy.deepcopy(dict(space))
    resolve_dataset(cfg["dataset"], config["dataset"])
    # The study's folder, results/{study}/: a study over a dataset is named after it by default.
    cfg["study"] = cfg["study"] or cfg["dataset"]["name"]
    variants = cfg["variants"]
    for name, override in variants.items():
        given = {*(config.get("train") or {}), *((override or {}).get("train") or {})}
        check_variant(resolve_variant(cfg, name), given)
    if cfg["baseline"] not in variants:
        raise ConfigError(
            f"config error: baseline = {cfg['baseline']!r} is not a variant; "
            f"use one of {sorted(variants)}"
        )
    if "train" not in cfg["dataset"]["splits"]:
        raise ConfigError("config error: dataset.splits needs a 'train' entry")
    resolve_selection(cfg)
    _resolve_search(cfg)
    names = split_names(cfg["dataset"])
    for name in variants:
        _check_seeds(config, cfg, name)
        eval_split = resolve_variant(cfg, name)["eval"]["split"]
        if eval_split not in names or eval_split == "train":
            raise ConfigError(
                f"config error: variants.{name}.eval.split = {eval_split!r} is not a split "
                f"to report on; use one of {sorted(set(names) - {'train'})}"
            )
    return cfg


def _given_space(config: Mapping) -> Mapping | None:
    hpo = config.get("hpo")
    space = hpo.get("space") if isinstance(hpo, Mapping) else None
    return space if isinstance(space, Mapping) else None


def check_variant(resolved: Mapping, given_train: set) -> None:
    """What the schema cannot say about one resolved variant; also run on every HPO trial
    (``given_train``: the train keys it sets itself, which must not be ignored)."""
    name = resolved["name"]
    if resolved["train"]["temperature"] is None and resolved["model"]["kind"] != "clip":
        raise ConfigError(
            f"config error: variant {name!r} sets train.temperature: null, which keeps a "
            "pretrained CLIP checkpoint's own logit scale; a "
            f"{resolved['model']['kind']} model has none, so give a number (e.g. 0.07)")
    _check_train_keys(name, given_train, resolved["train"])
    resume_from, epochs = resolved["train"]["resume_from"], resolved["train"]["epochs"]
    if resume_from is not None and resume_from >= epochs:
        raise ConfigError(
            f"config error: variant {name!r} sets train.resume_from = {resume_from} with "
            f"train.epochs = {epochs}: nothing would be trained after it; raise train.epochs "
            "or resume from an earlier kept epoch")
    if resolved["model"]["kind"] == "dual_encoder":
        dual = resolved["model"]["dual_encoder"]
        for tower in ("vision", "text"):
            width, heads = dual[tower]["width"], dual[tower]["heads"]
            if width % heads:  # attention splits the width evenly over the heads
                raise ConfigError(
                    f"config error: variant {name!r}: model.dual_encoder.{tower}.heads = "
                    f"{heads} does not divide its width {width}; pick heads that divide it")


def _check_train_keys(variant: str, given: set, train: Mapping) -> None:
    """Reject train keys the variant sets (itself or via the shared section) that would
    otherwise be silently ignored, and [low, high] ranges given the wrong way round."""
    if train["warmup_steps"] is not None and "warmup_fraction" in given:
        raise ConfigError(
            f"config error: variant {variant!r} sets both train.warmup_steps and "
            "train.warmup_fraction; warmup_steps replaces warmup_fraction, so remove one "
            "(or set warmup_steps: null)")
    for key in ("scale", "ratio"):  # [low, high] ranges the schema cannot order
        low, high = train["augment"][key]
        if low > high:
            raise ConfigError(
                f"config error: variant {variant!r} sets train.augment.{key} = [{low}, {high}]; "
                f"it is a [low, high] range, so write [{high}, {low}]")
    if "momentum" in given and train["optimizer"] != "sgd":
        raise ConfigError(
            f"config error: variant {variant!r} sets train.momentum, which only applies to "
            f"optimizer: sgd (it uses {train['optimizer']}); remove it or set optimizer: sgd")


def _resolve_search(cfg: dict) -> None:
    """search.variant null -> the baseline, search.queries null -> report.queries (the
    schema's documented defaults); a variant that does not exist fails at start-up."""
    search = cfg["search"]
    search["variant"] = search["variant"] or cfg["baseline"]
    search["queries"] = list(dict.fromkeys(search["queries"] or cfg["report"]["queries"]))
    if search["variant"] not in variant_names(cfg):
        raise ConfigError(
            f"config error: search.variant = {search['variant']!r} is not a variant; use one "
            f"of {variant_names(cfg)}")


def variant_names(cfg: Mapping) -> list[str]:
    names = list(cfg["variants"])
    if cfg["include_untrained"]:
        names.append(UNTRAINED)
    return names


def _merged_variant(cfg: Mapping, name: str) -> dict:
    if name not in cfg["variants"]:
        raise ConfigError(f"unknown variant {name!r}; configured: {sorted(cfg['variants'])}")
    shared = {key: cfg[key] for key in VARIANT_SECTIONS}
    resolved = deep_merge(shared, cfg["variants"][name] or {})
    if resolved["eval"]["split"] is None:  # a variant's explicit null: the per-source default
        resolved["eval"]["split"] = cfg["eval"]["split"]
    resolved["name"] = name
    # Training validates on it, so a different selection split retrains the variant.
    resolved["select_split"] = cfg["dataset"]["selection"]["split"]
    # train.subset: the study's subset mode and seed unless the variant sets its own.
    own = resolved["train"]["subset"]
    if own is not None:
        sub = cfg["dataset"]["subset"]
        resolved["train"]["subset"] = {"mode": sub["mode"], "seed": sub["seed"], **own}
    resolved["train_split"] = training_split(cfg["dataset"], resolved["train"]["subset"])
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
        resolved["train"]["resume_from"] = None  # random init: nothing to restart from
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
    return list(train["seeds"]) if train["seeds"] else [train["seed"]]


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
    if text_encoder["pooling"] != "auto":
        slug += f"_{text_encoder['pooling']}"
    return slug
