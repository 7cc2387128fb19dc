"""The dataset section: per-source defaults (splits, root, annotations, downloads) and
the model-selection split, resolved once when the config loads.

A source without a test split selects the model on ``SELECT_SPLIT``, a seeded holdout
of train images the captions stage carves out; one with a test split selects on val
and reports test (config.py calls :func:`resolve_dataset` and :func:`resolve_selection`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from cliptune.config.schema import ConfigError

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
# Model selection (dataset.selection): without a test split, a seeded holdout of train
# images named SELECT_SPLIT selects the model and val is reported.
SELECT_SPLIT = "select"
SELECT_IMAGES = 5000
COCO_TRAIN_IMAGES = 82783  # train2014: the demo's holdout keeps COCO's fraction
COCO_DOWNLOAD_ROOT = "resources/coco2014"
# dataset.download: kaggle (Flickr30k): the image folder link; results.csv goes beside it.
KAGGLE_IMAGES = "resources/flickr30k_kaggle/flickr30k_images"
DEMO_ROOT = "resources/{name}"


def carves_selection(ds: Mapping) -> bool:
    """True when the selection split is a holdout carved out of train by the captions stage."""
    return ds["selection"]["split"] == SELECT_SPLIT and SELECT_SPLIT not in ds["splits"]


def split_names(ds: Mapping) -> list[str]:
    """Every cliptune split the captions stage writes: dataset.splits plus the holdout."""
    return list(ds["splits"]) + ([SELECT_SPLIT] if carves_selection(ds) else [])


# A variant's own training images (train.subset) live in a split of their own, named by
# the subset so that variants with the same train.subset share its caches.
TRAIN_SPLIT = "train"
_OWN_TRAIN = re.compile(
    r"^train-(?:(?P<all>all)|(?P<n>[1-9][0-9]*)-(?:(?P<first>first)|random(?P<seed>-?[0-9]+)))$")


def _normal_subset(images: int | None, mode: str, seed: int) -> dict:
    """A subset as the captions stage applies it: mode and seed only when they matter."""
    if images is None:
        return {"images": None}
    return {"images": images, "mode": mode, "seed": seed}


def split_subset(ds: Mapping, split: str) -> dict:
    """The subset the captions stage applies to ``split``: ``dataset.subset`` (its entry for
    the split), or for a variant's training split the ``train.subset`` its name encodes."""
    own = _OWN_TRAIN.match(split)
    if own:
        if own["all"]:
            return {"images": None}
        if own["first"]:  # the seed plays no part: the study's, as its own splits carry
            return _normal_subset(int(own["n"]), "first", ds["subset"]["seed"])
        return _normal_subset(int(own["n"]), "random", int(own["seed"]))
    images = ds["subset"]["images"]
    if isinstance(images, Mapping):
        images = images.get(split)
    return _normal_subset(images, ds["subset"]["mode"], ds["subset"]["seed"])


def base_split(split: str) -> str:
    """The ``dataset.splits`` entry a split is drawn from (a variant's train split: train)."""
    return TRAIN_SPLIT if _OWN_TRAIN.match(split) else split


def training_split(ds: Mapping, subset: Mapping | None) -> str:
    """The split a variant trains on: ``train``, or for a ``train.subset`` (resolved: images,
    mode, seed) that differs from the study's, ``train-all`` / ``train-{N}-random{seed}`` /
    ``train-{N}-first``."""
    if subset is None:
        return TRAIN_SPLIT
    mode = subset["mode"]
    seed = ds["subset"]["seed"] if mode == "first" else subset["seed"]
    own = _normal_subset(subset["images"], mode, seed)
    if own == split_subset(ds, TRAIN_SPLIT):
        return TRAIN_SPLIT
    if own["images"] is None:
        return f"{TRAIN_SPLIT}-all"
    tail = "first" if mode == "first" else f"random{seed}"
    return f"{TRAIN_SPLIT}-{own['images']}-{tail}"


def resolve_selection(cfg: dict) -> None:
    """Per-source defaults of the selection split, its holdout size and the reported split.

    With a test split (Karpathy COCO, Flickr30k) select on val and report on test;
    without one (official COCO 2014, demo, user data with train/val) select on a
    seeded holdout of train images and report on val.
    """
    ds = cfg["dataset"]
    has_test = "test" in ds["splits"]
    sel = ds["selection"]
    sel["split"] = sel["split"] or ("val" if has_test else SELECT_SPLIT)
    cfg["eval"]["split"] = cfg["eval"]["split"] or ("test" if has_test else "val")
    if sel["split"] == "train" or sel["split"] not in split_names(ds):
        raise ConfigError(
            f"config error: dataset.selection.split = {sel['split']!r} is not a split to select "
            f"on; use one of {sorted(set(split_names(ds)) - {'train'})} or {SELECT_SPLIT!r} (a "
            "holdout of train images)"
        )
    if not carves_selection(ds):
        sel["images"] = None  # no holdout: a count would only cause spurious reruns
        return
    if sel["images"] is None:
        sel["images"] = SELECT_IMAGES
        if ds["source"] == "demo":
            share = ds["demo"]["train_images"] * SELECT_IMAGES / COCO_TRAIN_IMAGES
            sel["images"] = max(2, round(share))
    if ds["source"] == "demo" and sel["images"] >= ds["demo"]["train_images"] - 1:
        raise ConfigError(
            f"config error: dataset.selection.images = {sel['images']} leaves no demo train "
            f"images (dataset.demo.train_images = {ds['demo']['train_images']}); lower it"
        )


def resolve_dataset(ds: dict, raw: Mapping) -> None:
    """Fill the source-dependent dataset defaults and reject combinations that cannot work."""
    source = ds["source"]
    # Given splits replace the per-source default (a deep merge would keep stale entries).
    ds["splits"] = dict(raw.get("splits") or SOURCE_SPLITS[source])
    if ds["download"] == "kaggle":
        resolve_kaggle(ds)
    elif ds["download"] and source not in ("coco", "karpathy_coco"):
        other = " (Flickr30k: download: kaggle)" if source == "flickr30k" else ""
        raise ConfigError(
            f"config error: dataset.download: true downloads COCO 2014 only{other}; with "
            f"dataset.source = {source!r} set download: false and point dataset.root at "
            "your data"
        )
    if ds["download"] is True and source == "coco":
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
            ds["root"] = DEMO_ROOT.format(name=ds["name"])
        elif ds["download"] is True:
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
    reserved = sorted(name for name in ds["splits"] if _OWN_TRAIN.match(name))
    if reserved:
        raise ConfigError(
            f"config error: dataset.splits names {reserved}: names of the form train-all / "
            "train-{N}-random{seed} / train-{N}-first hold a variant's train.subset; rename "
            "the split")
    images = ds["subset"]["images"]
    if isinstance(images, Mapping):
        unknown = sorted(set(images) - set(ds["splits"]) - {SELECT_SPLIT})
        if unknown:
            raise ConfigError(
                f"config error: dataset.subset.images names split(s) {unknown} that are not "
                f"in dataset.splits; use one of {sorted(ds['splits'])}"
            )


def resolve_kaggle(ds: dict) -> None:
    """``download: kaggle``: Flickr30k's Kaggle copy; root = its image folder (a link the
    download makes), annotations = its results.csv beside that folder."""
    if ds["source"] != "flickr30k":
        raise ConfigError(
            f"config error: dataset.download: kaggle fetches Flickr30k only (dataset.source: "
            f"flickr30k), not {ds['source']!r}; use download: true (COCO) or false")
    ds["root"] = ds["root"] or KAGGLE_IMAGES
    ds["annotations"] = ds["annotations"] or str(Path(ds["root"]).parent / "results.csv")
    if Path(ds["annotations"]).suffix.lower() != ".csv":
        raise ConfigError(
            f"config error: dataset.annotations = {ds['annotations']!r}: download: kaggle "
            "writes the Kaggle copy's results.csv there; name a .csv path or leave it unset")
