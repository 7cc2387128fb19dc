"""Zero-shot classification with prompt-template ensembling, as in the CLIP paper.

Each class name is written into every template ("a photo of a {}."), the
prompts are embedded by the variant's text tower, L2-normalised, averaged and
normalised again: one class embedding per class (CLIP, section 3.1.4). An
image's class probabilities are ``softmax(image · classes / temperature)``.

Ground truth, when it exists:

* COCO: ``annotations/instances_<folder>.json`` lists the objects of every
  image; an image's label set is its annotated categories (80 in total).
* the synthetic demo: the generator is deterministic, so the shapes and colours
  of every image are recomputed from its id (no annotation file needed).

COCO images hold several objects, so accuracy is the multi-label top-K hit
rate (the top-K predicted classes contain at least one of the image's labels,
the usual "zero-shot accuracy" on multi-label data) plus the mean average
precision over classes that occur at least once.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


# MS COCO's 80 object categories (instances_*.json order); used for the figure when the
# instance annotations are absent.
COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


def check_templates(templates: Sequence[str]) -> list[str]:
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(
            f"report.zero_shot.templates: every template needs a '{{}}' placeholder for the "
            f"class name, got {bad or list(templates)!r}"
        )
    return list(templates)


def class_embeddings(encode: Callable[[list[str]], torch.Tensor], classes: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """[C, D] ensembled, L2-normalised class embeddings.

    ``encode`` maps a list of prompts to [n, D] embeddings (the variant's text tower).
    """
    import torch

    templates = check_templates(templates)
    prompts = [t.format(c) for c in classes for t in templates]
    emb = torch.nn.functional.normalize(encode(prompts).float(), dim=-1)
    emb = emb.view(len(classes), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def zero_shot_probs(image_emb: torch.Tensor, class_emb: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """[N, C] class probabilities: softmax over cosine similarity / temperature."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = image_emb.float() @ class_emb.float().T / temperature
    return logits.softmax(dim=-1)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (ties by index)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(bool)
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def zero_shot_accuracy(probs: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict:
    """Multi-label top-K hit rates (percent) and class-mean AP over images with labels.

    ``labels`` is a [N, C] 0/1 matrix. Images without any label are skipped (COCO has
    about 1% such images).
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=bool)
    keep = labels.any(axis=1)
    probs, labels = probs[keep], labels[keep]
    out: dict = {"n_images": int(keep.sum()), "n_images_without_labels": int((~keep).sum())}
    if not keep.any():
        return out
    order = np.argsort(-probs, axis=1, kind="stable")
    for k in ks:
        top = order[:, :k]
        out[f"top{k}_accuracy"] = 100.0 * float(
            np.take_along_axis(labels, top, axis=1).any(axis=1).mean())
    aps = [average_precision(probs[:, c], labels[:, c]) for c in range(labels.shape[1])
           if labels[:, c].any()]
    out["mAP"] = 100.0 * float(np.mean(aps))
    # A uniform random guess hits with probability |labels| / C: the floor to beat.
    out["chance_top1_accuracy"] = 100.0 * float((labels.sum(axis=1) / labels.shape[1]).mean())
    out["n_classes_present"] = len(aps)
    return out


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


def demo_scene_words(image_id: int, seed: int, max_shapes: int) -> set[str]:
    """Shapes, colours and 'colour shape' phrases present in a synthetic demo image."""
    from cliptune.data.demo_data import VAL_ID_OFFSET, scene_for_image

    split = "val" if image_id > VAL_ID_OFFSET else "train"
    index = image_id - 1 - (VAL_ID_OFFSET if split == "val" else 0)
    scene = scene_for_image(split, index, seed=seed, max_shapes=max_shapes)
    words = {scene.background + " background"}
    for s in scene.shapes:
        words |= {s.shape, s.colour, f"{s.colour} {s.shape}", f"{s.size} {s.shape}"}
    return words


def demo_labels(image_ids: np.ndarray, classes: Sequence[str], seed: int,
                max_shapes: int) -> np.ndarray:
    """[N, C] 0/1: class c is present when it names a shape, colour or 'colour shape' of
    the image (e.g. 'circle', 'red', 'red circle')."""
    labels = np.zeros((len(image_ids), len(classes)), dtype=bool)
    for row, image_id in enumerate(np.asarray(image_ids).tolist()):
        words = demo_scene_words(int(image_id), seed, max_shapes)
        labels[row] = [c.lower().strip() in words for c in classes]
    return labels


def instances_input(cfg: Mapping, split: str) -> dict[str, str]:
    """Snakemake input ``{"instances": path}`` when COCO object annotations of ``split`` exist
    (zero-shot accuracy over the 80 categories), else nothing: the rule runs without."""
    folder = cfg["dataset"]["splits"][split]
    path = Path(cfg["dataset"]["root"]) / "annotations" / f"instances_{folder}.json"
    if cfg["dataset"]["source"] == "coco" and path.is_file():
        return {"instances": str(path)}
    return {}


def write_zero_shot_json(path: Path, result: dict) -> None:
    from cliptune.io_utils import write_json

    write_json(path, json.loads(json.dumps(result, default=float)))
