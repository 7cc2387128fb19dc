rule text_embeddings:
    input:
        captions=f"{CACHE}/captions/{{ckey}}.parquet",
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: encoder_markers(ENCODERS[w.encoder]["model"]),
    output:
        f"{CACHE}/text/{{encoder}}/{{ckey}}.safetensors",
    params:
        encoder=lambda w: canonical_json(ENCODERS[w.encoder]),
        device="auto",
    threads: 2
    resources:
        mem_mb=32000,
        runtime=120,
        gpu=1,
    log:
        f"{CACHE_LOGS}/text/{{encoder}}/{{ckey}}.log",
    benchmark:
        f"{CACHE_LOGS}/text/{{encoder}}/{{ckey}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
