"""Cache keys: the shared caches are named by what determines their content, so studies
over the same data share them and any change to that data gets a cache of its own."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cliptune.config.datasets import split_names
from cliptune.config.load import load_config
from cliptune.data.caches.keys import (
    captions_key,
    captions_paths,
    image_key,
    image_paths,
    text_key,
    text_path,
)

REPO = Path(__file__).resolve().parents[1]
COCO = {"dataset": {"name": "coco2014", "source": "coco", "root": "resources/coco2014",
                    "download": True},
        "variants": {"baseline": {}}}


def shipped(name: str) -> dict:
    return load_config(yaml.safe_load((REPO / "config" / name).read_text()))


def keys(cfg: dict, size: int = 224) -> dict[str, str]:
    ds = load_config(cfg)["dataset"]
    return {split: image_key(ds, split, size) for split in split_names(ds)}


def changed(**dataset) -> dict:
    cfg = copy.deepcopy(COCO)
    cfg["dataset"].update(dataset)
    return cfg


def test_the_coco_studies_share_the_splits_they_have_in_common():
    lab, hard, lora = (shipped(n)["dataset"] for n in
                       ("config.yaml", "coco_hard_negatives.yaml", "coco20k_lora.yaml"))
    for split in ("train", "select"):  # all of train2014 but the same 5,000-image holdout
        assert image_key(lab, split, 224) == image_key(hard, split, 224)
        assert captions_key(lab, split) == captions_key(hard, split)
    assert image_key(lab, "val", 224) != image_key(hard, "val", 224)  # 40,504 vs 5,000
    assert image_key(hard, "val", 224) == image_key(lora, "val", 224)  # the same seeded 5,000
    for split in ("train", "select"):  # 18,000 + a 2,000-image holdout
        assert image_key(lora, split, 224) != image_key(lab, split, 224)
    # One text cache: the same encoder settings, whatever else the variants change.
    assert {text_key(v) for v in (shipped(n)["text_encoder"] for n in (
        "config.yaml", "coco_hard_negatives.yaml", "coco20k_lora.yaml"))} == {
        "openai-clip-vit-base-patch32_len77_bs512"}


def test_the_study_and_its_variants_are_not_in_any_key():
    base = keys(COCO)
    other = {**copy.deepcopy(COCO), "study": "elsewhere",
             "variants": {"baseline": {"train": {"lr": 1.0}}, "x": {"image_size": 64}},
             "train": {"epochs": 1}}
    other["dataset"]["name"] = "renamed"  # a COCO folder is identified by its root
    assert keys(other) == base


@pytest.mark.parametrize(("dataset", "splits"), [
    ({"root": "elsewhere/coco"}, {"train", "select", "val"}),
    ({"max_bad_image_fraction": 0.01}, {"train", "select", "val"}),
    ({"splits": {"train": "val2014", "val": "train2014"}}, {"train", "select", "val"}),
    # The holdout is carved out of train: val is untouched.
    ({"selection": {"images": 4000}}, {"train", "select"}),
    ({"selection": {"seed": 1}}, {"train", "select"}),
])
def test_what_decides_the_images_changes_their_keys(dataset, splits):
    base, other = keys(COCO), keys(changed(**dataset))
    assert set(base) == set(other)
    assert {s for s in base if base[s] != other[s]} == splits, dataset


def test_a_subset_changes_only_the_split_it_subsets():
    base = keys(COCO)
    other = keys(changed(subset={"images": {"val": 100}, "seed": 0}))
    assert other["val"] != base["val"]
    assert other["train"] == base["train"] and other["select"] == base["select"]
    again = keys(changed(subset={"images": {"val": 100}, "seed": 1}))
    assert again["val"] != other["val"]


def test_image_size_and_demo_settings_are_in_the_key():
    ds = load_config(COCO)["dataset"]
    assert image_key(ds, "train", 224) != image_key(ds, "train", 64)
    assert captions_key(ds, "train") in captions_paths(ds, "train")["captions"]
    demo = {"dataset": {"name": "demo", "source": "demo"}, "variants": {"baseline": {}}}
    more = copy.deepcopy(demo)
    more["dataset"]["demo"] = {"train_images": 200}
    assert keys(demo, 64)["train"] != keys(more, 64)["train"]


def test_text_key_holds_every_parameter_of_the_embedding_job():
    te = {"model": "openai/clip-vit-base-patch32", "pooling": "auto", "max_length": 77,
          "batch_size": 512}
    variants = [te, {**te, "batch_size": 256}, {**te, "max_length": 32},
                {**te, "pooling": "mean"}, {**te, "model": "offline-minilm"}]
    assert len({text_key(v) for v in variants}) == len(variants)
    ds = load_config(COCO)["dataset"]
    path = text_path(ds, "val", te)
    assert path == f"results/cache/text/{text_key(te)}/{captions_key(ds, 'val')}.safetensors"


def test_keys_are_readable_file_names():
    ds = load_config(COCO)["dataset"]
    for split in split_names(ds):
        assert re.fullmatch(rf"{split}-[0-9a-f]{{10}}", captions_key(ds, split))
        assert re.fullmatch(rf"{split}-224px-[0-9a-f]{{10}}", image_key(ds, split, 224))
        assert image_paths(ds, split, 224)["array"].startswith("results/cache/images/")


def test_keys_are_computed_without_torch_or_pandas():
    code = ("import sys, cliptune.data.caches.keys; "
            "print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
