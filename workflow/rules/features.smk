# Frozen-backbone features: a variant whose ResNet trunk is wholly frozen (BatchNorm
# statistics too) and whose images are not augmented trains on cached trunk outputs.
# Keyed by backbone, weights (or seed for random init) and mode, never by a training
# flag, so variants that share a frozen trunk share one cache.
import re

from cliptune.data.caches.feature_keys import feature_key, feature_paths, feature_spec

FEATURES = {}
FEATURE_WEIGHTS = {}  # feature key -> weight markers (the trunk's torchvision file)
for _name, _variant in RESOLVED.items():
    _spec = feature_spec(_variant)
    if _spec is not None:
        FEATURES[feature_key(_spec)] = _spec
        FEATURE_WEIGHTS[feature_key(_spec)] = VARIANT_WEIGHTS[_name]


# Feature cache files of one split for a variant ({} when it trains on pixels), named by
# trunk and by the image cache they are computed from (shared between studies too).
feature_inputs = lambda variant, split, prefix: feature_paths(
    f"{CACHE}/features",
    RESOLVED[variant],
    image_key(CFG["dataset"], split, RESOLVED[variant]["image_size"]),
    prefix,
)


rule backbone_features:
    input:
        array=f"{CACHE}/images/{{ikey}}.npy",
        index=f"{CACHE}/images/{{ikey}}.index.parquet",
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: FEATURE_WEIGHTS[w.fkey],
    output:
        array=f"{CACHE}/features/{{fkey}}/{{ikey}}.npy",
        meta=f"{CACHE}/features/{{fkey}}/{{ikey}}.json",
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
        f"{CACHE_LOGS}/features/{{fkey}}/{{ikey}}.log",
    benchmark:
        f"{CACHE_LOGS}/features/{{fkey}}/{{ikey}}.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"
