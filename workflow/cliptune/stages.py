"""Adapters from a Snakemake ``script:`` job to the stage functions.

Each takes the ``snakemake`` object (inputs, outputs, params, threads, log),
sets up logging into the rule's log file and calls one cliptune function, so
rules stay declarative and all logic stays testable without Snakemake.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cliptune.runtime import set_threads, setup_logging

log = logging.getLogger("cliptune.stage")


def demo_dataset(smk) -> None:
    from cliptune.demo_data import generate_demo_dataset

    demo = json.loads(smk.params.demo)
    generate_demo_dataset(Path(smk.params.root), **demo)


def captions(smk) -> None:
    from cliptune.captions import build_captions

    build_captions(Path(smk.params.root), smk.params.folder, smk.wildcards.split,
                   Path(smk.output[0]))


def image_cache(smk) -> None:
    from cliptune.image_cache import build_image_cache

    build_image_cache(Path(smk.input.captions), Path(smk.params.root), int(smk.wildcards.size),
                      Path(smk.output.array), Path(smk.output.index), workers=smk.threads,
                      max_bad_fraction=smk.params.max_bad_fraction)


def text_embeddings(smk) -> None:
    from cliptune.text_encoder import build_text_cache

    spec = json.loads(smk.params.encoder)
    build_text_cache(Path(smk.input.captions), Path(smk.output[0]), spec["model"],
                     spec["pooling"], spec["max_length"], spec["batch_size"], smk.params.device)


def _pairs(smk, prefix: str):
    from cliptune.pairs import PairData

    return PairData.load(Path(smk.input[f"{prefix}_captions"]), Path(smk.input[f"{prefix}_text"]),
                         Path(smk.input[f"{prefix}_array"]), Path(smk.input[f"{prefix}_index"]))


def train(smk) -> None:
    from cliptune.train import train_variant

    variant = json.loads(smk.params.variant)
    train_variant(variant, _pairs(smk, "train"), _pairs(smk, "val"),
                  Path(smk.output.model).parent, Path(smk.params.state))


def evaluate(smk) -> None:
    from cliptune.evaluate import evaluate_variant

    variant = json.loads(smk.params.variant)
    evaluate_variant(variant, Path(smk.input.model), _pairs(smk, "val"),
                     Path(smk.output.metrics).parent)


def aggregate(smk) -> None:
    from cliptune.aggregate import write_ablation

    files = dict(zip(smk.params.variants, smk.input.metrics, strict=True))
    write_ablation(files, smk.params.baseline, Path(smk.output.csv), Path(smk.output.png))


def run(smk, stage: str) -> None:
    """Run ``stage`` with logging to the rule's log; failures are logged there too."""
    setup_logging(str(smk.log[0]) if smk.log else None)
    set_threads(smk.threads)
    try:
        globals()[stage](smk)
    except Exception:
        log.exception("stage %s failed", stage)
        raise
