"""Ground truth for zero-shot tasks: where each task's per-image class labels come from.

* ``coco``: ``annotations/instances_<folder>.json`` lists the objects of every COCO
  image; an image's labels are its annotated categories.
* ``demo``: ``annotations/scenes_<folder>.json``, written by the demo generator beside
  its captions, lists the background and shapes of every image.
* ``captions``: a class is present when one of the image's own captions mentions one of
  its keywords (whole words, plural -s/-es allowed): weak labels, read as such.
* ``none``: no ground truth; the task draws its figure and reports no accuracy.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

LABEL_SOURCES = ("coco", "demo", "captions", "none")
LABELS_OVER = {
    "coco": "COCO instance annotations",
    "demo": "the demo generator's ground truth",
    "captions": "mentions in the image's own captions (weak labels)",
}


def coco_instance_labels(instances_json: Path, image_ids: np.ndarray
                         ) -> tuple[list[str], np.ndarray]:
    """Category names (annotation order) and a [N, 80] 0/1 matrix for ``image_ids``."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing chatter
        coco = COCO(str(instances_json))
    cat_ids = sorted(coco.getCatIds())
    names = [coco.loadCats(c)[0]["name"] for c in cat_ids]
    col = {c: i for i, c in enumerate(cat_ids)}
    labels = np.zeros((len(image_ids), len(cat_ids)), dtype=bool)
    for row, image_id in enumerate(np.asarray(image_ids).tolist()):
        for ann in coco.imgToAnns.get(image_id, []):
            labels[row, col[ann["category_id"]]] = True
    return names, labels


def coco_labels(instances_json: Path, image_ids: np.ndarray, classes: Sequence[str]
                ) -> np.ndarray:
    """[N, C] 0/1 for COCO category names ``classes`` (checked against the file)."""
    names, mat = coco_instance_labels(instances_json, image_ids)
    col = {n: i for i, n in enumerate(names)}
    unknown = [c for c in classes if c.lower() not in col]
    if unknown:
        raise ValueError(f"{instances_json} has no categories {unknown}; labels: coco needs "
                         f"COCO category names, e.g. {names[:5]}")
    return mat[:, [col[c.lower()] for c in classes]]


def demo_vocabulary() -> set[str]:
    """Every class name the demo's ground truth can label."""
    from cliptune.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES

    words = set(SHAPES) | set(COLOURS) | {f"{b} background" for b in BACKGROUNDS}
    words |= {f"{c} {s}" for c in COLOURS for s in SHAPES}
    return words | {f"{z} {s}" for z in SIZES for s in SHAPES}


def scene_words(scene: Mapping) -> set[str]:
    """Shapes, colours, 'colour shape', 'size shape' and 'background background' phrases
    of one scene of the demo generator's scenes file."""
    words = {scene["background"] + " background"}
    for s in scene["shapes"]:
        words |= {s["shape"], s["colour"], f"{s['colour']} {s['shape']}",
                  f"{s['size']} {s['shape']}"}
    return words


def demo_labels(scenes_json: Path, image_ids: np.ndarray, classes: Sequence[str]
                ) -> np.ndarray:
    """[N, C] 0/1: class c is present when it names a shape, colour, 'colour shape',
    'size shape' or 'colour background' of the image (e.g. 'circle', 'red'), as the demo
    generator recorded the image's scene in ``scenes_json``."""
    scenes = {s["image_id"]: s for s in json.loads(Path(scenes_json).read_text())["scenes"]}
    missing = [int(i) for i in np.asarray(image_ids) if int(i) not in scenes]
    if missing:
        raise ValueError(f"{scenes_json} has no scene for images {missing[:5]} "
                         f"({len(missing)} in all); it belongs to another demo dataset: delete "
                         "the demo dataset folder and rerun, so both are generated together")
    labels = np.zeros((len(image_ids), len(classes)), dtype=bool)
    for row, image_id in enumerate(np.asarray(image_ids).tolist()):
        words = scene_words(scenes[int(image_id)])
        labels[row] = [c.lower().strip() in words for c in classes]
    return labels


def caption_labels(captions: Sequence[str], text_image: np.ndarray, n_images: int,
                   keywords: Sequence[Sequence[str]]) -> np.ndarray:
    """[N, C] 0/1: image n has class c when one of its captions contains one of the
    class's keywords as whole words (plural -s/-es allowed, case ignored)."""
    labels = np.zeros((n_images, len(keywords)), dtype=bool)
    lowered = [str(c).lower() for c in captions]
    owner = np.asarray(text_image, dtype=np.int64)
    for c, words in enumerate(keywords):
        pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")(?:e?s)?\b")
        hit = np.fromiter((bool(pattern.search(t)) for t in lowered), bool, len(lowered))
        labels[owner[hit], c] = True
    return labels


def instances_json(dataset: Mapping, split: str) -> Path:
    """Where COCO's object annotations of ``split`` live (annotations_trainval2014.zip)."""
    folder = dataset["splits"][split]
    return Path(dataset["root"]) / "annotations" / f"instances_{folder}.json"


def demo_scenes_json(dataset: Mapping, split: str) -> Path:
    """Where the demo generator wrote the scenes of ``split`` (beside its captions)."""
    from cliptune.data.sources.captions import scenes_file

    return scenes_file(dataset["root"], dataset["splits"][split])
