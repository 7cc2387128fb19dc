# Search a folder of your own images with a trained variant (README "Search your own
# photos"): snakemake search --config search='{images: ~/Pictures}'. Not part of `all`.
# search_embed depends on the folder and the model only, so new queries never re-embed;
# its `folder` param (a fingerprint of every file's name, size and mtime) reruns it
# exactly when the folder changes; the job then embeds only new or changed files
# (cliptune.evaluation.search keeps the last run's embeddings beside the outputs).
from cliptune.data.sources.image_folder import folder_state, searched_folder
from cliptune.models.towers import text_tower_gpus

SEARCH = CFG["search"]
SEARCH_DIR = os.path.join(RESULTS, "search", "{variant}")


rule search_embed:
    input:
        model=f"{VARIANT_DIR}/model.safetensors",
        # Pretrained weights this job loads, fetched on the submit host (weights.smk).
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
        # Read for its width only: the embedding dimension the model was built with.
        text=lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "v")["v_text"],
    output:
        embeddings=f"{SEARCH_DIR}/image_embeddings.safetensors",
        manifest=f"{SEARCH_DIR}/image_manifest.csv",
        skipped=f"{SEARCH_DIR}/skipped.txt",
    params:
        # Resolved only when a search job is planned: other targets never need the folder.
        images=lambda w: searched_folder(SEARCH["images"]),
        folder=lambda w: folder_state(SEARCH["images"]),
        # The trained model's settings; the eval section (ks, split) changes no embedding.
        variant=train_json,
        batch_size=lambda w: RESOLVED[w.variant]["eval"]["batch_size"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        # The image tower runs where evaluate runs it.
        gpu=lambda w: int(RESOLVED[w.variant]["train"]["device"] != "cpu"),
    log:
        f"{LOGS}/search/{{variant}}/embed.log",
    benchmark:
        f"{LOGS}/search/{{variant}}/embed.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule search_text_to_image:
    input:
        embeddings=f"{SEARCH_DIR}/image_embeddings.safetensors",
        manifest=f"{SEARCH_DIR}/image_manifest.csv",
        # Queries go through the variant's own text tower, or the frozen encoder.
        model=f"{VARIANT_DIR}/model.safetensors",
        weights=lambda w: VARIANT_WEIGHTS[w.variant],
    output:
        png=report(
            f"{SEARCH_DIR}/text_to_image.png",
            caption="../report/search_text_to_image.rst",
            category="5. Search your own images",
            labels={"variant": "{variant}", "figure": "text query → your images"},
        ),
        csv=f"{SEARCH_DIR}/text_to_image.csv",
    params:
        folder=lambda w: searched_folder(SEARCH["images"]),
        queries=SEARCH["queries"],
        top_k=SEARCH["top_k"],
        variant=variant_json,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=15,
        gpu=lambda w: text_tower_gpus(RESOLVED[w.variant]),
    log:
        f"{LOGS}/search/{{variant}}/text_to_image.log",
    benchmark:
        f"{LOGS}/search/{{variant}}/text_to_image.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule search_image_to_text:
    input:
        embeddings=f"{SEARCH_DIR}/image_embeddings.safetensors",
        manifest=f"{SEARCH_DIR}/image_manifest.csv",
        # The evaluation split's captions as evaluate embedded them (never re-encoded).
        eval_embeddings=f"{VARIANT_DIR}/embeddings.safetensors",
        captions=lambda w: pair_inputs(w.variant, RESOLVED[w.variant]["eval"]["split"], "v")[
            "v_captions"
        ],
    output:
        png=report(
            f"{SEARCH_DIR}/image_to_text.png",
            caption="../report/search_image_to_text.rst",
            category="5. Search your own images",
            labels={"variant": "{variant}", "figure": "your images → captions"},
        ),
        csv=f"{SEARCH_DIR}/image_to_text.csv",
    params:
        folder=lambda w: searched_folder(SEARCH["images"]),
        top_k=SEARCH["top_k"],
        figure_images=SEARCH["figure_images"],
        variant=variant_json,
    resources:
        mem_mb=8000,
        runtime=15,
    log:
        f"{LOGS}/search/{{variant}}/image_to_text.log",
    benchmark:
        f"{LOGS}/search/{{variant}}/image_to_text.benchmark.tsv",
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule search:
    input:
        expand(
            f"{SEARCH_DIR}/{{file}}",
            variant=SEARCH["variant"],
            file=["text_to_image.png", "image_to_text.png", "skipped.txt"],
        ),


# A top-k over cached embeddings and a plot: seconds, on the submitting node.
localrules:
    search,
    search_image_to_text,
