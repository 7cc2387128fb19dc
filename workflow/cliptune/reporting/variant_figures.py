"""The per-variant showcase: text->image and image->text retrieval grids, one zero-shot
classification figure per task and a similarity heatmap, drawn from the files evaluate
wrote (embeddings, the queries' top images, zero-shot probabilities and labels:
cliptune.evaluation.prompt_results). Nothing is encoded here and no model is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from cliptune.data.caches.images import cache_rows, open_cache
from cliptune.evaluation.report_outputs import FIGURES, ZERO_SHOT_FIGURE
from cliptune.evaluation.retrieval_metrics import topk_texts
from cliptune.evaluation.zero_shot_labels import LABELS_OVER
from cliptune.reporting import figures

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


def _subtitle(result: Mapping) -> str:
    acc = result["accuracy"]
    if acc is None:
        return "no labels for this task: probabilities only, no accuracy"
    over = LABELS_OVER[result["labels"]]
    if "top1_accuracy" not in acc:
        return f"no image has a label ({over})"
    return (f"over {acc['n_images']} images: top-1 {acc['top1_accuracy']:.1f}% "
            f"(chance {acc['chance_top1_accuracy']:.1f}%), top-5 "
            f"{acc['top5_accuracy']:.1f}%, mAP {acc['mAP']:.1f}%; labels from {over}")


def build_variant_figures(name: str, report: Mapping, art: EvalArtifacts, queries: Mapping,
                          zero_shot: Mapping, prompts: Mapping[str, np.ndarray],
                          score_memory: int, out_dir: Path) -> None:
    """Draw the figures into ``out_dir`` from evaluate's results: ``queries``
    (queries.json), ``zero_shot`` (zero_shot.json) and ``prompts`` (prompts.safetensors)."""
    paths = figure_paths(out_dir)
    rng = np.random.default_rng(report["seed"])

    # text query -> top-K images, as evaluate ranked them
    position = {int(i): p for p, i in enumerate(art.image_id.tolist())}
    try:
        t_idx = np.array([[position[int(i)] for i in row] for row in queries["image_id"]])
    except KeyError as exc:
        raise RuntimeError(f"variant {name}: queries.json names image {exc} that its "
                           "embeddings do not hold; rerun its evaluate job") from None
    figures.plot_text_to_image(queries["queries"], t_idx, np.asarray(queries["score"]),
                               _Images(art), _Captions(art), paths["text_to_image"],
                               f"variant: {name}")

    # image -> top-K captions, on a fixed random sample (same images for every variant)
    k = min(report["top_k"], art.n_images)
    sample = np.sort(rng.choice(art.n_images, size=min(report["n_images"], art.n_images),
                                replace=False))
    i_scores, i_idx = topk_texts(art.image[sample], art.text, min(k, len(art.text)),
                                 score_memory=score_memory)
    correct = art.text_image[i_idx.numpy()] == sample[:, None]
    figures.plot_image_to_text(_Images(art, sample),
                               [[art.captions[m] for m in row] for row in i_idx.numpy()],
                               i_scores.numpy(), correct, paths["image_to_text"],
                               f"variant: {name}")

    # zero-shot classification: one figure per task, from evaluate's probabilities
    tasks = zero_shot["task_order"]
    for task, png in zero_shot_paths(out_dir, tasks).items():
        result = zero_shot["tasks"][task]
        # evaluate saved labels exactly for the tasks it could score
        labels = prompts[f"{task}.labels"] if result["accuracy"] is not None else None
        figures.plot_zero_shot(_Images(art, sample), result["classes"],
                               prompts[f"{task}.probs"][sample], png,
                               f"variant: {name} · task: {task}",
                               labels=None if labels is None else labels[sample].astype(bool),
                               top=report["zero_shot"]["top_classes"],
                               subtitle=_subtitle(result))

    # similarity heatmap of a sample of images and their first captions
    n_heat = min(report["heatmap_size"], art.n_images)
    heat = np.sort(rng.choice(art.n_images, size=n_heat, replace=False))
    caps = art.first_caption[heat]
    sims = (art.image[heat] @ art.text[caps].T).numpy()
    figures.plot_similarity_heatmap(_Images(art, heat), [art.captions[m] for m in caps], sims,
                                    paths["similarity_heatmap"], f"variant: {name}")
    log.info("%s: figures written to %s", name, out_dir)


def run_variant_figures(name: str, report: Mapping, score_memory: int, embeddings: Path,
                        queries_json: Path, zero_shot_json: Path, prompts: Path,
                        captions_parquet: Path, image_array: Path, image_index: Path,
                        out_dir: Path) -> None:
    """Read a variant's evaluation results and draw its figures (files only)."""
    art = EvalArtifacts(embeddings, captions_parquet, image_array, image_index)
    zero_shot = json.loads(Path(zero_shot_json).read_text())
    tensors = load_numpy(str(prompts))
    missing = [t for t in zero_shot["task_order"] if f"{t}.probs" not in tensors]
    if missing:
        raise RuntimeError(f"{prompts} lacks the zero-shot tasks {missing} of "
                           f"{zero_shot_json}; rerun the variant's evaluate job")
    build_variant_figures(name, report, art, json.loads(Path(queries_json).read_text()),
                          zero_shot, tensors, score_memory, out_dir)
