"""Synthetic captioned-image dataset in the MS COCO 2014 captions layout.

The demo pipeline must run offline, in minutes, on CPUs, yet still show that
fine-tuning moves retrieval Recall@K.  Real COCO is far too large for that, so
this module draws compositional scenes (1..N coloured, textured shapes on a
named background, placed on a 3x3 grid) and writes several differently worded,
truthful captions per image.  The combination space is large enough that
chance Recall@1 is tiny, while colour/shape/position are easy visual features
that a small image encoder learns within a few epochs.

The output mirrors COCO exactly (``annotations/captions_{train,val}2014.json``,
``{train,val}2014/COCO_{split}2014_<12-digit id>.jpg``) so the same loaders run
on the demo data and on the real dataset. As COCO ships its object annotations
beside the captions (``instances_*.json``), the generator writes every image's
ground-truth scene to ``annotations/scenes_{train,val}2014.json``: zero-shot
evaluation reads its labels from there. Scenes and their rendering are
cliptune.demo.scenes, their captions cliptune.demo.captions.

Everything is deterministic: each image draws from its own
``numpy.random.default_rng([seed, split, index])`` stream, so the train split
does not change when only the val size changes, and PIL's JPEG encoder with
fixed settings yields identical bytes run to run.
"""

from __future__ import annotations

import io
import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from cliptune.data.sources.captions import scenes_file
from cliptune.demo.captions import describe_scene
from cliptune.demo.scenes import DEMO, POSITIONS, SceneSpec, render_scene, sample_scene
from cliptune.files.atomic import atomic_path

# --------------------------------------------------------------------------- dataset

SPLITS = ("train", "val")
# Val ids live in their own range so ids stay unique across splits whatever
# the split sizes (real COCO ids are unique across train/val too).
VAL_ID_OFFSET = 1_000_000
JPEG_QUALITY = 90


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per image: adding val images never shifts train."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def image_id_for(split: str, index: int) -> int:
    return index + 1 + (VAL_ID_OFFSET if split == "val" else 0)


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def scene_for_image(split: str, index: int, seed: int = DEMO["seed"],
                    max_shapes: int = DEMO["max_shapes"]) -> SceneSpec:
    """Recreate the ground-truth scene of image ``index`` of ``split`` (for tests/analysis)."""
    return sample_scene(image_rng(seed, split, index), max_shapes)


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 chroma keeps small coloured shapes from bleeding at 64-96 px.
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def _build_split(
    root: Path,
    split: str,
    count: int,
    *,
    image_size: int,
    seed: int,
    captions_per_image: int,
    max_shapes: int,
) -> dict:
    img_dir = root / f"{split}2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    base_date = datetime(2013, 11, 14, 8, 0, 0)
    images, annotations, scenes = [], [], []
    for index in range(count):
        rng = image_rng(seed, split, index)
        scene = sample_scene(rng, max_shapes)
        captions = describe_scene(scene, rng, captions_per_image)
        image_id = image_id_for(split, index)
        scenes.append({"image_id": image_id, **scene.to_dict()})
        file_name = coco_file_name(split, image_id)
        (img_dir / file_name).write_bytes(_jpeg_bytes(render_scene(scene, image_size)))
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "coco_url": f"cliptune-demo://{split}2014/{file_name}",
                "height": image_size,
                "width": image_size,
                "date_captured": (base_date + timedelta(minutes=index)).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                "flickr_url": "",
                "id": image_id,
            }
        )
        # id * k + j is unique across splits because image ids are.
        annotations.extend(
            {"image_id": image_id, "id": image_id * captions_per_image + j, "caption": text}
            for j, text in enumerate(captions)
        )
    return {
        "info": {
            "description": "cliptune synthetic shapes demo (MS COCO 2014 captions layout)",
            "url": "",
            "version": "1.0",
            "year": 2014,
            "contributor": "cliptune",
            "date_created": "2014-01-01 00:00:00",
            "generator": {
                "seed": seed,
                "image_size": image_size,
                "captions_per_image": captions_per_image,
                "max_shapes": max_shapes,
            },
        },
        "licenses": [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1,
                      "name": "CC0 1.0 (synthetic)"}],
        "images": images,
        "annotations": annotations,
        "scenes": scenes,
    }




def generate_demo_dataset(
    root: str | os.PathLike,
    train_images: int,
    val_images: int,
    image_size: int = DEMO["image_size"],
    seed: int = DEMO["seed"],
    captions_per_image: int = DEMO["captions_per_image"],
    max_shapes: int = DEMO["max_shapes"],
) -> dict:
    """Write the demo dataset under ``root`` and return a summary of counts.

    Images are written first, then each split's scenes and its caption JSON last
    (temp + rename), so a present caption file means its split is complete.
    """
    if not 0 <= train_images < VAL_ID_OFFSET or val_images < 0:
        raise ValueError("train_images must be in [0, 1e6) and val_images >= 0")
    if image_size < 16 or captions_per_image < 1:
        raise ValueError("image_size must be >= 16 and captions_per_image >= 1")
    if not 1 <= max_shapes <= len(POSITIONS):
        raise ValueError(f"max_shapes must be in 1..{len(POSITIONS)}")
    root = Path(root)
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary: dict = {"root": str(root), "image_size": image_size, "seed": seed}
    for split, count in (("train", train_images), ("val", val_images)):
        payload = _build_split(
            root,
            split,
            count,
            image_size=image_size,
            seed=seed,
            captions_per_image=captions_per_image,
            max_shapes=max_shapes,
        )
        scenes = {"info": payload["info"], "scenes": payload.pop("scenes")}
        scenes_path = scenes_file(root, f"{split}2014")
        with atomic_path(scenes_path) as tmp:
            tmp.write_text(json.dumps(scenes, separators=(",", ":")))
        ann_file = ann_dir / f"captions_{split}2014.json"
        with atomic_path(ann_file) as tmp:  # compact: the real COCO files are too
            tmp.write_text(json.dumps(payload, separators=(",", ":")))
        summary[split] = {
            "images": len(payload["images"]),
            "captions": len(payload["annotations"]),
            "annotation_file": str(ann_file),
            "scenes_file": str(scenes_path),
            "image_dir": str(root / f"{split}2014"),
        }
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
