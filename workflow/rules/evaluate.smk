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
        "../scripts/evaluate.py"



from cliptune.evaluation.zero_shot import instances_input
from cliptune.reporting.variant_figures import FIGURES as VARIANT_FIGURES, figures_gpus

FIGURE_DIR = os.path.join(VARIANT_DIR, "figures")


rule figures:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        # COCO object annotations when present: zero-shot accuracy over the 80 categories.
        unpack(lambda w: instances_input(CFG, RESOLVED[w.variant]["eval"]["split"])),
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
        zero_shot=report(
            f"{FIGURE_DIR}/zero_shot.png",
            caption="../report/zero_shot.rst",
            category="3. Zero-shot classification",
            labels={"variant": "{variant}"},
        ),
        similarity_heatmap=report(
            f"{FIGURE_DIR}/similarity_heatmap.png",
            caption="../report/similarity_heatmap.rst",
            category="4. Similarity heatmaps",
            labels={"variant": "{variant}"},
        ),
        zero_shot_json=f"{VARIANT_DIR}/zero_shot.json",
    params:
        variant=variant_json,
        report=canonical_json(CFG["report"]),
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
        "../scripts/figures.py"


# Each figure is written out above as its own report() output (own caption and category);
# the names must stay variant_figures.FIGURES, which the script and the summary read.
if set(rules.figures.output.keys()) - {"zero_shot_json"} != set(VARIANT_FIGURES):
    raise WorkflowError(
        f"rule figures outputs {sorted(rules.figures.output.keys())} do not match "
        f"cliptune.reporting.variant_figures.FIGURES {list(VARIANT_FIGURES)}; edit both together"
    )
