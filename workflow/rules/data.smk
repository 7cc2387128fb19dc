if CFG["dataset"]["source"] == "demo":

    rule demo_dataset:
        output:
            expand(
                "{root}/annotations/captions_{folder}.json",
                root=ROOT,
                folder=sorted(set(SPLITS.values())),
            ),
        params:
            root=ROOT,
            demo=canonical_json(CFG["dataset"]["demo"]),
        log:
            f"{LOGS}/demo_dataset.log",
        conda:
            ENV
        script:
            "../scripts/demo_dataset.py"


rule captions:
    input:
        lambda w: str(annotation_file(ROOT, SPLITS[w.split])),
    output:
        f"{RESULTS}/captions/{{split}}.parquet",
    params:
        root=ROOT,
        folder=lambda w: SPLITS[w.split],
    log:
        f"{LOGS}/captions/{{split}}.log",
    conda:
        ENV
    script:
        "../scripts/captions.py"


rule image_cache:
    input:
        captions=f"{RESULTS}/captions/{{split}}.parquet",
    output:
        array=f"{RESULTS}/images/{{split}}_{{size}}.npy",
        index=f"{RESULTS}/images/{{split}}_{{size}}.index.parquet",
    params:
        root=ROOT,
        max_bad_fraction=CFG["dataset"]["max_bad_image_fraction"],
    threads: CFG["image_cache"]["workers"]
    log:
        f"{LOGS}/image_cache/{{split}}_{{size}}.log",
    conda:
        ENV
    script:
        "../scripts/image_cache.py"
