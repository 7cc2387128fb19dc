rule text_embeddings:
    input:
        captions=f"{RESULTS}/captions/{{split}}.parquet",
    output:
        f"{RESULTS}/text/{{encoder}}/{{split}}.safetensors",
    params:
        encoder=lambda w: canonical_json(ENCODERS[w.encoder]),
        device="auto",
    threads: 2
    resources:
        gpu=1,
    log:
        f"{LOGS}/text/{{encoder}}/{{split}}.log",
    conda:
        ENV
    script:
        "../scripts/text_embeddings.py"
