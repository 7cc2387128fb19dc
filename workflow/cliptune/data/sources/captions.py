"""Caption annotations of any supported source -> one Parquet row per caption.

Columns: image_id, caption_id, caption, file_name (relative to the dataset
root, or absolute), split. Rows are sorted by (image_id, caption_id) so every
cache keyed on this table has a stable, reproducible row order. The optional
``subset`` is applied here, before any image or text is cached, and a small
``{split}.source.json`` next to the Parquet records what was read, what the
subset kept and which images had no caption (for the data report).
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

# split_spec is re-exported: the captions stage and its tests build a spec from here.
from cliptune.data.caches.keys import source_split, split_spec  # noqa: F401
from cliptune.data.sources.formats import DatasetFormatError, clean_caption, read_source
from cliptune.data.sources.selection import carve_selection
from cliptune.data.sources.tidy import tidy_captions
from cliptune.files.atomic import write_json, write_parquet

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "caption_id", "caption", "file_name", "split"]


class DatasetLayoutError(FileNotFoundError):
    pass


def annotation_file(root: Path, folder: str) -> Path:
    return Path(root) / "annotations" / f"captions_{folder}.json"


def scenes_file(root: Path, folder: str) -> Path:
    """The demo generator's ground-truth scenes of a split folder, beside its captions
    (as COCO's instances_<folder>.json sits beside captions_<folder>.json)."""
    return Path(root) / "annotations" / f"scenes_{folder}.json"


def check_coco_layout(root: Path, folders: list[str]) -> None:
    """Name every missing piece of a COCO-layout folder in one error."""
    root = Path(root)
    missing = []
    if not root.is_dir():
        missing.append(f"{root}/ (the dataset root itself)")
    for folder in folders:
        if not annotation_file(root, folder).is_file():
            missing.append(str(annotation_file(root, folder)))
        if not (root / folder).is_dir():
            missing.append(f"{root / folder}/")
    if missing:
        raise DatasetLayoutError(
            "dataset layout incomplete, missing: " + "; ".join(missing) + ". Expected COCO "
            "2014 layout: annotations/captions_<folder>.json and <folder>/ with the images "
            "(e.g. unzip annotations_trainval2014.zip and train2014.zip/val2014.zip there)."
        )


def _coco_images(images: list, ann_file: Path) -> dict:
    """id -> image entry; an id listed twice must name the same file."""
    out: dict = {}
    for n, img in enumerate(images):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetFormatError(f"{ann_file}: images[{n}] needs 'id' and 'file_name'")
        seen = out.setdefault(img["id"], img)
        if seen["file_name"] != img["file_name"]:
            raise DatasetFormatError(
                f"{ann_file}: image id {img['id']} is listed for {seen['file_name']} and "
                f"{img['file_name']}; an image id must identify one file"
            )
    return out


def coco_table(root: Path, folder: str, split: str) -> tuple[pd.DataFrame, list[str]]:
    """COCO captions_<folder>.json -> (caption rows as listed, images with no caption).

    Rows are not yet tidied (duplicate ids, empty captions): see caption_tidy.
    """
    ann_file = annotation_file(root, folder)
    if not ann_file.is_file():
        raise DatasetLayoutError(f"missing caption annotations {ann_file}")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{ann_file} is not valid JSON ({exc})") from None
    images = _coco_images(data.get("images", []), ann_file)
    rows = []
    for n, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict) or not {"id", "image_id", "caption"} <= set(ann):
            raise DatasetFormatError(
                f"{ann_file}: annotations[{n}] needs 'id', 'image_id' and 'caption'")
        img = images.get(ann["image_id"])
        if img is None:
            raise ValueError(
                f"{ann_file}: annotation {ann['id']} refers to image {ann['image_id']} that is "
                "not in 'images'; the annotation file is corrupt or from another split"
            )
        text = clean_caption(ann["caption"], f"{ann_file}: annotation {ann['id']}")
        rows.append((ann["image_id"], ann["id"], text, f"{folder}/{img['file_name']}", split))
    df = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"image_id": "int64", "caption_id": "int64", "caption": "string", "file_name": "string",
         "split": "string"}
    )
    captioned = set(df["image_id"].tolist())
    no_caption = sorted(f"{folder}/{img['file_name']}" for i, img in images.items()
                        if i not in captioned)
    return df, no_caption


def build_captions(root: Path, folder: str, split: str, output: Path) -> pd.DataFrame:
    """One COCO-layout folder -> tidied caption Parquet (benchmarks, the CLI below)."""
    df, no_caption = coco_table(root, folder, split)
    tidied = tidy_captions(df, no_caption, str(annotation_file(root, folder)))
    if tidied.captions.empty:
        raise ValueError(f"{annotation_file(root, folder)} holds no captions")
    write_parquet(output, tidied.captions[COLUMNS])
    return tidied.captions


# --------------------------------------------------------------------------- any source


def subset_images(file_names: pd.Series, n: int | None, mode: str, seed: int,
                  split: str) -> np.ndarray:
    """Boolean mask keeping the rows of ``n`` images: the first n by file name or a seeded
    sample. Depends only on the image set, the seed and the split name."""
    names = np.array(sorted(set(file_names.astype(str))), dtype=object)
    if n is None or n >= len(names):
        return np.ones(len(file_names), dtype=bool)
    if mode == "first":
        keep = names[:n]
    else:  # the split name joins the seed so train and val draw independently
        rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
        keep = names[np.sort(rng.choice(len(names), size=n, replace=False))]
    return file_names.astype(str).isin(set(keep)).to_numpy()


class SplitRead(NamedTuple):
    captions: pd.DataFrame  # tidied rows of the split, before any subset
    no_caption: list[str]  # file names of its images with no (non-empty) caption
    notes: list[str]  # reader warnings worth repeating in the data report
    cleaning: dict  # repairs made by caption_tidy: counts and examples


def _source_rows(spec: dict) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(rows of the split as the source lists them, images with no caption, notes)."""
    split = spec["split"]
    if spec["source"] in ("demo", "coco"):
        df, no_caption = coco_table(Path(spec["root"]), spec["labels"][0], split)
        return df, no_caption, []
    table = read_source(spec)
    labels = set(spec["labels"])
    df = table.captions[table.captions["split"].isin(labels)].copy()
    if df.empty and not any(table.no_caption.get(lab) for lab in labels):
        present = sorted(lab for lab in table.labels() if lab)
        raise ValueError(
            f"split {split!r} reads source split(s) {sorted(labels)} but the source has only "
            f"{present}; fix dataset.splits.{split}"
        )
    df["split"] = split
    df = df.astype({"split": "string"})
    no_caption = sorted(n for lab in labels for n in table.no_caption.get(lab, []))
    return df, no_caption, table.notes


def read_split(spec: dict) -> SplitRead:
    """The split's tidied caption rows (sorted by image, caption id) before any subset."""
    df, no_caption, notes = _source_rows(spec)
    where = f"{spec.get('annotations') or spec['root']} ({spec['source']} split " \
            f"{spec['split']!r})"
    tidied = tidy_captions(df, no_caption, where)
    if tidied.no_caption:
        log.warning("%s: %d images have no caption and are left out", where,
                    len(tidied.no_caption))
    read = SplitRead(tidied.captions, tidied.no_caption, notes, tidied.record())
    return carve_selection(read, spec["selection"]) if "selection" in spec else read


def build_split_captions(spec: dict, output: Path, source_json: Path | None = None
                         ) -> pd.DataFrame:
    """Read one split of any source, apply the subset, write the Parquet (+ source.json)."""
    split = spec["split"]
    df, no_caption, notes, cleaning = read_split(spec)
    where = f"{spec['source']} split {split!r}"
    images_before = int(df["file_name"].nunique())
    sub = spec["subset"]
    if sub["images"] is not None:
        df = df[subset_images(df["file_name"], sub["images"], sub["mode"], sub["seed"],
                              split)].reset_index(drop=True)
        log.info("%s: subset (%s, seed %d) keeps %d of %d images", where, sub["mode"],
                 sub["seed"], df["file_name"].nunique(), images_before)
    if df.empty:
        raise ValueError(f"{where} holds no captions; check dataset.annotations / "
                         "dataset.splits and the caption files")
    write_parquet(output, df[COLUMNS])
    if source_json is not None:
        info = {
            "split": split,
            "source": spec["source"],
            "source_splits": spec["labels"],
            "annotations": spec.get("annotations"),
            "root": spec["root"],
            "images_in_source": images_before,
            "subset": {**sub, "images_kept": int(df["file_name"].nunique())},
            "images": int(df["image_id"].nunique()),
            "captions": len(df),
            "images_without_captions": no_caption,
            "selection_holdout": spec.get("selection"),
            "cleaning": cleaning,
            "notes": notes,
        }
        if "use_restval" in spec:
            info["use_restval"] = spec["use_restval"]
        write_json(source_json, info)
    log.info("%s: %d captions of %d images -> %s", split, len(df), df["image_id"].nunique(),
             output)
    return df


def captions_inputs(dataset: dict, split: str) -> list[str]:
    """Files the captions rule of ``split`` reads (plus extraction markers when downloading)."""
    from cliptune.data.fetch.coco import ANNOTATIONS_ZIP, marker_path, needed_archives

    label = dataset["splits"][source_split(dataset, split)]
    source, root = dataset["source"], dataset["root"]
    if dataset["download"] is True:
        names = needed_archives(dataset)
        if source == "coco":  # this split's images and the shared annotations zip
            names = [n for n in names if n in (ANNOTATIONS_ZIP, f"{label}.zip")]
        files = [str(marker_path(root, n)) for n in names]
        return files + ([dataset["annotations"]] if source == "karpathy_coco" else [])
    if source in ("demo", "coco"):
        return [str(annotation_file(root, label))]
    if source == "folder":
        return [str(Path(root) / label)]  # directory mtime: adding/removing images reruns
    return [dataset["annotations"]]


def check_sources(dataset: dict) -> None:
    """Name every missing input of the configured source in one error (at parse time).

    Files that the download rules will fetch are not checked.
    """
    source, root = dataset["source"], Path(dataset["root"])
    if source == "demo":
        return
    if dataset["download"] == "kaggle":
        # The download rule writes both; captions placed by hand need their images too.
        if Path(dataset["annotations"]).is_file() and not root.is_dir():
            raise DatasetLayoutError(
                f"dataset.download: kaggle: {dataset['annotations']} is there but the image "
                f"folder {root}/ is not; put the flickr30k_images folder there (or delete "
                f"{dataset['annotations']} to download both)")
        return
    if source == "coco":
        if not dataset["download"]:
            check_coco_layout(root, sorted(set(dataset["splits"].values())))
        return
    missing = []
    ann = dataset["annotations"]
    if ann and not Path(ann).is_file():
        hint = ""
        if source == "karpathy_coco":
            hint = (" (dataset_coco.json from Karpathy's caption_datasets.zip: "
                    "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip)")
        elif source == "flickr30k":
            hint = " (Karpathy's dataset_flickr30k.json or the Flickr30k results.csv)"
        missing.append(f"{ann}{hint}")
    if source == "karpathy_coco" and not dataset["download"]:
        missing += [f"{root / f}/" for f in ("train2014", "val2014") if not (root / f).is_dir()]
    elif source == "folder":
        missing += [f"{root / f}/" for f in sorted(set(dataset["splits"].values()))
                    if not (root / f).is_dir()]
    elif not root.is_dir() and not (source == "karpathy_coco" and dataset["download"]):
        missing.append(f"{root}/ (dataset.root, the image folder)")
    if missing:
        raise DatasetLayoutError(f"dataset.source {source!r}: missing " + "; ".join(missing))
