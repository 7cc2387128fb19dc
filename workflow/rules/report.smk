rule aggregate:
    input:
        metrics=expand(f"{VARIANT_DIR}/metrics.json", variant=VARIANTS),
    output:
        csv=ABLATION_CSV,
        png=ABLATION_PNG,
    params:
        variants=VARIANTS,
        baseline=CFG["baseline"],
    log:
        f"{LOGS}/aggregate.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"
