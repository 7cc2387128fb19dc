rule evaluate:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        model=f"{VARIANT_DIR}/model.safetensors",
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
    output:
        metrics=f"{VARIANT_DIR}/metrics.json",
        recall=f"{VARIANT_DIR}/recall.csv",
        embeddings=f"{VARIANT_DIR}/embeddings.safetensors",
        ranks=f"{VARIANT_DIR}/ranks.safetensors",
    params:
        variant=variant_json,
    threads: 8
    resources:
        mem_mb=grow(32000),
        runtime=grow(120),
        gpu=1,
    log:
        f"{LOGS}/evaluate/{{variant}}.log",
    benchmark:
        f"{LOGS}/evaluate/{{variant}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"



from cliptune.evaluation.zero_shot_tasks import instances_file, instances_input, resolve_tasks
from cliptune.reporting.figure_plan import (
    FIGURES as VARIANT_FIGURES,
    ZERO_SHOT_FIGURE,
    figures_gpus,
)

FIGURE_DIR = os.path.join(VARIANT_DIR, "figures")
# report.zero_shot.tasks, checked now: a bad class list or label source fails at parse time.
ZERO_SHOT_TASKS = resolve_tasks(CFG["report"]["zero_shot"], CFG["dataset"]["source"])
# "zero_shot/<task>": figure names under a variant's figures/, as VARIANT_FIGURES are.
ZERO_SHOT_FIGURES = [
    ZERO_SHOT_FIGURE.format(task=t).removesuffix(".png") for t in ZERO_SHOT_TASKS
]
ZERO_SHOT_PNGS = [os.path.join(FIGURE_DIR, f"{f}.png") for f in ZERO_SHOT_FIGURES]
# Every variant's top images of every report query (the cross-variant query figure).
QUERIES_JSON = f"{VARIANT_DIR}/queries.json"


rule figures:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        # COCO object annotations when a zero-shot task is labelled from them.
        unpack(
            lambda w: instances_input(
                CFG, RESOLVED[w.variant]["eval"]["split"], ZERO_SHOT_TASKS
            )
        ),
        embeddings=f"{VARIANT_DIR}/embeddings.safetensors",
        metrics=f"{VARIANT_DIR}/metrics.json",
        # Queries and prompts go through the text tower evaluate used: the trained one
        # (LoRA, unlocked or from-scratch towers) or the frozen text encoder.
        model=f"{VARIANT_DIR}/model.safetensors",
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
    output:
        text_to_image=report(
            f"{FIGURE_DIR}/text_to_image.png",
            caption="../report/text_to_image.rst",
            category="2. Retrieval examples",
            subcategory="text query → images",
            labels={"variant": "{variant}"},
        ),
        image_to_text=report(
            f"{FIGURE_DIR}/image_to_text.png",
            caption="../report/image_to_text.rst",
            category="2. Retrieval examples",
            subcategory="image → captions",
            labels={"variant": "{variant}"},
        ),
        **{
            f"zero_shot_{task}": report(
                png,
                caption="../report/zero_shot.rst",
                category="3. Zero-shot classification",
                subcategory=task,
                labels={"variant": "{variant}", "task": task},
            )
            for task, png in zip(ZERO_SHOT_TASKS, ZERO_SHOT_PNGS)
        },
        similarity_heatmap=report(
            f"{FIGURE_DIR}/similarity_heatmap.png",
            caption="../report/similarity_heatmap.rst",
            category="4. Similarity heatmaps",
            labels={"variant": "{variant}"},
        ),
        zero_shot_json=f"{VARIANT_DIR}/zero_shot.json",
        queries_json=QUERIES_JSON,
    params:
        variant=variant_json,
        # A function: Snakemake would read "{article}" in the templates as a wildcard.
        report=lambda w: canonical_json(CFG["report"]),
        instances=lambda w: instances_file(
            CFG, RESOLVED[w.variant]["eval"]["split"], ZERO_SHOT_TASKS
        ),
        # Only what labels demo images; a new dataset size reruns everything anyway.
        dataset=canonical_json(
            {
                "name": DS,
                "source": CFG["dataset"]["source"],
                "demo": {k: CFG["dataset"]["demo"][k] for k in ("seed", "max_shapes")},
            }
        ),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=30,
        # The frozen encoder runs its few hundred prompts on the CPU; a variant's own
        # tower runs where evaluate ran it (cliptune.reporting.variant_figures.figures_gpus).
        gpu=lambda w: figures_gpus(RESOLVED[w.variant]),
    log:
        f"{LOGS}/figures/{{variant}}.log",
    benchmark:
        f"{LOGS}/figures/{{variant}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


# Each figure is written out above as its own report() output (own caption and category);
# the names must stay variant_figures.FIGURES (+ one zero_shot_<task> per task), which the
# script and the summary read.
_FIGURE_OUTPUTS = set(VARIANT_FIGURES) | {f"zero_shot_{t}" for t in ZERO_SHOT_TASKS}
if set(rules.figures.output.keys()) - {"zero_shot_json", "queries_json"} != _FIGURE_OUTPUTS:
    raise WorkflowError(
        f"rule figures outputs {sorted(rules.figures.output.keys())} do not match "
        f"cliptune.reporting.variant_figures.FIGURES {list(VARIANT_FIGURES)} and the "
        f"zero-shot tasks {list(ZERO_SHOT_TASKS)}; edit both together"
    )
