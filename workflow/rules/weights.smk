# Pretrained weights (hub checkpoints, torchvision files) for every configured variant,
# fetched and verified once into resources/weights/ on the submit host: compute nodes
# are often offline. Model-loading jobs take the markers as inputs and run with
# HF_HUB_OFFLINE=1 against that folder (cliptune.models.weights.use_local_weights).
import re


localrules:
    weights,


rule weights:
    output:
        f"{WEIGHTS_DIR}/{{wkey}}.json",
    wildcard_constraints:
        # (?!) matches nothing: a config that needs no downloads has no weights jobs.
        wkey="|".join(re.escape(k) for k in WEIGHT_SPECS) or "(?!)",
    params:
        spec=lambda w: canonical_json(WEIGHT_SPECS[w.wkey]),
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        f"{CACHE_LOGS}/weights/{{wkey}}.log",
    benchmark:
        f"{CACHE_LOGS}/weights/{{wkey}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
