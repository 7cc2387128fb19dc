"""What evaluate computes from text prompts, with the text tower it evaluated with: the
report queries' top images and zero-shot classification per task.

Written beside metrics.json (the files: cliptune.evaluation.report_outputs) so the
figures, the cross-variant query figure and the summary only read files (no model
load, no GPU).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from cliptune.evaluation.prompts import render
from cliptune.evaluation.report_outputs import PROMPTS_FILE, QUERIES_JSON, ZERO_SHOT_JSON
from cliptune.evaluation.retrieval_metrics import topk_images
from cliptune.evaluation.zero_shot import (
    class_embeddings,
    write_zero_shot_json,
    zero_shot_accuracy,
    zero_shot_probs,
)
from cliptune.evaluation.zero_shot_labels import (
    LABELS_OVER,
    caption_labels,
    coco_labels,
    demo_labels,
)
from cliptune.evaluation.zero_shot_tasks import Task, resolve_tasks
from cliptune.files.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PromptSpec:
    """The report settings evaluation needs: ``report.queries``, ``report.top_k`` and
    ``report.zero_shot``, the dataset source (default tasks) and the ground-truth file
    of the coco/demo-labelled tasks (cliptune.evaluation.zero_shot_tasks.label_file)."""
    queries: tuple[str, ...]
    top_k: int
    zero_shot: Mapping
    source: str
    label_file: Path | None

    @classmethod
    def of(cls, report: Mapping, source: str, label_file: str | Path | None) -> PromptSpec:
        return cls(tuple(report["queries"]), report["top_k"], report["zero_shot"], source,
                   Path(label_file) if label_file else None)

    def tasks(self) -> dict[str, Task]:
        return resolve_tasks(self.zero_shot, self.source)


@dataclass(frozen=True)
class Evaluated:
    """One evaluated split, as evaluate holds it in memory."""
    image: torch.Tensor         # [N, D] image embeddings
    image_ids: np.ndarray       # [N]
    captions: Sequence[str]     # [M] caption texts
    text_image: np.ndarray      # [M] caption -> its image's row
    temperature: float
    score_memory: int           # bytes of scores held at once (eval.score_memory_mb)


def task_labels(task: Task, label_file: Path | None, ev: Evaluated) -> np.ndarray | None:
    """[N, C] ground truth of ``task`` from its label source; None for labels: none."""
    bare = [c.bare for c in task.classes]
    if task.labels in ("coco", "demo") and label_file is None:
        raise ValueError(f"zero-shot task {task.name!r} uses labels: {task.labels} but no "
                         "label file was given (cliptune.evaluation.zero_shot_tasks."
                         "label_file names it)")
    if task.labels == "coco":
        return coco_labels(label_file, ev.image_ids, bare)
    if task.labels == "demo":
        return demo_labels(label_file, ev.image_ids, bare)
    if task.labels == "captions":
        return caption_labels(ev.captions, ev.text_image, len(ev.image_ids),
                              [c.keywords for c in task.classes])
    return None


def _zero_shot_task(task: Task, encode: Callable[[list[str]], torch.Tensor], ev: Evaluated,
                    label_file: Path | None, tensors: dict) -> dict:
    class_emb = class_embeddings(encode, task.classes, task.templates)
    probs = zero_shot_probs(ev.image, class_emb, ev.temperature)
    labels = task_labels(task, label_file, ev)
    tensors[f"{task.name}.classes"] = class_emb.contiguous()
    tensors[f"{task.name}.probs"] = probs.float().contiguous()
    result: dict = {"classes": task.names, "templates": list(task.templates),
                    "labels": task.labels,
                    "prompts": [render(task.templates[0], c) for c in task.classes],
                    "accuracy": None, "accuracy_over": None}
    if labels is not None:
        # astype keeps a transposed (column-major) label matrix; safetensors needs C order.
        tensors[f"{task.name}.labels"] = torch.from_numpy(np.ascontiguousarray(labels, np.uint8))
        result["accuracy"] = zero_shot_accuracy(probs.numpy(), labels)
        result["accuracy_over"] = (f"{len(task.classes)} classes; labels from "
                                   f"{LABELS_OVER[task.labels]}")
    return result


def write_prompt_results(name: str, spec: PromptSpec,
                         encode: Callable[[list[str]], torch.Tensor], ev: Evaluated,
                         out_dir: Path) -> dict:
    """queries.json, zero_shot.json and prompts.safetensors into ``out_dir``; returns the
    zero-shot results."""
    out_dir = Path(out_dir)
    queries = list(spec.queries)
    query_emb = encode(queries).float()
    k = min(spec.top_k, len(ev.image_ids))
    scores, idx = topk_images(query_emb, ev.image, k, score_memory=ev.score_memory)
    write_json(out_dir / QUERIES_JSON, {"variant": name, "queries": queries,
                                        "image_id": ev.image_ids[idx.numpy()].tolist(),
                                        "score": scores.numpy().tolist()})
    tensors = {"queries": query_emb.contiguous()}
    tasks = spec.tasks()
    # The JSON is written with sorted keys: task_order keeps the configured order.
    result = {"variant": name, "temperature": ev.temperature, "task_order": list(tasks),
              "tasks": {t: _zero_shot_task(task, encode, ev, spec.label_file, tensors)
                        for t, task in tasks.items()}}
    with atomic_path(out_dir / PROMPTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"variant": name,
                                               "task_order": json.dumps(list(tasks))})
    write_zero_shot_json(out_dir / ZERO_SHOT_JSON, result)
    log.info("%s: zero-shot %s", name, {t: r["accuracy"] for t, r in result["tasks"].items()})
    return result
