"""Toy-scale overlay: run a shipped config here, changing only what cannot run here.

A shipped config names a dataset to download, hub checkpoints, ImageNet weights and
GPU-sized runs. ``toy_overlay`` replaces exactly those (the keys in ``TOUCHABLE``)
and nothing else, so a variant added to a shipped config is exercised as shipped:

* the dataset -> generated stand-ins in the source's own layout (``write_toy_sources``):
  a COCO-2014 folder (source ``coco``, ``download: false``), Karpathy JSON files
  (``karpathy_coco``, ``flickr30k``); the demo generator just draws fewer images;
* hub ids (e.g. openai/clip-vit-base-patch32) and CLIP's 49,408-token BPE (``clip-bpe``)
  -> a tiny local CLIP saved with ``save_pretrained`` (tests/conftest.py ``tiny_clip_dir``);
* a from-scratch dual encoder's ViT-B/16-sized towers -> one tiny block each
  (``TINY_DUAL``; MLP ratio, dropout and context length stay as shipped);
* torchvision ImageNet weights (downloaded on first use) -> none; weights that ship in
  an installed package (``PACKAGED_WEIGHTS``) run offline and are kept;
* image size, epochs, batch sizes, HPO trials, a selection holdout and a dataset subset
  (``dataset.subset.images``: at most ``SUBSET_IMAGES`` per split, so a variant's own
  ``train.subset`` still trains on more or fewer images than the study's) -> small;
* an ``hpo.space`` key over sizes shrunk above (batch size, dual-encoder sizes) -> the
  toy value as its only choice; the other searched keys stay as shipped.

``changed_paths`` lets a test check that the overlay kept to that list.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAIN_IMAGES = 24
VAL_IMAGES = 16
IMAGE_SIZE = 32  # model input side
SOURCE_IMAGE_SIZE = 40  # side of the generated JPEGs (the cache resizes + crops)
EPOCHS = 1
BATCH_SIZE = 8
HPO_TRIALS = 2
SELECT_IMAGES = 4  # a COCO-style selection holdout of 5,000 train images cannot fit in 24
SUBSET_IMAGES = 12  # dataset.subset: a 20k subset of COCO is half the stand-in's images
# model.dual_encoder sizes at toy scale (patch 8 on the 32 px input: 16 patches).
TINY_DUAL = {"embed_dim": 16, "vision": {"patch_size": 8, "width": 32, "depth": 1, "heads": 2},
             "text": {"width": 32, "depth": 1, "heads": 2}}

# Dotted paths the overlay may change; a variant may hold the same keys under
# variants.<name>. (its override of the shared sections).
TOUCHABLE = (
    "dataset.root", "dataset.download", "dataset.annotations", "dataset.selection.images",
    "dataset.demo.train_images", "dataset.demo.val_images", "dataset.demo.image_size",
    "image_size", "text_encoder.model", "model.clip.model", "model.dual_encoder.tokenizer",
    "model.dual_encoder.embed_dim", "model.dual_encoder.vision.patch_size",
    "model.dual_encoder.vision.width", "model.dual_encoder.vision.depth",
    "model.dual_encoder.vision.heads", "model.dual_encoder.text.width",
    "model.dual_encoder.text.depth", "model.dual_encoder.text.heads",
    "model.weights", "train.epochs", "train.batch_size", "dataset.subset.images",
    *(f"dataset.subset.images.{split}" for split in ("train", "val", "test", "select")),
    "hpo.trials", "hpo.epochs",
)  # fmt: skip
# hpo.space.<key>.<field> may change when every path <key> sets is in TOUCHABLE.
SPACE_FIELD = re.compile(r"^hpo\.space\.(.+)\.(choices|low|high|log|step)$")
# Backbones whose pretrained weights come with an installed package (no download).
PACKAGED_WEIGHTS = frozenset({"efficientnet_lite0"})
VARIANT_SECTIONS = ("image_size", "text_encoder", "model", "train", "eval")


# ------------------------------------------------------------------------- data stand-ins


def write_toy_sources(root: Path) -> dict[str, Path]:
    """Generate each source's layout once under ``root``; returns source -> dataset root."""
    from cliptune.demo.dataset import generate_demo_dataset

    coco = root / "coco2014"
    generate_demo_dataset(coco, train_images=TRAIN_IMAGES, val_images=VAL_IMAGES,
                          image_size=SOURCE_IMAGE_SIZE, seed=3)
    _write_instances(coco, "val2014")
    flickr = root / "flickr30k"
    flickr.mkdir()
    return {"coco": coco, "karpathy_coco": _write_karpathy(coco, coco / "dataset_coco.json"),
            "flickr30k": _write_karpathy(coco, flickr / "dataset_flickr30k.json", flat=True)}


def _coco_split(coco: Path, folder: str) -> tuple[list[dict], list[dict]]:
    payload = json.loads((coco / "annotations" / f"captions_{folder}.json").read_text())
    return payload["images"], payload["annotations"]


def _write_instances(coco: Path, folder: str) -> None:
    """COCO object annotations for ``folder`` (the real download ships them): one
    category per image, so the zero-shot accuracy path runs as it does on COCO."""
    from cliptune.evaluation.zero_shot_tasks import COCO_CATEGORIES

    images, _ = _coco_split(coco, folder)
    cats = [{"id": i + 1, "name": name, "supercategory": "thing"}
            for i, name in enumerate(COCO_CATEGORIES)]
    anns = [{"id": n + 1, "image_id": img["id"], "category_id": n % len(cats) + 1,
             "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0}
            for n, img in enumerate(images)]
    payload = {"images": images, "annotations": anns, "categories": cats}
    (coco / "annotations" / f"instances_{folder}.json").write_text(json.dumps(payload))


def _write_karpathy(coco: Path, path: Path, flat: bool = False) -> Path:
    """Karpathy's split file over the generated images: train2014 -> train (a few
    restval), val2014 halves -> val and test. ``flat`` (Flickr30k) copies the images
    next to the file, which has no ``filepath``."""
    entries, sent = [], 0
    for folder in ("train2014", "val2014"):
        images, anns = _coco_split(coco, folder)
        by_image: dict[int, list[str]] = {}
        for ann in anns:
            by_image.setdefault(ann["image_id"], []).append(ann["caption"])
        for n, img in enumerate(images):
            if folder == "train2014":
                split = "restval" if n % 6 == 5 else "train"
            else:
                split = "val" if n < len(images) // 2 else "test"
            entry = {"split": split, "filename": img["file_name"], "imgid": len(entries),
                     "sentences": []}
            for text in by_image[img["id"]]:
                entry["sentences"].append({"raw": text, "tokens": text.lower().split(),
                                           "sentid": sent, "imgid": len(entries)})
                sent += 1
            if flat:
                shutil.copy(coco / folder / img["file_name"], path.parent / img["file_name"])
            else:
                entry.update(filepath=folder, cocoid=img["id"])
            entries.append(entry)
    path.write_text(json.dumps({"images": entries, "dataset": path.stem.split("_")[1]}))
    return path.parent


# ----------------------------------------------------------------------------- overlay


def toy_overlay(cfg: Mapping, sources: Mapping[str, Path], clip_dir: Path) -> dict:
    """A copy of ``cfg`` that runs here at toy scale (module docstring)."""
    from cliptune.config.datasets import carves_selection
    from cliptune.config.load import load_config, resolve_variant

    out = copy.deepcopy(dict(cfg))
    _toy_dataset(out["dataset"], sources)
    # Shared sections: what the config leaves out comes from the defaults (a hub id,
    # ImageNet weights, 224 px), so set the resolved value explicitly where it needs it.
    full = load_config(out)
    selection = out["dataset"].get("selection") or {}
    # The demo's default holdout (images: null) already scales with its train_images.
    if carves_selection(full["dataset"]) and (selection.get("images") is not None
                                              or full["dataset"]["source"] != "demo"):
        out["dataset"].setdefault("selection", {})["images"] = SELECT_IMAGES
    shared = {key: copy.deepcopy(full[key]) for key in ("image_size", "text_encoder", "model",
                                                        "train")}
    backbone = full["model"]["backbone"]
    _toy_sections(shared, clip_dir, backbone)
    if any(resolve_variant(full, n)["model"]["kind"] == "dual_encoder" for n in full["variants"]):
        _shrink_dual(shared["model"]["dual_encoder"], everything=True)
    for path in TOUCHABLE:
        head = path.split(".")[0]
        if head in shared and _get(shared, path) != _get(full, path):
            _set(out, path, _get(shared, path))
    for override in (out.get("variants") or {}).values():
        if override:
            _toy_sections(override, clip_dir, backbone)
    if "hpo" in out:
        _toy_hpo(out["hpo"], shared, full)
    return out


def _toy_dataset(ds: dict, sources: Mapping[str, Path]) -> None:
    source = ds["source"]
    if source == "demo":
        ds.setdefault("demo", {}).update(train_images=TRAIN_IMAGES, val_images=VAL_IMAGES,
                                         image_size=SOURCE_IMAGE_SIZE)
        return
    if source not in sources:
        raise NotImplementedError(
            f"toy_overlay has no stand-in for dataset.source {source!r}: teach "
            "tests/toy_overlay.write_toy_sources that layout")
    ds["root"] = str(sources[source])
    ds["download"] = False
    images = (ds.get("subset") or {}).get("images")
    if isinstance(images, int):
        ds["subset"]["images"] = min(images, SUBSET_IMAGES)
    elif isinstance(images, Mapping):
        ds["subset"]["images"] = {split: n if n is None else min(n, SUBSET_IMAGES)
                                  for split, n in images.items()}
    karpathy = {"karpathy_coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
    if "annotations" in ds and source in karpathy:  # else the default name under root
        ds["annotations"] = str(sources[source] / karpathy[source])


def _toy_sections(section: dict, clip_dir: Path, backbone: str) -> None:
    """The variant-overridable sections of the top level or of one variant
    (``backbone``: the shared one, for a variant that does not set its own)."""
    if section.get("image_size") is not None:
        section["image_size"] = IMAGE_SIZE
    _hub_to_local(section.get("text_encoder"), "model", clip_dir)
    model = section.get("model") or {}
    _hub_to_local(model.get("clip"), "model", clip_dir)
    dual = model.get("dual_encoder")
    _hub_to_local(dual, "tokenizer", clip_dir)
    if dual:
        if dual.get("tokenizer") == "clip-bpe":  # 49,408 tokens: the tiny CLIP's instead
            dual["tokenizer"] = str(clip_dir)
        _shrink_dual(dual, everything=False)
    if model.get("weights") is not None and model.get("backbone",
                                                      backbone) not in PACKAGED_WEIGHTS:
        model["weights"] = None
    train = section.get("train") or {}
    if train.get("epochs") is not None:
        train["epochs"] = min(train["epochs"], EPOCHS)  # 0 (evaluation only) stays 0
    if train.get("batch_size") is not None:
        train["batch_size"] = BATCH_SIZE


def _shrink_dual(dual: dict, everything: bool) -> None:
    """TINY_DUAL sizes: all of them (the resolved shared section), or only the sizes a
    variant sets itself (so a variant changes nothing it did not name)."""
    for key, value in TINY_DUAL.items():
        if isinstance(value, dict):
            tower = dual.setdefault(key, {}) if everything else dual.get(key) or {}
            tower.update({k: v for k, v in value.items() if everything or k in tower})
        elif everything or key in dual:
            dual[key] = value


def _hub_to_local(section: Mapping | None, key: str, clip_dir: Path) -> None:
    from cliptune.models.weights import hub_repo  # what the weights rule would download

    value = (section or {}).get(key)
    if isinstance(value, str) and hub_repo(value):
        section[key] = str(clip_dir)


def _toy_hpo(hpo: dict, shared: Mapping, full: Mapping) -> None:
    """Few short trials; a searched key the overlay shrinks in the shared sections (batch
    size, dual-encoder sizes) gets that toy value as its only choice, the rest stay."""
    from cliptune.config.hpo_space import expand

    hpo["trials"] = min(hpo.get("trials", HPO_TRIALS), HPO_TRIALS)
    if hpo.get("epochs") is not None:
        hpo["epochs"] = min(hpo["epochs"], EPOCHS)
    for key in hpo.get("space") or {}:
        paths = expand(key)
        if not all(p in TOUCHABLE and _get(shared, p) != _get(full, p) for p in paths):
            continue
        values = {json.dumps(_get(shared, p)) for p in paths}
        if len(values) != 1:
            raise NotImplementedError(f"hpo.space.{key}: the toy sizes of {paths} differ")
        hpo["space"][key] = {"choices": [json.loads(values.pop())]}


def _get(obj: Mapping, path: str) -> Any:
    for key in path.split("."):
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _set(obj: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[leaf] = value


# ------------------------------------------------------------------------------ checking


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def changed_paths(before: Mapping, after: Mapping) -> set[str]:
    """Dotted paths whose value differs, was added or was removed."""
    a, b = _flatten(before), _flatten(after)
    return {k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object())}


def touchable(path: str) -> bool:
    """Whether ``path`` is one the overlay may change (top level or inside a variant)."""
    m = re.match(r"^variants\.[^.]+\.(.*)$", path)
    if m:
        inner = m.group(1)
        return inner.split(".")[0] in VARIANT_SECTIONS and inner in TOUCHABLE
    m = SPACE_FIELD.match(path)
    if m:
        from cliptune.config.hpo_space import expand

        return all(p in TOUCHABLE for p in expand(m.group(1)))
    return path in TOUCHABLE
