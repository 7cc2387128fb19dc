rule evaluate:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        model=f"{VARIANT_DIR}/model.safetensors",
    output:
        metrics=f"{VARIANT_DIR}/metrics.json",
        recall=f"{VARIANT_DIR}/recall.csv",
        embeddings=f"{VARIANT_DIR}/embeddings.safetensors",
    params:
        variant=variant_json,
    threads: 8
    resources:
        gpu=1,
    log:
        f"{LOGS}/evaluate/{{variant}}.log",
    conda:
        ENV
    script:
        "../scripts/evaluate.py"
