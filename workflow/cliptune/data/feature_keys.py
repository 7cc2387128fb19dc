"""Which variants can train on cached frozen-backbone features, and the cache's key.

Kept free of torch so the Snakefile can import it without slowing every dry run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The trunks of cliptune.models.image_tower.TRUNK_CHANNELS (a test keeps them in sync).
TRUNK_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0")


def _augments(train_cfg: Mapping, variant: Mapping) -> bool:
    """True when the variant augments its images (any spelling of an augmentation section)."""
    for holder in (variant, train_cfg):
        for key in ("augment", "augmentation"):
            aug = holder.get(key)
            if isinstance(aug, Mapping):
                if aug.get("enabled", any(bool(v) for v in aug.values())):
                    return True
            elif aug:
                return True
    return False


def feature_spec(variant: Mapping) -> dict | None:
    """What to cache for ``variant``, or None when its trunk output can change during training.

    Needs a trunk (ResNet or EfficientNet-Lite0) that is wholly frozen (``freeze_backbone:
    true``, no partially trainable stages, BatchNorm statistics frozen) and no
    image augmentation. A random-init trunk depends on the seed, so the seed is
    part of the key then.
    """
    model = variant.get("model", {})
    train = variant.get("train", {})
    if model.get("kind", "resnet") != "resnet":  # whole-CLIP variants have no such trunk
        return None
    if model.get("backbone") not in TRUNK_BACKBONES or model.get("freeze_backbone") is not True:
        return None
    if model.get("trainable_stages") or model.get("freeze_bn_stats", True) is False:
        return None
    if train.get("epochs", 1) == 0 or _augments(train, variant):
        return None
    spec = {"backbone": model["backbone"], "weights": model.get("weights"),
            "mode": "pooled" if model.get("pooling", "avg") == "avg" else "map"}
    if spec["weights"] is None:
        spec["seed"] = int(train.get("seed", 0))
    return spec


def feature_key(spec: Mapping) -> str:
    weights = spec["weights"] or f"random-s{spec['seed']}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spec['backbone']}-{weights}-{spec['mode']}")


def feature_paths(results: str, variant: Mapping, split: str, prefix: str) -> dict[str, str]:
    """The feature cache files one split of ``variant`` trains on; {} when it trains on pixels."""
    spec = feature_spec(variant)
    if spec is None:
        return {}
    base = f"{results}/features/{feature_key(spec)}/{split}_{variant['image_size']}"
    return {f"{prefix}_features": f"{base}.npy", f"{prefix}_features_meta": f"{base}.json"}
