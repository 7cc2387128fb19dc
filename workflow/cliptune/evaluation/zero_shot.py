"""Zero-shot classification with prompt-template ensembling, as in the CLIP paper.

Each class is written into every template (cliptune.evaluation.prompts: "a photo of
{article}." -> "a photo of an apple."), the prompts are embedded by the variant's text
tower, L2-normalised, averaged and normalised again: one class embedding per class
(CLIP, section 3.1.4). An image's class probabilities are
``softmax(image · classes / temperature)``.

Tasks and their ground truth: cliptune.evaluation.zero_shot_tasks and
cliptune.evaluation.zero_shot_labels. Images may hold several classes (COCO objects),
so accuracy is the multi-label top-K hit rate (the top-K predicted classes contain at
least one of the image's labels, the usual "zero-shot accuracy" on multi-label data)
plus the mean average precision over classes that occur at least once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cliptune.evaluation.prompts import ClassName, check_templates, class_name, render

if TYPE_CHECKING:
    import torch


def class_embeddings(encode: Callable[[list[str]], torch.Tensor],
                     classes: Sequence[ClassName | str | Mapping],
                     templates: Sequence[str]) -> torch.Tensor:
    """[C, D] ensembled, L2-normalised class embeddings.

    ``encode`` maps a list of prompts to [n, D] embeddings (the variant's text tower).
    """
    import torch

    templates = check_templates(templates)
    classes = [c if isinstance(c, ClassName) else class_name(c) for c in classes]
    prompts = [render(t, c) for c in classes for t in templates]
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


def write_zero_shot_json(path: Path, result: dict) -> None:
    from cliptune.files.atomic import write_json

    write_json(path, json.loads(json.dumps(result, default=float)))
