rule train:
    input:
        unpack(lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["train_split"], "train")),
        # The selection split (dataset.selection), never the reported eval.split.
        unpack(lambda w: pair_inputs(w.variant, SELECT, "val")),
        # Cached trunk features, only for fully frozen, un-augmented variants (features.smk).
        unpack(lambda w: feature_inputs(w.variant, RESOLVED[w.variant]["train_split"], "train")),
        unpack(lambda w: feature_inputs(w.variant, SELECT, "val")),
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
    output:
        model=f"{VARIANT_DIR}/model.safetensors",
        history=f"{VARIANT_DIR}/history.csv",
        steps=f"{VARIANT_DIR}/steps.csv",
        report=f"{VARIANT_DIR}/train_report.json",
    params:
        variant=train_json,
        # Resume state lives outside the declared outputs: a failed job's cleanup keeps it.
        state=f"{RESULTS}/checkpoints/{{variant}}/state.pt",
    threads: 8
    resources:
        mem_mb=grow(64000),
        runtime=grow(720),
        # One GPU per torchrun worker: gpu = devices x nodes (SLURM: --gpus, a job total);
        # multi-node runs ask per node instead (gres gpu:devices -> --gres) with gpu 0.
        # A CPU variant (train.device: cpu) asks for none. See cliptune.jobs.gpus.gpu_request.
        gpu=lambda w: TRAIN_GPUS[w.variant]["gpu"],
        gres=lambda w: TRAIN_GPUS[w.variant]["gres"],
        nodes=lambda w: RESOLVED[w.variant]["train"]["nodes"],
    log:
        f"{LOGS}/train/{{variant}}.log",
    benchmark:
        f"{LOGS}/train/{{variant}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
