"""Cache keys: where the shared caches live, addressed by what determines their content.

Captions, decoded images, caption embeddings and trunk features depend on the data
(source, root, split definition with its subset and selection holdout), the image size
and the encoder, never on which study asked for them. So they live under
``results/cache/<kind>/`` named by a key of exactly those inputs, and studies over the
same data share them (the three COCO 2014 studies decode train2014 once, not three
times). A key is ``<split>-...-<hash>``: readable, and a hash of the canonical JSON of
everything the producing job takes as a parameter, so a cache never sees two values of a
parameter (Snakemake would rerun it at every switch of study).

Torch- and pandas-free: the Snakefile computes every key while it parses.
"""

from __future__ import annotations

from collections.abc import Mapping

from cliptune.config.datasets import SELECT_SPLIT, base_split, carves_selection, split_subset
from cliptune.config.load import encoder_key, short_hash

CACHE = "results/cache"
# Logs of the shared jobs (caches, downloads, the demo generator, weights): no study owns them.
CACHE_LOGS = "logs/cache"


def source_split(dataset: Mapping, split: str) -> str:
    """The ``dataset.splits`` entry a split reads: the selection holdout and a variant's own
    training split (train.subset) read train's."""
    return "train" if split == SELECT_SPLIT and carves_selection(dataset) else base_split(split)


def split_labels(dataset: Mapping, split: str) -> list[str]:
    """Source split labels that make up cliptune split ``split``.

    Karpathy's ``restval`` (the 30k COCO val2014 images outside val/test)
    joins whichever split reads ``train`` when ``use_restval`` is on.
    """
    label = dataset["splits"][source_split(dataset, split)]
    labels = [label]
    if dataset["source"] == "karpathy_coco" and label == "train" and dataset["use_restval"]:
        labels.append("restval")
    return labels


def split_spec(dataset: Mapping, split: str) -> dict:
    """Everything the captions stage of one split depends on (becomes a rule param and,
    hashed, the captions key).

    A variant's own training split (``train-all``, ``train-{N}-random{seed}``: train.subset)
    reads train with its own subset; its rows are labelled ``train``, and its subset draws
    as train's would, so ``{images: N}`` equal to the study's picks the same images.
    """
    base = base_split(split)
    spec = {
        "source": dataset["source"],
        "root": str(dataset["root"]),
        "split": base,
        "labels": split_labels(dataset, split),
        # Mode and seed only matter to a split that is subset: others must not rerun.
        "subset": split_subset(dataset, split),
    }
    if dataset["source"] not in ("demo", "coco"):
        spec["annotations"] = dataset["annotations"]
        spec["holdout"] = dataset["holdout"]
    if dataset["source"] == "karpathy_coco":
        spec["use_restval"] = dataset["use_restval"]
    if dataset["source"] == "table":
        spec["columns"] = dataset["columns"]
    if dataset["source"] == "demo":  # the generator's settings decide what is in the root
        spec["demo"] = dict(dataset["demo"])
    if source_split(dataset, split) == "train" and carves_selection(dataset):
        # train and select both read the source's train images and split them the same way.
        sel = dataset["selection"]
        spec["selection"] = {"images": sel["images"], "seed": sel["seed"],
                             "keep": "holdout" if base == SELECT_SPLIT else "rest"}
    return spec


def captions_key(dataset: Mapping, split: str) -> str:
    """Key of one split's caption table: the split its rows are labelled with and a hash of
    :func:`split_spec` (a variant's ``train-all`` equal to the study's train is one cache)."""
    spec = split_spec(dataset, split)
    return f"{spec['split']}-{short_hash(spec, 10)}"


def image_params(dataset: Mapping) -> dict:
    """The image cache job's parameters besides its captions and size."""
    return {"root": str(dataset["root"]),
            "max_bad_fraction": dataset["max_bad_image_fraction"]}


def image_key(dataset: Mapping, split: str, size: int) -> str:
    """Key of one split's decoded images at ``size`` px: the captions key (which holds the
    root, split definition and subset) plus the size and the image job's parameters."""
    captions = split_spec(dataset, split)
    spec = {"captions": captions, "size": int(size), **image_params(dataset)}
    return f"{captions['split']}-{int(size)}px-{short_hash(spec, 10)}"


def text_key(text_encoder: Mapping) -> str:
    """Folder of an encoder's caption embeddings: :func:`cliptune.config.load.encoder_key` (what
    changes the embeddings) plus the batch size, a parameter of the embedding job."""
    return f"{encoder_key(text_encoder)}_bs{text_encoder['batch_size']}"


def captions_paths(dataset: Mapping, split: str) -> dict[str, str]:
    base = f"{CACHE}/captions/{captions_key(dataset, split)}"
    return {"captions": f"{base}.parquet", "source": f"{base}.source.json"}


def image_paths(dataset: Mapping, split: str, size: int) -> dict[str, str]:
    base = f"{CACHE}/images/{image_key(dataset, split, size)}"
    return {"array": f"{base}.npy", "index": f"{base}.index.parquet"}


def text_path(dataset: Mapping, split: str, text_encoder: Mapping) -> str:
    return f"{CACHE}/text/{text_key(text_encoder)}/{captions_key(dataset, split)}.safetensors"
