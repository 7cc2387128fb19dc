"""train.subset: a variant's own training images beside the study's dataset.subset (Study
C's 20k and full-COCO models in one config), its split name and its captions spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cliptune.config.load import ConfigError, load_config, resolve_variant
from cliptune.data.sources.captions import split_spec


@pytest.fixture
def lora(repo):
    return yaml.safe_load((repo / "config" / "coco20k_lora.yaml").read_text())


def test_study_c_holds_the_20k_and_the_full_coco_model(lora):
    cfg = load_config(lora)
    tuned, full = resolve_variant(cfg, "lora_text"), resolve_variant(cfg, "lora_full")
    assert resolve_variant(cfg, "pretrained")["train_split"] == "train"
    assert tuned["train_split"] == "train" and tuned["train"]["subset"] is None
    assert full["train_split"] == "train-all"
    assert full["train"]["subset"] == {"images": None, "mode": "random", "seed": 0}
    # The spec's full model: batch 32, lr 2e-5, 10 epochs, the 20k model's adapters.
    assert (full["train"]["batch_size"], full["train"]["lr"], full["train"]["epochs"]) == (
        32, 2e-5, 10)
    assert full["model"]["clip"]["lora"] == tuned["model"]["clip"]["lora"]
    # Selected and reported on the same images as the others.
    assert full["select_split"] == tuned["select_split"] == "select"
    assert full["eval"]["split"] == tuned["eval"]["split"] == "val"


def test_split_names_encode_the_subset_and_the_study_s_own_is_train(lora):
    own = {"images": 18000}
    lora["variants"].update(
        same={"train": {"subset": own}},  # equal to dataset.subset's train entry
        fewer={"train": {"subset": {"images": 500}}},
        seeded={"train": {"subset": {"images": 500, "seed": 3}}},
        first={"train": {"subset": {"images": 500, "mode": "first", "seed": 9}}})
    cfg = load_config(lora)
    names = {n: resolve_variant(cfg, n)["train_split"] for n in cfg["variants"]}
    assert names == {"pretrained": "train", "lora_text": "train", "lora_full": "train-all",
                     "same": "train", "fewer": "train-500-random0",
                     "seeded": "train-500-random3", "first": "train-500-first"}


def test_a_variant_split_reads_train_with_its_own_subset_and_the_same_holdout(lora):
    ds = load_config(lora)["dataset"]
    train, full = split_spec(ds, "train"), split_spec(ds, "train-all")
    assert full["subset"] == {"images": None}
    assert train["subset"] == {"images": 18000, "mode": "random", "seed": 0}
    # Everything else (source, labels, the selection holdout it leaves out) is train's.
    assert {k: v for k, v in full.items() if k != "subset"} == {
        k: v for k, v in train.items() if k != "subset"}
    assert full["split"] == "train" and full["selection"]["keep"] == "rest"
    assert split_spec(ds, "train-500-random3")["subset"] == {
        "images": 500, "mode": "random", "seed": 3}
    # The study's own splits are unchanged by the variant splits.
    assert split_spec(ds, "val")["subset"] == {"images": 5000, "mode": "random", "seed": 0}
    assert split_spec(ds, "select")["subset"] == {"images": None}


@pytest.mark.parametrize(("subset", "message"), [
    ({}, "images"),
    ({"images": 0}, "train.subset"),
    ({"images": 10, "mode": "all"}, "random"),
    ({"imgs": 10}, "imgs"),
    ({"images": "all"}, "train.subset"),
])
def test_bad_train_subsets_are_rejected_naming_the_key(lora, subset, message):
    lora["variants"]["lora_full"]["train"]["subset"] = subset
    with pytest.raises(ConfigError, match=message):
        load_config(lora)


def test_a_dataset_split_may_not_take_a_variant_split_name(lora):
    lora["dataset"]["splits"] = {"train": "train2014", "val": "val2014",
                                 "train-all": "val2014"}
    lora["dataset"]["subset"]["images"] = {"train": 18000}
    with pytest.raises(ConfigError, match="train-all"):
        load_config(lora)


def test_the_full_coco_model_trains_on_its_own_caches_in_the_dag(tmp_path, tiny_clip_dir):
    """Dry run of Study C at toy scale: lora_full's train job reads the caption, text and
    image caches of its own split (train-all), lora_text's those of the study's train."""
    import re

    from conftest import snakemake_batch
    from toy_overlay import toy_overlay, write_toy_sources

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config" / "coco20k_lora.yaml").read_text())
    toy = toy_overlay(cfg, write_toy_sources(tmp_path / "sources"), tiny_clip_dir)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(toy))
    proc = snakemake_batch([{"args": ["-n", "all", "-s", str(repo / "Snakefile"), "--directory",
                                      str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
                                      "--cores", "1"], "cwd": tmp_path}])[0]
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    jobs = re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout)
    train = {re.search(r"variant=(\w+)", j).group(1): j for j in jobs
             if j.startswith("rule train:")}
    assert set(train) == {"pretrained", "lora_text", "lora_full"}

    def inputs(job: str) -> set[str]:
        return set(re.search(r"input: (.*)", job).group(1).split(", "))

    own = inputs(train["lora_full"]) - inputs(train["lora_text"])
    assert own, train["lora_full"]
    # Its own caption, image and text caches: content-keyed files of the whole train
    # split (the key holds the subset), none shared with the 20k model.
    assert {Path(p).parts[2] for p in own} >= {"captions", "images", "text"}, own
    assert all(Path(p).parts[:2] == ("results", "cache") for p in own), own
    assert inputs(train["pretrained"]) == inputs(train["lora_text"])
