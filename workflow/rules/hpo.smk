# Optuna search for one variant; its own target, not part of `rule all`:
#   snakemake results/{DS}/hpo/{variant}/best_overlay.yaml --cores 8 --resources gpu=1
HPO_DIR = f"{RESULTS}/hpo/{{variant}}"


rule hpo:
    # Configured variants only: a {variant}/seed{s} replicate run has no overrides to search.
    wildcard_constraints:
        variant="|".join(re.escape(v) for v in VARIANTS),
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["train_split"], "train")),
        # Trials are scored on the selection split, never on the reported eval.split.
        unpack(lambda w: pair_inputs(w.variant, SELECT, "val")),
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
    output:
        overlay=f"{HPO_DIR}/best_overlay.yaml",
        best=f"{HPO_DIR}/best_params.json",
        trials=f"{HPO_DIR}/trials.csv",
        history=f"{HPO_DIR}/optimization_history.png",
        importance=f"{HPO_DIR}/param_importances.png",
    params:
        variant=variant_json,
        override=lambda w: canonical_json(CFG["variants"].get(w.variant) or {}),
        # A function: a plain string would be formatted with wildcards, and a tied space
        # key such as model.dual_encoder.{vision,text}.dropout reads as one.
        hpo=lambda w: hpo_json(w.variant),
        # The study journal is not an output: a failed or killed search keeps it and resumes.
        storage=f"{HPO_DIR}/study.journal",
    threads: 8
    resources:
        mem_mb=grow(64000),
        runtime=grow(1440),
        gpu=1,
    log:
        f"{LOGS}/hpo/{{variant}}.log",
    benchmark:
        f"{LOGS}/hpo/{{variant}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
