rule train:
    input:
        unpack(lambda w: pair_inputs(w.variant, "train", "train")),
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
    output:
        model=f"{VARIANT_DIR}/model.safetensors",
        history=f"{VARIANT_DIR}/history.csv",
        report=f"{VARIANT_DIR}/train_report.json",
        curves=f"{VARIANT_DIR}/loss_curves.png",
    params:
        variant=variant_json,
        # Resume state lives outside the declared outputs: a failed job's cleanup keeps it.
        state=f"{RESULTS}/checkpoints/{{variant}}/state.pt",
    threads: 8
    resources:
        gpu=1,
    log:
        f"{LOGS}/train/{{variant}}.log",
    conda:
        ENV
    script:
        "../scripts/train.py"
