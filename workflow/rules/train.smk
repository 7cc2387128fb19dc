rule train:
    input:
        unpack(lambda w: pair_inputs(w.variant, "train", "train")),
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
        # Cached trunk features, only for fully frozen, un-augmented variants (features.smk).
        unpack(lambda w: feature_inputs(w.variant, "train", "train")),
        unpack(lambda w: feature_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "val")),
    output:
        model=f"{VARIANT_DIR}/model.safetensors",
        history=f"{VARIANT_DIR}/history.csv",
        steps=f"{VARIANT_DIR}/steps.csv",
        report=f"{VARIANT_DIR}/train_report.json",
        curves=report(
            f"{VARIANT_DIR}/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="5. Training curves",
            labels={"variant": "{variant}"},
        ),
    params:
        variant=train_json,
        # Resume state lives outside the declared outputs: a failed job's cleanup keeps it.
        state=f"{RESULTS}/checkpoints/{{variant}}/state.pt",
    threads: 8
    resources:
        # One GPU per torchrun worker (train.devices); under SLURM also the node count.
        gpu=lambda w: RESOLVED[w.variant]["train"]["devices"],
        nodes=lambda w: RESOLVED[w.variant]["train"]["nodes"],
    log:
        f"{LOGS}/train/{{variant}}.log",
    conda:
        ENV
    script:
        "../scripts/train.py"
