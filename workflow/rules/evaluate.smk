from cliptune.evaluation.report_outputs import (
    FIGURES as VARIANT_FIGURES,
    PROMPTS_FILE,
    QUERIES_JSON as QUERIES_FILE,
    ZERO_SHOT_FIGURE,
    ZERO_SHOT_JSON as ZERO_SHOT_FILE,
    prompt_params,
)
from cliptune.evaluation.zero_shot_tasks import label_file, label_input, resolve_tasks

FIGURE_DIR = os.path.join(VARIANT_DIR, "figures")
# report.zero_shot.tasks, checked now: a bad class list or label source fails at parse time.
ZERO_SHOT_TASKS = resolve_tasks(CFG["report"]["zero_shot"], CFG["dataset"]["source"])
# "zero_shot/<task>": figure names under a variant's figures/, as VARIANT_FIGURES are.
ZERO_SHOT_FIGURES = [
    ZERO_SHOT_FIGURE.format(task=t).removesuffix(".png") for t in ZERO_SHOT_TASKS
]
ZERO_SHOT_PNGS = [os.path.join(FIGURE_DIR, f"{f}.png") for f in ZERO_SHOT_FIGURES]
# What evaluate computes from text (cliptune.evaluation.prompt_results): every report
# query's top images (the cross-variant query figure), the zero-shot results, and the
# query/class embeddings with every image's class probabilities and labels.
QUERIES_JSON = f"{VARIANT_DIR}/{QUERIES_FILE}"
ZERO_SHOT_JSON = f"{VARIANT_DIR}/{ZERO_SHOT_FILE}"
PROMPTS = f"{VARIANT_DIR}/{PROMPTS_FILE}"


rule evaluate:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        # The ground truth of zero-shot tasks labelled coco (COCO's instances json) or
        # demo (the generator's scenes file), when one is.
        unpack(lambda w: label_input(CFG, RESOLVED[w.variant]["eval"]["split"], ZERO_SHOT_TASKS)),
        model=f"{VARIANT_DIR}/model.safetensors",
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
    output:
        metrics=f"{VARIANT_DIR}/metrics.json",
        recall=f"{VARIANT_DIR}/recall.csv",
        embeddings=f"{VARIANT_DIR}/embeddings.safetensors",
        ranks=f"{VARIANT_DIR}/ranks.safetensors",
        queries=QUERIES_JSON,
        zero_shot=ZERO_SHOT_JSON,
        prompts=PROMPTS,
    params:
        variant=variant_json,
        # Only the report settings evaluation reads: a figure size never reruns it.
        # A function: Snakemake would read "{article}" in the templates as a wildcard.
        prompts=lambda w: canonical_json(prompt_params(CFG["report"])),
        source=CFG["dataset"]["source"],
        labels=lambda w: label_file(CFG, RESOLVED[w.variant]["eval"]["split"], ZERO_SHOT_TASKS),
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


# Files in, PNGs out: evaluate computed every number and embedding these figures show,
# so this job loads no model and needs no GPU (a local rule, Snakefile).
rule figures:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        embeddings=f"{VARIANT_DIR}/embeddings.safetensors",
        queries=QUERIES_JSON,
        zero_shot=ZERO_SHOT_JSON,
        prompts=PROMPTS,
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
    params:
        # A function: Snakemake would read "{article}" in the templates as a wildcard.
        report=lambda w: canonical_json(CFG["report"]),
        score_memory_mb=lambda w: RESOLVED[w.variant]["eval"]["score_memory_mb"],
    resources:
        mem_mb=4000,
        runtime=15,
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
if set(rules.figures.output.keys()) != _FIGURE_OUTPUTS:
    raise WorkflowError(
        f"rule figures outputs {sorted(rules.figures.output.keys())} do not match "
        f"cliptune.reporting.variant_figures.FIGURES {list(VARIANT_FIGURES)} and the "
        f"zero-shot tasks {list(ZERO_SHOT_TASKS)}; edit both together"
    )
