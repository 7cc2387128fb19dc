import re

from cliptune.data.caches.keys import image_params, split_spec
from cliptune.data.sources.captions import captions_inputs
from cliptune.data.fetch.coco import (
    archive_path,
    archive_specs,
    marker_path,
    needed_archives,
    placement_hint,
)

if CFG["dataset"]["source"] == "demo":

    rule demo_dataset:
        output:
            # Captions, and the scenes (the zero-shot ground truth) beside them.
            expand(
                "{root}/annotations/{kind}_{folder}.json",
                root=ROOT,
                kind=["captions", "scenes"],
                folder=sorted(set(CFG["dataset"]["splits"].values())),
            ),
        params:
            root=lambda w, output: str(Path(output[0]).parents[1]),
            demo=canonical_json(CFG["dataset"]["demo"]),
        resources:
            mem_mb=4000,
            runtime=30,
        log:
            f"{CACHE_LOGS}/demo_dataset/{DS}.log",
        benchmark:
            f"{CACHE_LOGS}/demo_dataset/{DS}.benchmark.tsv",
        conda:
            ENV
        script:
            "../scripts/run_stage.py"


DATASET = CFG["dataset"]
# Data report and samples grid read the image cache at the baseline's size,
# which training needs anyway, so they never decode images a second time.
REPORT_SIZE = RESOLVED[CFG["baseline"]]["image_size"]
DATA_REPORT = f"{RESULTS}/data_report.json"
SAMPLES_PNG = f"{RESULTS}/samples.png"

if DATASET["download"] == "kaggle":

    # kagglehub needs the network: like the COCO download, it runs on the head node.
    localrules:
        kaggle_flickr30k,

    # results.csv is written last, so its presence means the image link is in place too;
    # both placed by hand (see the error of a failed download), the rule never runs.
    rule kaggle_flickr30k:
        output:
            annotations=DATASET["annotations"],
        params:
            images=ROOT,
        resources:
            mem_mb=2000,
            runtime=600,
        log:
            f"{CACHE_LOGS}/download/kaggle_flickr30k.log",
        benchmark:
            f"{CACHE_LOGS}/download/kaggle_flickr30k.benchmark.tsv",
        conda:
            ENV
        script:
            "../scripts/run_stage.py"


if DATASET["download"] is True:
    COCO_ARCHIVES = needed_archives(DATASET)
    COCO_SPECS = archive_specs(DATASET)

    # Compute nodes are often offline: downloads and extraction run on the head node.
    localrules:
        coco_archive,
        coco_extract,

    rule coco_archive:
        output:
            (
                str(archive_path(ROOT, "{archive}"))
                if DATASET["keep_archives"]
                else temp(str(archive_path(ROOT, "{archive}")))
            ),
        wildcard_constraints:
            archive="|".join(re.escape(a) for a in COCO_ARCHIVES),
        params:
            spec=lambda w: canonical_json(COCO_SPECS[w.archive]),
            hint=placement_hint(ROOT, COCO_ARCHIVES, COCO_SPECS),
        resources:
            mem_mb=2000,
            runtime=600,
        log:
            f"{CACHE_LOGS}/download/{{archive}}.log",
        benchmark:
            f"{CACHE_LOGS}/download/{{archive}}.benchmark.tsv",
        conda:
            ENV
        script:
            "../scripts/run_stage.py"

    # The completion marker, written after the last member is in place, is what
    # captions depend on: an interrupted extraction has none and is redone.
    rule coco_extract:
        input:
            str(archive_path(ROOT, "{archive}")),
        output:
            str(marker_path(ROOT, "{archive}")),
        wildcard_constraints:
            archive="|".join(re.escape(a) for a in COCO_ARCHIVES),
        resources:
            mem_mb=4000,
            runtime=240,
        log:
            f"{CACHE_LOGS}/download/{{archive}}.extract.log",
        benchmark:
            f"{CACHE_LOGS}/download/{{archive}}.extract.benchmark.tsv",
        conda:
            ENV
        script:
            "../scripts/run_stage.py"


rule captions:
    input:
        lambda w: captions_inputs(DATASET, CAPTION_KEYS[w.ckey]),
    output:
        parquet=f"{CACHE}/captions/{{ckey}}.parquet",
        source=f"{CACHE}/captions/{{ckey}}.source.json",
    params:
        spec=lambda w: canonical_json(split_spec(DATASET, CAPTION_KEYS[w.ckey])),
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        f"{CACHE_LOGS}/captions/{{ckey}}.log",
    benchmark:
        f"{CACHE_LOGS}/captions/{{ckey}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule image_cache:
    input:
        captions=lambda w: captions_paths(DATASET, IMAGE_KEYS[w.ikey][0])["captions"],
    output:
        array=f"{CACHE}/images/{{ikey}}.npy",
        index=f"{CACHE}/images/{{ikey}}.index.parquet",
    params:
        # Everything here is in the image key: a shared cache never sees two values.
        size=lambda w: IMAGE_KEYS[w.ikey][1],
        **image_params(DATASET),
    threads: CFG["image_cache"]["workers"]
    resources:
        mem_mb=16000,
        runtime=240,
    log:
        f"{CACHE_LOGS}/images/{{ikey}}.log",
    benchmark:
        f"{CACHE_LOGS}/images/{{ikey}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule data_report:
    input:
        captions=[captions_paths(DATASET, split)["captions"] for split in SPLITS],
        sources=[captions_paths(DATASET, split)["source"] for split in SPLITS],
        indexes=[image_paths(DATASET, split, REPORT_SIZE)["index"] for split in SPLITS],
    output:
        json=DATA_REPORT,
        md=f"{RESULTS}/data_report.md",
    params:
        splits=list(SPLITS),
        dataset=DS,
        size=REPORT_SIZE,
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        f"{LOGS}/data_report.log",
    benchmark:
        f"{LOGS}/data_report.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule samples:
    input:
        captions=captions_paths(DATASET, "train")["captions"],
        **image_paths(DATASET, "train", REPORT_SIZE),
    output:
        SAMPLES_PNG,
    params:
        n=DATASET["samples"]["count"],
        seed=DATASET["samples"]["seed"],
        title=f"{DS}: random train image-caption pairs ({REPORT_SIZE} px cache)",
    resources:
        mem_mb=4000,
        runtime=15,
    log:
        f"{LOGS}/samples.log",
    benchmark:
        f"{LOGS}/samples.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
