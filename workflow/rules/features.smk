# Frozen-backbone features: a variant whose ResNet trunk is wholly frozen (BatchNorm
# statistics too) and whose images are not augmented trains on cached trunk outputs.
# Keyed by backbone, weights (or seed for random init) and mode, never by a training
# flag, so variants that share a frozen trunk share one cache.
import re

from cliptune.data.feature_keys import feature_key, feature_paths, feature_spec

FEATURES = {}
FEATURE_WEIGHTS = {}  # feature key -> weight markers (the trunk's torchvision file)
for _name, _variant in RESOLVED.items():
    _spec = feature_spec(_variant)
    if _spec is not None:
        FEATURES[feature_key(_spec)] = _spec
        FEATURE_WEIGHTS[feature_key(_spec)] = VARIANT_WEIGHTS[_name]


# Feature cache files of one split for a variant ({} when it trains on pixels).
feature_inputs = lambda variant, split, prefix: feature_paths(
    RESULTS, RESOLVED[variant], split, prefix
)


rule backbone_features:
    input:
        array=f"{RESULTS}/images/{{split}}_{{size}}.npy",
        index=f"{RESULTS}/images/{{split}}_{{size}}.index.parquet",
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: FEATURE_WEIGHTS[w.fkey],
    output:
        array=f"{RESULTS}/features/{{fkey}}/{{split}}_{{size}}.npy",
        meta=f"{RESULTS}/features/{{fkey}}/{{split}}_{{size}}.json",
    wildcard_constraints:
        # (?!) matches nothing: no frozen variant, no feature jobs.
        fkey="|".join(re.escape(k) for k in FEATURES) or "(?!)",
    params:
        spec=lambda w: canonical_json(FEATURES[w.fkey]),
        device="auto",
    threads: 2
    resources:
        mem_mb=32000,
        runtime=120,
        gpu=1,
    log:
        f"{LOGS}/features/{{fkey}}/{{split}}_{{size}}.log",
    benchmark:
        f"{LOGS}/features/{{fkey}}/{{split}}_{{size}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
