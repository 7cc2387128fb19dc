# Aggregates over all variants, the summary and the `snakemake --report` wiring.
# Every figure is flagged with report(): category, caption (.rst in workflow/report/).
from cliptune.reporting.variant_description import describe, uses_temperature

LOSS_OVERLAY_PNG = f"{RESULTS}/loss_overlay.png"
QUERIES_ACROSS_PNG = f"{RESULTS}/queries_across_variants.png"
SUMMARY_MD = f"{RESULTS}/summary.md"


report: "../report/workflow.rst"


rule aggregate:
    input:
        metrics=expand(f"{VARIANT_DIR}/metrics.json", variant=VARIANTS),
        ranks=expand(f"{VARIANT_DIR}/ranks.safetensors", variant=VARIANTS),
        # Every run of every variant (primary first): mean and std over train.seeds.
        run_metrics=expand(f"{VARIANT_DIR}/metrics.json", variant=ALL_RUNS),
    output:
        csv=report(
            ABLATION_CSV,
            caption="../report/ablation_csv.rst",
            category="1. Overview",
            labels={"figure": "ablation table"},
        ),
        png=report(
            ABLATION_PNG,
            caption="../report/ablation_bar.rst",
            category="1. Overview",
            labels={"figure": "Recall@K per variant"},
        ),
        paired=report(
            PAIRED_CSV,
            caption="../report/paired_csv.rst",
            category="1. Overview",
            labels={"figure": "paired comparison with the baseline"},
        ),
    params:
        variants=VARIANTS,
        runs=canonical_json(RUNS),
        baseline=CFG["baseline"],
        ks=RESOLVED[CFG["baseline"]]["eval"]["ks"],
        bootstrap=canonical_json(CFG["bootstrap"]),
    resources:
        mem_mb=4000,
        runtime=15,
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{LOGS}/aggregate.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


# Drawn from the train job's logs, so a new plot never reruns training.
rule loss_curves:
    input:
        history=f"{VARIANT_DIR}/history.csv",
        steps=f"{VARIANT_DIR}/steps.csv",
    output:
        report(
            f"{VARIANT_DIR}/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="5. Training curves",
            labels={"variant": "{variant}"},
        ),
    params:
        # The loss in words, from the resolved config (caption and plot title).
        loss=lambda w: describe(RESOLVED[w.variant]).loss,
        temperature_used=lambda w: uses_temperature(RESOLVED[w.variant]),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{LOGS}/loss_curves/{{variant}}.log",
    benchmark:
        f"{LOGS}/loss_curves/{{variant}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule loss_overlay:
    input:
        histories=expand(f"{VARIANT_DIR}/history.csv", variant=VARIANTS),
    output:
        report(
            LOSS_OVERLAY_PNG,
            caption="../report/loss_overlay.rst",
            category="1. Overview",
            labels={"figure": "training curves, all variants"},
        ),
    params:
        variants=VARIANTS,
        baseline=CFG["baseline"],
    resources:
        mem_mb=4000,
        runtime=15,
    log:
        f"{LOGS}/loss_overlay.log",
    benchmark:
        f"{LOGS}/loss_overlay.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


# Rows = report.queries, columns = variants: each variant's top images, as its evaluate
# job ranked them (queries.json); nothing is encoded again.
rule queries_across_variants:
    input:
        queries=expand(QUERIES_JSON, variant=VARIANTS),
        arrays=[pair_inputs(v, RESOLVED[v]["eval"]["split"], "val")["val_array"] for v in VARIANTS],
        indexes=[pair_inputs(v, RESOLVED[v]["eval"]["split"], "val")["val_index"] for v in VARIANTS],
    output:
        report(
            QUERIES_ACROSS_PNG,
            caption="../report/queries_across_variants.rst",
            category="2. Retrieval examples",
            subcategory="text query → images, all variants",
            labels={"figure": "the same queries across variants"},
        ),
    params:
        variants=VARIANTS,
        queries=lambda w: list(CFG["report"]["queries"]),  # free text: never wildcards
    resources:
        mem_mb=4000,
        runtime=15,
    log:
        f"{LOGS}/queries_across_variants.log",
    benchmark:
        f"{LOGS}/queries_across_variants.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule summary:
    input:
        metrics=expand(f"{VARIANT_DIR}/metrics.json", variant=VARIANTS),
        train_reports=expand(f"{VARIANT_DIR}/train_report.json", variant=VARIANTS),
        histories=expand(f"{VARIANT_DIR}/history.csv", variant=VARIANTS),
        zero_shot=expand(ZERO_SHOT_JSON, variant=VARIANTS),
        figures=expand(
            f"{FIGURE_DIR}/{{figure}}.png",
            variant=VARIANTS,
            figure=[*VARIANT_FIGURES, *ZERO_SHOT_FIGURES],
        ),
        ablation_png=ABLATION_PNG,
        queries_png=QUERIES_ACROSS_PNG,
        # Intervals, seed spread and paired differences, exactly as the table holds them.
        ablation_csv=ABLATION_CSV,
        paired=PAIRED_CSV,
        overlay_png=LOSS_OVERLAY_PNG,
    output:
        report(
            SUMMARY_MD,
            caption="../report/summary.rst",
            category="1. Overview",
            labels={"figure": "summary.md (download)"},
        ),
    params:
        variants=VARIANTS,
        baseline=CFG["baseline"],
        # A function: Snakemake would read "{article}" in the templates as a wildcard.
        report=lambda w: canonical_json(CFG["report"]),
        # The heading names the study: studies of one dataset share its name.
        dataset=canonical_json({"study": STUDY, "name": DS, "source": CFG["dataset"]["source"]}),
        tasks=list(ZERO_SHOT_TASKS),
        # Every variant in one sentence, from its resolved config: the HTML report's
        # introduction and the summary's caption list them.
        descriptions=lambda w: [describe(RESOLVED[v]).sentence for v in VARIANTS],
    resources:
        mem_mb=4000,
        runtime=15,
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{LOGS}/summary.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


# results/<file>: the current config's study, copied (Markdown links rewritten into the
# study folder). Switching --configfile changes the input, so only these copies rerun.
rule current_study:
    input:
        f"{RESULTS}/{{file}}",
    output:
        "results/{file}",
    wildcard_constraints:
        file="|".join(re.escape(f) for f in CURRENT_FILES),
    params:
        study=STUDY,
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        f"{LOGS}/current_study/{{file}}.log",
    benchmark:
        f"{LOGS}/current_study/{{file}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
