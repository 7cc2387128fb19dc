"""The per-variant showcase: text->image and image->text retrieval grids, one zero-shot
classification figure per task and a similarity heatmap, all from the embeddings saved
by ``evaluate`` (never recomputed); only the query and class prompts are encoded, with
the variant's own text tower. The queries' top images are saved too (``queries.json``),
so the cross-variant query figure never encodes anything again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from cliptune.data.image_cache import cache_rows, open_cache
from cliptune.evaluation.evaluate import variant_text_encoder
from cliptune.evaluation.prompts import render
from cliptune.evaluation.retrieval_metrics import topk_images, topk_texts
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
from cliptune.io_utils import write_json
from cliptune.reporting import figures

# Re-exported: the figure names and the GPU request are planned without torch.
from cliptune.reporting.figure_plan import FIGURES, ZERO_SHOT_FIGURE, figures_gpus  # noqa: F401

log = logging.getLogger(__name__)



class EvalArtifacts:
    """Embeddings of one evaluated variant with their captions and cached pixels."""

    def __init__(self, embeddings: Path, captions_parquet: Path, image_array: Path,
                 image_index: Path):
        data = load_file(str(embeddings))
        self.image = data["image"].float()
        self.text = data["text"].float()
        self.image_id = data["image_id"].numpy()
        self.text_image = data["text_image_index"].numpy()
        captions = pd.read_parquet(captions_parquet, columns=["caption_id", "caption"])
        by_id = captions.set_index("caption_id")["caption"]
        try:
            self.captions = by_id.loc[data["caption_id"].numpy()].tolist()
        except KeyError as exc:
            raise RuntimeError(
                f"{embeddings} does not match {captions_parquet} (unknown caption ids); "
                "delete the variant's embeddings.safetensors and rerun evaluate"
            ) from exc
        pixels, index = open_cache(image_array, image_index)
        self._pixels = pixels
        self._rows = cache_rows(index).loc[self.image_id].to_numpy(np.int64)
        # First caption row of every image (evaluate guarantees each image has one).
        images, first = np.unique(self.text_image, return_index=True)
        self.first_caption = np.full(len(self.image_id), -1, dtype=np.int64)
        self.first_caption[images] = first

    @property
    def n_images(self) -> int:
        return len(self.image_id)

    def pixels(self, i: int) -> np.ndarray:
        return np.asarray(self._pixels[self._rows[int(i)]])

    def ground_truth_caption(self, i: int) -> str:
        return self.captions[int(self.first_caption[int(i)])]


class _Images:
    """Index-able view ``images[i]`` -> pixels of image i (figures read only a few)."""

    def __init__(self, art: EvalArtifacts, subset=None):
        self.art, self.subset = art, subset

    def __getitem__(self, i):
        return self.art.pixels(self.subset[i] if self.subset is not None else i)


class _Captions:
    def __init__(self, art: EvalArtifacts):
        self.art = art

    def __getitem__(self, i):
        return self.art.ground_truth_caption(i)


def figure_paths(out_dir: Path) -> dict[str, Path]:
    return {name: Path(out_dir) / f"{name}.png" for name in FIGURES}


def zero_shot_paths(out_dir: Path, tasks) -> dict[str, Path]:
    return {t: Path(out_dir) / ZERO_SHOT_FIGURE.format(task=t) for t in tasks}


def _labels(task: Task, dataset: Mapping, art: EvalArtifacts,
            instances: Path | None) -> np.ndarray | None:
    """[N, C] ground truth of ``task`` from its label source; None for labels: none."""
    bare = [c.bare for c in task.classes]
    if task.labels == "coco":
        if instances is None:
            raise ValueError(f"zero-shot task {task.name!r} uses labels: coco but no COCO "
                             "instances file was found; put instances_<split folder>.json "
                             "(from annotations_trainval2014.zip) in the dataset's "
                             "annotations/ folder, or set the task's labels: none")
        return coco_labels(instances, art.image_id, bare)
    if task.labels == "demo":
        demo = dataset["demo"]
        return demo_labels(art.image_id, bare, demo["seed"], demo["max_shapes"])
    if task.labels == "captions":
        return caption_labels(art.captions, art.text_image, art.n_images,
                              [c.keywords for c in task.classes])
    return None


def build_variant_figures(
    variant: Mapping,
    report: Mapping,
    dataset: Mapping,
    art: EvalArtifacts,
    temperature: float,
    out_dir: Path,
    zero_shot_json: Path,
    encode: Callable[[list[str]], torch.Tensor],
    instances: Path | None = None,
    queries_json: Path | None = None,
) -> dict:
    """Draw the figures into ``out_dir``; write the zero-shot results (all tasks) and the
    queries' top images (``queries_json``). Returns the zero-shot results."""
    name = variant["name"]
    paths = figure_paths(out_dir)
    rng = np.random.default_rng(report["seed"])
    k = min(report["top_k"], art.n_images)
    block = variant["eval"]["block_size"]

    # text query -> top-K images
    queries = list(report["queries"])
    t_scores, t_idx = topk_images(encode(queries), art.image, k, block_size=block)
    figures.plot_text_to_image(queries, t_idx.numpy(), t_scores.numpy(), _Images(art),
                               _Captions(art), paths["text_to_image"], f"variant: {name}")
    if queries_json is not None:
        write_json(queries_json, {"variant": name, "queries": queries,
                                  "image_id": art.image_id[t_idx.numpy()].tolist(),
                                  "score": t_scores.numpy().tolist()})

    # image -> top-K captions, on a fixed random sample (same images for every variant)
    sample = np.sort(rng.choice(art.n_images, size=min(report["n_images"], art.n_images),
                                replace=False))
    i_scores, i_idx = topk_texts(art.image[sample], art.text, min(k, len(art.text)),
                                 block_size=block)
    correct = art.text_image[i_idx.numpy()] == sample[:, None]
    figures.plot_image_to_text(_Images(art, sample),
                               [[art.captions[m] for m in row] for row in i_idx.numpy()],
                               i_scores.numpy(), correct, paths["image_to_text"],
                               f"variant: {name}")

    # zero-shot classification with prompt ensembling, one figure and result per task
    tasks = resolve_tasks(report["zero_shot"], dataset["source"])
    pngs = zero_shot_paths(out_dir, tasks)
    # The JSON is written with sorted keys: task_order keeps the configured order.
    result = {"variant": name, "temperature": temperature, "task_order": list(tasks), "tasks": {
        t: _zero_shot_task(name, task, report["zero_shot"]["top_classes"], dataset, art,
                           temperature, encode, instances, sample, pngs[t])
        for t, task in tasks.items()}}
    write_zero_shot_json(zero_shot_json, result)

    # similarity heatmap of a sample of images and their first captions
    n_heat = min(report["heatmap_size"], art.n_images)
    heat = np.sort(rng.choice(art.n_images, size=n_heat, replace=False))
    caps = art.first_caption[heat]
    sims = (art.image[heat] @ art.text[caps].T).numpy()
    figures.plot_similarity_heatmap(_Images(art, heat), [art.captions[m] for m in caps], sims,
                                    paths["similarity_heatmap"], f"variant: {name}")
    log.info("%s: figures written to %s; zero-shot %s", name, out_dir,
             {t: r["accuracy"] for t, r in result["tasks"].items()})
    return result


def _zero_shot_task(name: str, task: Task, top: int, dataset: Mapping, art: EvalArtifacts,
                    temperature: float, encode: Callable[[list[str]], torch.Tensor],
                    instances: Path | None, sample: np.ndarray, png: Path) -> dict:
    """One task: its figure of ``sample`` and its results (accuracy only with labels)."""
    class_emb = class_embeddings(encode, task.classes, task.templates)
    probs = zero_shot_probs(art.image, class_emb, temperature).numpy()
    labels = _labels(task, dataset, art, instances)
    result: dict = {"classes": task.names, "templates": list(task.templates),
                    "labels": task.labels,
                    "prompts": [render(task.templates[0], c) for c in task.classes],
                    "accuracy": None, "accuracy_over": None}
    subtitle = "no labels for this task: probabilities only, no accuracy"
    if labels is not None:
        result["accuracy"] = acc = zero_shot_accuracy(probs, labels)
        result["accuracy_over"] = (f"{len(task.classes)} classes; labels from "
                                   f"{LABELS_OVER[task.labels]}")
        subtitle = (f"no image has a label ({LABELS_OVER[task.labels]})"
                    if "top1_accuracy" not in acc else
                    f"over {acc['n_images']} images: top-1 {acc['top1_accuracy']:.1f}% "
                    f"(chance {acc['chance_top1_accuracy']:.1f}%), top-5 "
                    f"{acc['top5_accuracy']:.1f}%, mAP {acc['mAP']:.1f}%; labels from "
                    f"{LABELS_OVER[task.labels]}")
    figures.plot_zero_shot(_Images(art, sample), task.names, probs[sample], png,
                           f"variant: {name} · task: {task.name}",
                           labels=None if labels is None else labels[sample],
                           top=top, subtitle=subtitle)
    return result


def run_variant_figures(variant: Mapping, report: Mapping, dataset: Mapping, embeddings: Path,
                        metrics_json: Path, captions_parquet: Path, image_array: Path,
                        image_index: Path, out_dir: Path, zero_shot_json: Path,
                        instances: Path | None = None, model: Path | None = None,
                        encode: Callable[[list[str]], torch.Tensor] | None = None,
                        queries_json: Path | None = None) -> dict:
    """Load a variant's saved evaluation artifacts and draw its figures.

    Queries and zero-shot prompts are encoded by the text tower evaluate used
    (cliptune.evaluation.evaluate.variant_text_encoder, from the trained ``model``), or by
    ``encode`` when given (tests)."""
    art = EvalArtifacts(embeddings, captions_parquet, image_array, image_index)
    temperature = float(json.loads(Path(metrics_json).read_text())["temperature"])
    if encode is None:
        if model is None:
            raise ValueError("run_variant_figures needs the variant's model.safetensors "
                             "(model=...) to encode text with its own tower")
        encode = variant_text_encoder(dict(variant), Path(model), art.text.shape[1])
    return build_variant_figures(variant, report, dataset, art, temperature, out_dir,
                                 zero_shot_json, encode, instances, queries_json)
