"""Which variants can train on cached frozen-backbone features, and the cache's key.

Kept free of torch so the Snakefile can import it without slowing every dry run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The trunks of cliptune.models.image_tower.TRUNK_CHANNELS (a test keeps them in sync).
TRUNK_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0")


def feature_spec(variant: Mapping) -> dict | None:
    """What to cache for the resolved ``variant``, or None when its trunk output can change
    during training.

    Needs a trunk (ResNet or EfficientNet-Lite0) that is wholly frozen (``freeze_backbone:
    true``, no partially trainable stages, BatchNorm statistics frozen) and no
    image augmentation. A random-init trunk depends on the seed, so the seed is
    part of the key then.
    """
    model, train = variant["model"], variant["train"]
    if model["kind"] != "resnet":  # whole-CLIP variants have no such trunk
        return None
    if model["backbone"] not in TRUNK_BACKBONES or model["freeze_backbone"] is not True:
        return None
    if model["trainable_stages"] or model["freeze_bn_stats"] is False:
        return None
    if train["epochs"] == 0 or train["augment"]["enabled"]:
        return None
    spec = {"backbone": model["backbone"], "weights": model["weights"],
            "mode": "pooled" if model["pooling"] == "avg" else "map"}
    if spec["weights"] is None:
        spec["seed"] = int(train["seed"])
    return spec


def feature_key(spec: Mapping) -> str:
    weights = spec["weights"] or f"random-s{spec['seed']}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spec['backbone']}-{weights}-{spec['mode']}")


def feature_paths(features_dir: str, variant: Mapping, image_key: str,
                  prefix: str) -> dict[str, str]:
    """The feature cache files ``variant`` trains on, computed from the image cache
    ``image_key`` (cliptune.data.caches.keys); {} when it trains on pixels."""
    spec = feature_spec(variant)
    if spec is None:
        return {}
    base = f"{features_dir}/{feature_key(spec)}/{image_key}"
    return {f"{prefix}_features": f"{base}.npy", f"{prefix}_features_meta": f"{base}.json"}
