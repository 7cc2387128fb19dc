"""COCO-style caption annotations -> one Parquet row per caption.

Columns: image_id, caption_id, caption, file_name (relative to the dataset
root), split. Rows are sorted by (image_id, caption_id) so every cache keyed
on this table has a stable, reproducible row order.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from pathlib import Path

import pandas as pd

from cliptune.io_utils import write_parquet
from cliptune.runtime import setup_logging

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "caption_id", "caption", "file_name", "split"]


class DatasetLayoutError(FileNotFoundError):
    pass


def annotation_file(root: Path, folder: str) -> Path:
    return Path(root) / "annotations" / f"captions_{folder}.json"


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


def captions_table(root: Path, folder: str, split: str) -> pd.DataFrame:
    from pycocotools.coco import COCO

    ann_file = annotation_file(root, folder)
    if not ann_file.is_file():
        raise DatasetLayoutError(f"missing caption annotations {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing chatter
        coco = COCO(str(ann_file))
    images = {img["id"]: img for img in coco.dataset.get("images", [])}
    rows = []
    for ann in coco.dataset.get("annotations", []):
        img = images.get(ann["image_id"])
        if img is None:
            raise ValueError(
                f"{ann_file}: annotation {ann['id']} refers to image {ann['image_id']} that is "
                "not in 'images'; the annotation file is corrupt or from another split"
            )
        rows.append((ann["image_id"], ann["id"], " ".join(str(ann["caption"]).split()),
                     f"{folder}/{img['file_name']}", split))
    df = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"image_id": "int64", "caption_id": "int64", "caption": "string", "file_name": "string",
         "split": "string"}
    )
    df = df.sort_values(["image_id", "caption_id"], kind="stable").reset_index(drop=True)
    no_caption = len(images) - df["image_id"].nunique()
    if no_caption:
        log.warning("%s: %d images have no caption and are left out", ann_file, no_caption)
    empty = int((df["caption"].str.len() == 0).sum())
    if empty:
        log.warning("%s: %d empty captions kept (they still count as a caption)", ann_file, empty)
    return df


def build_captions(root: Path, folder: str, split: str, output: Path) -> pd.DataFrame:
    df = captions_table(root, folder, split)
    if df.empty:
        raise ValueError(f"{annotation_file(root, folder)} holds no captions")
    write_parquet(output, df)
    log.info("%s: %d captions of %d images -> %s", split, len(df), df["image_id"].nunique(),
             output)
    return df


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--folder", required=True, help="COCO folder stem, e.g. val2014")
    ap.add_argument("--split", required=True)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args(argv)
    setup_logging()
    build_captions(args.root, args.folder, args.split, args.output)


if __name__ == "__main__":
    main()
