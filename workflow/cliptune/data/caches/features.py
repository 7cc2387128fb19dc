"""Frozen-backbone features, computed once per (dataset, split, size, backbone, weights).

When a variant's ResNet trunk is fully frozen (and kept in eval mode, so its
BatchNorm statistics never move) and it sees un-augmented pixels, the trunk's
output for an image never changes: every epoch of every such variant would
recompute the same numbers, and the trunk is >95% of the forward cost. This
stage runs the trunk over the image cache once and stores, row-aligned with
the image cache, either the pooled vector (average pooling has no weights:
``pooled``, float32) or the whole feature map (attention pooling is trained:
``map``, float16 to halve the disk and page-cache footprint). Training then
fetches features instead of pixels and runs only pooling + head.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from cliptune.data.caches.feature_keys import feature_key, feature_spec  # noqa: F401 - re-exported
from cliptune.data.caches.images import open_cache
from cliptune.data.loading.pairs import PairData
from cliptune.files.atomic import atomic_path, reserve, write_json
from cliptune.files.integrity import verify
from cliptune.models.image_tower import (
    PixelNormalize,
    build_trunk,
    input_stats,
)
from cliptune.runtime import autocast_dtype, embed_all, pick_device, progress, seed_everything

log = logging.getLogger(__name__)

MAP_DTYPE, POOLED_DTYPE = np.float16, np.float32


class FeatureCacheMismatchError(RuntimeError):
    pass


def trunk_fingerprint(trunk: torch.nn.Module) -> str:
    """SHA-256 over the trunk's parameters and buffers: proves which weights made the features."""
    h = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_spec_trunk(spec: Mapping) -> torch.nn.Module:
    # train_variant seeds and builds the trunk first, so the same seed gives the same weights.
    if spec["weights"] is None:
        seed_everything(int(spec["seed"]))
    return build_trunk(spec["backbone"], spec["weights"]).eval()


@torch.inference_mode()
def build_feature_cache(image_array: Path, image_index: Path, spec: Mapping, out_array: Path,
                        out_meta: Path, batch_size: int = 128, device: str = "auto",
                        show_progress: bool = True) -> dict:
    """Run the frozen trunk over every cached image; row r of the output = image cache row r."""
    pixels, index = open_cache(image_array, image_index)
    dev = pick_device(device)
    amp = autocast_dtype("auto", dev)
    trunk = build_spec_trunk(spec)
    fingerprint = trunk_fingerprint(trunk)
    trunk = trunk.to(dev, memory_format=torch.channels_last)
    norm = PixelNormalize(*input_stats(spec["backbone"])).to(dev)
    n, size = pixels.shape[0], pixels.shape[1]
    with torch.autocast(dev.type, enabled=False):
        probe = trunk(norm.from_uint8(torch.zeros(1, size, size, 3, dtype=torch.uint8)))
    shape = (n, probe.shape[1]) if spec["mode"] == "pooled" else (n, *probe.shape[1:])
    dtype = POOLED_DTYPE if spec["mode"] == "pooled" else MAP_DTYPE
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with atomic_path(out_array, seal=True, expected_bytes=nbytes) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        reserve(tmp)
        def encode(start: int) -> torch.Tensor:
            batch = torch.from_numpy(np.array(pixels[start:start + batch_size]))  # writable
            feats = trunk(norm.from_uint8(batch))
            if spec["mode"] == "pooled":
                return feats.float().mean(dim=(2, 3))  # == AdaptiveAvgPool2d(1) + Flatten
            return feats

        store = _row_writer(out)
        embed_all(encode, progress(range(0, n, batch_size), desc=f"trunk features {size}px",
                                   disable=not show_progress, unit="batch"),
                  dev, amp, sink=store)
        out.flush()
        del out, store  # the memmap is closed before the file is moved into place
    meta = {"spec": dict(spec), "trunk_sha256": fingerprint, "rows": n, "image_size": size,
            "shape": list(shape), "dtype": np.dtype(dtype).name,
            "image_ids": index["image_id"].astype(int).tolist()}
    write_json(out_meta, meta)
    log.info("cached %s features %s for %d images", feature_key(spec), shape[1:], n)
    return meta


def _row_writer(out: np.ndarray):
    """A sink writing consecutive batches into ``out`` from row 0 on."""
    done = 0

    def store(feats: torch.Tensor) -> None:
        nonlocal done
        out[done:done + len(feats)] = feats.float().cpu().numpy().astype(out.dtype)
        done += len(feats)

    return store


@dataclass
class FeaturePairData(PairData):
    """PairData whose ``pixels`` are cached trunk features (float), row-aligned with the images."""

    feature_meta: dict = field(default_factory=dict)

    def fetch(self, caption_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img_rows = self.caption_image_row[caption_rows]
        order = np.argsort(img_rows, kind="stable")  # sequential memmap reads
        feats = np.empty((len(img_rows), *self.pixels.shape[1:]), dtype=self.pixels.dtype)
        feats[order] = self.pixels[img_rows[order]]
        return torch.from_numpy(feats).float(), self.text[torch.from_numpy(caption_rows)]


def with_features(pairs: PairData, array: Path, meta_path: Path) -> FeaturePairData:
    """Swap the pixels of ``pairs`` for the feature cache built from the same image cache."""
    verify(array)
    meta = json.loads(Path(meta_path).read_text())
    feats = np.load(array, mmap_mode="r")
    if feats.shape[0] != pairs.pixels.shape[0] or meta["rows"] != feats.shape[0]:
        raise FeatureCacheMismatchError(
            f"feature cache {array} has {feats.shape[0]} rows but the image cache has "
            f"{pairs.pixels.shape[0]}; delete {array} and rerun so it is rebuilt")
    values = {f.name: getattr(pairs, f.name) for f in fields(PairData)}
    values["pixels"] = feats
    return FeaturePairData(**values, feature_meta=meta)


def load_split(inputs: Mapping[str, str], prefix: str) -> PairData:
    """PairData of one split from a rule's named inputs: ``{prefix}_captions``, ``_text``,
    ``_array``, ``_index``; with ``{prefix}_features`` and ``_features_meta`` (fully
    frozen variants) the cached trunk features replace the pixels. The one loader of the
    single-process stages and the torchrun entry."""
    pairs = PairData.load(*(Path(inputs[f"{prefix}_{k}"])
                            for k in ("captions", "text", "array", "index")))
    if f"{prefix}_features" not in inputs:
        return pairs
    return with_features(pairs, Path(inputs[f"{prefix}_features"]),
                         Path(inputs[f"{prefix}_features_meta"]))


def check_features_match(model: torch.nn.Module, *datasets: PairData) -> None:
    """Fail fast if cached features were made by a trunk other than ``model``'s (no-op for pixels)."""
    metas = [d.feature_meta for d in datasets if isinstance(d, FeaturePairData)]
    if not metas:
        return
    image = model.image if hasattr(model, "image") else model
    trainable = any(p.requires_grad for p in image.trunk.parameters())
    if trainable or not getattr(image, "freeze_bn_stats", True):
        raise FeatureCacheMismatchError(
            "cached backbone features need a wholly frozen trunk with frozen BatchNorm "
            "statistics (model.freeze_backbone: true, freeze_bn_stats: true)")
    mine = trunk_fingerprint(image.trunk)
    for meta in metas:
        if meta["trunk_sha256"] != mine:
            raise FeatureCacheMismatchError(
                f"cached features {feature_key(meta['spec'])} were computed by different trunk "
                "weights than this variant's (seed or torchvision weights changed?); delete "
                f"results/cache/features/{feature_key(meta['spec'])}/ and rerun")
