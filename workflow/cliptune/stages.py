"""Adapters from a Snakemake ``script:`` job to the stage functions.

Every rule runs workflow/scripts/run_stage.py, which calls :func:`run`: it looks the
rule's name up in :data:`STAGES`, sets up logging into the rule's log file and calls the
stage, which takes the ``snakemake`` object (inputs, outputs, params, threads, log) and
calls one cliptune function, so rules stay declarative and all logic stays testable
without Snakemake.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from cliptune.jobs.gpus import assign_gpus
from cliptune.runtime import set_threads, setup_logging

log = logging.getLogger("cliptune.stage")


def weights(smk) -> None:
    from cliptune.models.weights import fetch_weights

    marker = Path(smk.output[0])  # {root}/hf/<repo>.json or {root}/torchvision/<file>.json
    fetch_weights(json.loads(smk.params.spec), marker, marker.parents[1])


def demo_dataset(smk) -> None:
    from cliptune.demo.dataset import generate_demo_dataset

    demo = json.loads(smk.params.demo)
    generate_demo_dataset(Path(smk.params.root), **demo)


def coco_archive(smk) -> None:
    from cliptune.data.fetch.coco import fetch_archive

    fetch_archive(smk.wildcards.archive, json.loads(smk.params.spec), Path(smk.output[0]),
                  hint=smk.params.hint)


def kaggle_flickr30k(smk) -> None:
    from cliptune.data.fetch.kaggle import fetch_flickr30k

    fetch_flickr30k(Path(smk.output.annotations), Path(smk.params.images))


def coco_extract(smk) -> None:
    from cliptune.data.fetch.coco import extract_archive

    marker = extract_archive(Path(smk.input[0]), Path(smk.output[0]).parent)
    if marker != Path(smk.output[0]):
        raise RuntimeError(f"extraction wrote marker {marker}, the rule expects {smk.output[0]}")


def captions(smk) -> None:
    from cliptune.data.sources.captions import build_split_captions

    build_split_captions(json.loads(smk.params.spec), Path(smk.output.parquet),
                         Path(smk.output.source))


def data_report(smk) -> None:
    from cliptune.reporting.data_report import build_data_report

    build_data_report(list(smk.params.splits), [Path(p) for p in smk.input.captions],
                      [Path(p) for p in smk.input.sources], [Path(p) for p in smk.input.indexes],
                      Path(smk.output.json), Path(smk.output.md), dataset=smk.params.dataset,
                      image_size=smk.params.size)


def samples(smk) -> None:
    from cliptune.reporting.samples import write_samples

    write_samples(Path(smk.input.captions), Path(smk.input.array), Path(smk.input.index),
                  Path(smk.output[0]), count=smk.params.n, seed=smk.params.seed,
                  title=smk.params.title)


def image_cache(smk) -> None:
    from cliptune.data.caches.images import build_image_cache

    build_image_cache(Path(smk.input.captions), Path(smk.params.root), int(smk.params.size),
                      Path(smk.output.array), Path(smk.output.index), workers=smk.threads,
                      max_bad_fraction=smk.params.max_bad_fraction)


def text_embeddings(smk) -> None:
    from cliptune.data.caches.text import build_text_cache

    spec = json.loads(smk.params.encoder)
    build_text_cache(Path(smk.input.captions), Path(smk.output[0]), spec["model"],
                     spec["pooling"], spec["max_length"], spec["batch_size"], smk.params.device)


def _pairs(smk, prefix: str):
    """One split from the rule's named inputs (trunk features when the rule has them)."""
    from cliptune.data.caches.features import load_split

    return load_split(_named_inputs(smk), prefix)


def _named_inputs(smk) -> dict[str, str]:
    return {k: str(smk.input[k]) for k in smk.input.keys()}  # noqa: SIM118 (Namedlist)


def backbone_features(smk) -> None:
    from cliptune.data.caches.features import build_feature_cache

    build_feature_cache(Path(smk.input.array), Path(smk.input.index), json.loads(smk.params.spec),
                        Path(smk.output.array), Path(smk.output.meta), device=smk.params.device)


def train(smk) -> None:
    from cliptune.training.distributed import launch, world_size
    from cliptune.training.trainer import train_variant

    variant = json.loads(smk.params.variant)
    out_dir = Path(smk.output.model).parent
    # Per-step / per-epoch CSV and TensorBoard logs: logs/{DS}/train/{variant}/ (not outputs).
    log_dir = Path(str(smk.log[0])).with_suffix("") if smk.log else None
    if world_size(variant["train"]) > 1:  # train.devices/nodes: torchrun workers
        devices, nodes = variant["train"]["devices"], variant["train"]["nodes"]
        state = Path(smk.params.state)
        spec = {"variant": variant, "inputs": _named_inputs(smk), "out_dir": str(out_dir),
                "state": str(state), "log": str(smk.log[0]) if smk.log else None,
                "log_dir": str(log_dir) if log_dir else None,
                "threads": max(1, smk.threads // devices)}
        launch(spec, state.with_name("launch.json"), devices, nodes)
    else:
        train_variant(variant, _pairs(smk, "train"), _pairs(smk, "val"), out_dir,
                      Path(smk.params.state), log_dir=log_dir)


def loss_curves(smk) -> None:
    import pandas as pd

    from cliptune.reporting.plots import plot_loss_curves

    plot_loss_curves(pd.read_csv(smk.input.history), Path(smk.output[0]),
                     title=smk.wildcards.variant, steps=pd.read_csv(smk.input.steps),
                     loss=smk.params.loss, temperature_used=smk.params.temperature_used)


def hpo(smk) -> None:
    from cliptune.training.hpo import run_search

    run_search(json.loads(smk.params.variant), json.loads(smk.params.override),
               json.loads(smk.params.hpo), _pairs(smk, "train"), _pairs(smk, "val"),
               Path(smk.output.overlay).parent, Path(smk.params.storage))


def evaluate(smk) -> None:
    from cliptune.evaluation.evaluate import evaluate_variant
    from cliptune.evaluation.prompt_results import PromptSpec

    variant = json.loads(smk.params.variant)
    # labels: "" unless a zero-shot task reads COCO's instances or the demo's scenes.
    prompts = PromptSpec.of(json.loads(smk.params.prompts), smk.params.source,
                            smk.params.labels)
    evaluate_variant(variant, Path(smk.input.model), _pairs(smk, "val"),
                     Path(smk.output.metrics).parent, prompts=prompts)


def aggregate(smk) -> None:
    from cliptune.reporting.ablation import write_ablation

    variants = list(smk.params.variants)
    metrics = dict(zip(variants, smk.input.metrics, strict=True))
    ranks = dict(zip(variants, smk.input.ranks, strict=True))
    # run_metrics follows RUNS (variant order, primary first): regroup it per variant.
    runs = json.loads(smk.params.runs)
    by_run = dict(zip([r for v in variants for r in runs[v]], smk.input.run_metrics, strict=True))
    run_files = {v: [Path(by_run[r]) for r in runs[v]] for v in variants}
    ks = smk.params.ks  # eval.ks of the baseline
    write_ablation(metrics, ranks, run_files, smk.params.baseline,
                   json.loads(smk.params.bootstrap), Path(smk.output.csv), Path(smk.output.png),
                   Path(smk.output.paired), ks)


def export_variant(smk) -> None:
    from cliptune.export import variant_export
    from cliptune.export.model_card import RunFiles

    files = RunFiles(metrics=Path(smk.input.metrics), train_report=Path(smk.input.train_report),
                     ablation=Path(smk.input.ablation), paired=Path(smk.input.paired),
                     data_report=Path(smk.input.data_report))
    variant_export.export_variant(json.loads(smk.params.variant), Path(smk.input.model),
                                  _pairs(smk, "val"), files, smk.params.baseline,
                                  Path(smk.output[0]))


def figures(smk) -> None:
    from cliptune.reporting.variant_figures import run_variant_figures
    from cliptune.retrieval import score_memory_bytes

    run_variant_figures(
        smk.wildcards.variant, json.loads(smk.params.report),
        score_memory_bytes(smk.params.score_memory_mb),
        Path(smk.input.embeddings), Path(smk.input.queries), Path(smk.input.zero_shot),
        Path(smk.input.prompts), Path(smk.input.val_captions), Path(smk.input.val_array),
        Path(smk.input.val_index), Path(smk.output.text_to_image).parent)


def queries_across_variants(smk) -> None:
    from cliptune.reporting.query_comparison import queries_across_variants as draw

    names = list(smk.params.variants)  # every input list follows this order
    variants = {v: {"queries": Path(smk.input.queries[i]), "array": Path(smk.input.arrays[i]),
                    "index": Path(smk.input.indexes[i])} for i, v in enumerate(names)}
    draw(variants, list(smk.params.queries), Path(smk.output[0]))


def search_embed(smk) -> None:
    from safetensors import safe_open

    from cliptune.data.sources.image_folder import resolve_folder
    from cliptune.evaluation.search import embed_folder

    # The model's embedding width is the text cache's (as evaluate reads it from there).
    with safe_open(str(smk.input.text), "pt") as f:
        embed_dim = f.get_slice("embeddings").get_shape()[1]
    embed_folder(json.loads(smk.params.variant), Path(smk.input.model), embed_dim,
                 resolve_folder(smk.params.images), Path(smk.output.embeddings).parent,
                 batch_size=smk.params.batch_size, workers=smk.threads)


def search_text_to_image(smk) -> None:
    from cliptune.evaluation.evaluate import variant_text_encoder
    from cliptune.evaluation.search import load_folder_embeddings, text_to_image_hits
    from cliptune.files.atomic import atomic_path
    from cliptune.reporting.search_figures import plot_search_text_to_image
    from cliptune.retrieval import score_memory_bytes

    variant = json.loads(smk.params.variant)
    emb, files = load_folder_embeddings(Path(smk.input.embeddings), Path(smk.input.manifest))
    encode = variant_text_encoder(variant, Path(smk.input.model), emb.shape[1])
    hits = text_to_image_hits(encode, list(smk.params.queries), emb, files, smk.params.top_k,
                              score_memory_bytes(variant["eval"]["score_memory_mb"]))
    with atomic_path(smk.output.csv) as tmp:
        hits.to_csv(tmp, index=False)
    plot_search_text_to_image(hits, Path(smk.params.folder), Path(smk.output.png),
                              f"your images, variant: {variant['name']}")


def search_image_to_text(smk) -> None:
    from cliptune.evaluation.search import eval_captions, image_to_text_hits, load_folder_embeddings
    from cliptune.files.atomic import atomic_path
    from cliptune.reporting.search_figures import plot_search_image_to_text
    from cliptune.retrieval import score_memory_bytes

    variant = json.loads(smk.params.variant)
    emb, files = load_folder_embeddings(Path(smk.input.embeddings), Path(smk.input.manifest))
    text_emb, captions = eval_captions(Path(smk.input.eval_embeddings), Path(smk.input.captions))
    hits = image_to_text_hits(emb, files, text_emb, captions, smk.params.top_k,
                              score_memory_bytes(variant["eval"]["score_memory_mb"]))
    with atomic_path(smk.output.csv) as tmp:
        hits.to_csv(tmp, index=False)
    split = variant["eval"]["split"]
    plot_search_image_to_text(hits, Path(smk.params.folder), Path(smk.output.png),
                              f"your images, variant: {variant['name']} (captions of the {split} "
                              "split)", smk.params.figure_images)


def loss_overlay(smk) -> None:
    import pandas as pd

    from cliptune.reporting.figures import plot_loss_overlay

    histories = {v: pd.read_csv(p) for v, p in zip(smk.params.variants, smk.input.histories,
                                                    strict=True)}
    plot_loss_overlay(histories, Path(smk.output[0]), baseline=smk.params.baseline)


def summary(smk) -> None:
    from cliptune.evaluation.report_outputs import FIGURES, ZERO_SHOT_FIGURE
    from cliptune.reporting.comparison import Comparison
    from cliptune.reporting.summary import write_summary

    names = list(smk.params.variants)
    figs = list(smk.input.figures)  # expand order: variant-major, then FIGURES order
    keys = [*FIGURES,
            *(ZERO_SHOT_FIGURE.format(task=t).removesuffix(".png") for t in smk.params.tasks)]
    variants = {
        v: {"metrics": smk.input.metrics[i], "train_report": smk.input.train_reports[i],
            "history": smk.input.histories[i], "zero_shot": smk.input.zero_shot[i],
            "figures": {f: next(p for p in figs if p.endswith(f"/{v}/figures/{f}.png"))
                        for f in keys}}
        for i, v in enumerate(names)
    }
    write_summary(Path(smk.output[0]), variants, smk.params.baseline,
                  json.loads(smk.params.dataset), json.loads(smk.params.report),
                  Path(smk.input.ablation_png), Path(smk.input.overlay_png),
                  comparison=Comparison.load(Path(smk.input.ablation_csv),
                                             Path(smk.input.paired), smk.params.baseline),
                  queries_png=Path(smk.input.queries_png))


def current_study(smk) -> None:
    from cliptune.study_outputs import copy_current

    copy_current(Path(smk.input[0]), Path(smk.output[0]))


# Rule name -> its stage. Only the weights rule reaches the network (for the weights
# every other stage then loads from disk).
STAGES: dict[str, Callable] = {f.__name__: f for f in (
    weights, demo_dataset, coco_archive, kaggle_flickr30k, coco_extract, captions, data_report,
    samples, image_cache, text_embeddings, backbone_features, train, loss_curves, hpo,
    evaluate, aggregate, figures, queries_across_variants, search_embed, search_text_to_image,
    search_image_to_text, loss_overlay, summary, export_variant, current_study)}
FETCHES_WEIGHTS = {"weights"}


def run(smk) -> None:
    """Run the stage of the rule ``smk.rule`` with logging to the rule's log; failures
    are logged there too."""
    stage = STAGES[smk.rule]
    setup_logging(str(smk.log[0]) if smk.log else None)
    set_threads(smk.threads)
    try:
        # Before torch starts CUDA: the job sees only the GPUs its `gpu` resource got.
        assign_gpus(int(getattr(smk.resources, "gpu", 0) or 0))
        if smk.rule not in FETCHES_WEIGHTS:
            # Models load only what the weights rule fetched, never from the network
            # (compute nodes are often offline). Set before transformers is imported.
            from cliptune.models.weights import use_local_weights

            use_local_weights()
        stage(smk)
    except Exception:
        log.exception("stage %s failed", smk.rule)
        raise
