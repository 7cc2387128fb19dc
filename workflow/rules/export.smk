# `snakemake export`: every variant's trained model in the formats its ecosystem loads,
# with a model card (docs/export.md); `snakemake <EXPORT_DIR with a variant>` for one.
EXPORT_DIR = os.path.join(RESULTS, "export", "{variant}")


rule export_variant:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        model=f"{VARIANT_DIR}/model.safetensors",
        metrics=f"{VARIANT_DIR}/metrics.json",
        train_report=f"{VARIANT_DIR}/train_report.json",
        ablation=ABLATION_CSV,
        paired=PAIRED_CSV,
        data_report=DATA_REPORT,
        # Pretrained weights this job loads (the CLIP architecture, the frozen text tower).
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
    output:
        directory(EXPORT_DIR),
    # The card reads ablation.csv rows, which exist for each variant's primary run only.
    wildcard_constraints:
        variant="|".join(re.escape(v) for v in VARIANTS),
    params:
        variant=variant_json,
        baseline=CFG["baseline"],
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
    log:
        f"{LOGS}/export/{{variant}}.log",
    benchmark:
        f"{LOGS}/export/{{variant}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule export:
    input:
        expand(EXPORT_DIR, variant=VARIANTS),
