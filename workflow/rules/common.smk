import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from cliptune.config.overrides import typed_cli_overrides
from cliptune.data.sources.captions import annotation_file, check_sources
from cliptune.jobs.gpus import GpuRequestError, gpu_request, local_gpu_limit
from cliptune.config.hpo_space import check_applies
from cliptune.jobs.resources import grow
from cliptune.models.weights import WEIGHTS_DIR, encoder_markers, needed_weights, weight_key
from cliptune.models.weights import marker_path as weights_marker
from cliptune.data.caches.keys import (
    CACHE,
    CACHE_LOGS,
    captions_key,
    captions_paths,
    image_key,
    image_paths,
    text_key,
    text_path,
)
from cliptune.config.load import (
    ConfigError,
    canonical_json,
    load_config,
    resolve_run,
    run_names,
    variant_names,
)
from cliptune.config.datasets import split_names
from cliptune.study_outputs import CURRENT_FILES

try:
    # --config values arrive as strings; read them as YAML before validating.
    CFG = load_config(typed_cli_overrides(config, workflow.config_settings.config))
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

ENV = "../../environment.yml"
DS = CFG["dataset"]["name"]
ROOT = CFG["dataset"]["root"]
# dataset.splits plus the `select` holdout of train when selection needs one.
SPLITS = split_names(CFG["dataset"])
# Train-time validation, best epoch, early stopping and HPO use it; evaluate never does.
SELECT = CFG["dataset"]["selection"]["split"]
VARIANTS = variant_names(CFG)
# variant -> its training runs, primary first: replicate seeds of train.seeds run as
# "{variant}/seed{s}" (their own folder below the variant's); the {variant} wildcard of
# train/evaluate matches both, so every run is its own cached job.
RUNS = run_names(CFG)
ALL_RUNS = [run for runs in RUNS.values() for run in runs]
RESOLVED = {run: resolve_run(CFG, run) for run in ALL_RUNS}
# GPUs each variant's train job asks for ({"gpu": total, "gres": per node}); a request
# above a local --resources gpu=N limit is refused here instead of silently shrunk.
try:
    TRAIN_GPUS = {
        name: gpu_request(name, v["train"], local_gpu_limit(workflow.global_resources))
        for name, v in RESOLVED.items()
    }
except GpuRequestError as exc:
    raise WorkflowError(str(exc)) from None
# Pretrained weights, fetched once on the submit host (weights.smk). Per checkpoint
# key: its spec; per variant: the markers its model-loading jobs wait for.
WEIGHT_SPECS = {weight_key(s): s for v in RESOLVED.values() for s in needed_weights(v)}
VARIANT_WEIGHTS = {n: [weights_marker(s) for s in needed_weights(v)] for n, v in RESOLVED.items()}
# Text cache key -> encoder settings, for every encoder some variant uses.
ENCODERS = {text_key(v["text_encoder"]): v["text_encoder"] for v in RESOLVED.values()}
# Splits with caches: the study's, plus the training split of each variant whose
# train.subset differs from the study's (train-all, train-{N}-random{seed}, ...).
CACHE_SPLITS = list(dict.fromkeys([*SPLITS, *(v["train_split"] for v in RESOLVED.values())]))
# The shared caches are addressed by content (cliptune.data.caches.keys), not by study, so
# studies over the same data share them: key -> split, and image key -> (split, size).
CAPTION_KEYS = {captions_key(CFG["dataset"], split): split for split in CACHE_SPLITS}
IMAGE_KEYS = {
    image_key(CFG["dataset"], split, size): (split, size)
    for split in CACHE_SPLITS
    for size in sorted({v["image_size"] for v in RESOLVED.values()})
}

# Every output of this study lives in its own folder, so studies never overwrite each
# other; results/<file> of CURRENT_FILES are copies of the current study's (report.smk).
STUDY = CFG["study"]
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
VARIANT_DIR = os.path.join(RESULTS, "variants", "{variant}")
ABLATION_CSV = f"{RESULTS}/ablation.csv"
ABLATION_PNG = f"{RESULTS}/ablation_bar.png"
PAIRED_CSV = f"{RESULTS}/paired_vs_baseline.csv"

# Name every missing dataset file before any job runs (downloaded files excepted).
try:
    check_sources(CFG["dataset"])
except FileNotFoundError as exc:
    raise WorkflowError(str(exc)) from None


wildcard_constraints:
    variant="|".join(re.escape(run) for run in ALL_RUNS),
    encoder="|".join(re.escape(key) for key in ENCODERS),
    ckey="|".join(re.escape(key) for key in CAPTION_KEYS),
    ikey="|".join(re.escape(key) for key in IMAGE_KEYS),


def variant_json(wildcards):
    # Sorted-key JSON: Snakemake compares params by repr, so only a real change reruns.
    return canonical_json(RESOLVED[wildcards.variant])


def train_json(wildcards):
    # Training never reads the eval section: changing it reruns evaluation only.
    variant = {k: v for k, v in RESOLVED[wildcards.variant].items() if k != "eval"}
    return canonical_json(variant)


def hpo_json(variant):
    # Checked while the DAG is built: an hpo.space model key of another model kind fails
    # at `-n`, not after the HPO job has queued.
    check_applies(CFG["hpo"]["space"], RESOLVED[variant])
    return canonical_json(CFG["hpo"])


def pair_inputs(variant, split, prefix):
    """Captions, text cache and image cache of one split as seen by one variant."""
    v = RESOLVED[variant]
    images = image_paths(CFG["dataset"], split, v["image_size"])
    return {
        f"{prefix}_captions": captions_paths(CFG["dataset"], split)["captions"],
        f"{prefix}_text": text_path(CFG["dataset"], split, v["text_encoder"]),
        f"{prefix}_array": images["array"],
        f"{prefix}_index": images["index"],
    }
