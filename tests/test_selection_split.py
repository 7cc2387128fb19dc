"""Model selection never sees the reported images, for every shipped config and source.

Checked where the splits are made (the captions stage's split specs), on
generated data: the selection split and the reported split share no image, and
no selection image is trained on.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cliptune.config.datasets import SELECT_SPLIT
from cliptune.config.load import ConfigError, load_config, resolve_variant
from cliptune.data.sources import captions as cap
from cliptune.demo.dataset import generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "config").glob("*.yaml"))
VARIANTS = {"baseline": {}}


def images_of(ds: dict, split: str) -> set[str]:
    """Images of the split's Parquet as the captions stage writes it (subset included)."""
    with tempfile.TemporaryDirectory() as tmp:
        df = cap.build_split_captions(cap.split_spec(ds, split), Path(tmp) / "c.parquet")
    return set(df["file_name"].astype(str))


def assert_honest(cfg: dict) -> tuple[str, set[str]]:
    """Selection split and every variant's reported split: disjoint, and never trained on."""
    ds = cfg["dataset"]
    select = ds["selection"]["split"]
    train, chosen = images_of(ds, "train"), images_of(ds, select)
    assert chosen and train and not chosen & train, "selection images are trained on"
    for name in cfg["variants"]:
        variant = resolve_variant(cfg, name)
        assert variant["select_split"] == select
        report = variant["eval"]["split"]
        assert report != select, f"{name} reports on its selection split {select!r}"
        assert not images_of(ds, report) & chosen, f"{name}: {report} overlaps {select}"
        assert not images_of(ds, report) & train
    return select, chosen


def flickr_results_csv(path: Path, n_images: int) -> Path:
    """A Flickr30k results.csv (the Kaggle copy's format): 5 captions per image."""
    lines = ["image_name| comment_number| comment"]
    lines += [f"{1000 + i}.jpg| {k}| A photo number {i} caption {k} ."
              for i in range(n_images) for k in range(5)]
    path.write_text("\n".join(lines) + "\n")
    return path


def shipped_here(path: Path, tmp_path: Path) -> dict:
    """A shipped config with only what cannot run here replaced: its images (generated,
    COCO 2014 layout or a Flickr30k results.csv, no download) and sizes; every split
    and selection setting kept."""
    raw = yaml.safe_load(path.read_text())
    ds = raw["dataset"]
    assert ds["source"] in ("coco", "demo", "flickr30k"), f"{path.name}: add its source"
    if ds["source"] == "flickr30k":  # results.csv: no split column, a seeded val/test holdout
        ds.update(root=str(tmp_path), download=False,
                  annotations=str(flickr_results_csv(tmp_path / "results.csv", 40)))
        ds["holdout"] = {**ds["holdout"], "val": 6, "test": 5}
        return raw
    root = tmp_path / "data"
    generate_demo_dataset(root, train_images=40, val_images=12, image_size=16)
    ds.update(root=str(root), download=False)
    ds["demo"] = {**ds.get("demo", {}), "train_images": 40, "val_images": 12}
    ds.setdefault("selection", {})["images"] = 6  # 5000 needs the real train2014
    return raw


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_select_apart_from_what_they_report(path, tmp_path):
    raw = shipped_here(path, tmp_path)
    shipped = yaml.safe_load(path.read_text())["dataset"].get("selection", {})
    cfg = load_config(raw)
    select, chosen = assert_honest(cfg)
    if raw["dataset"]["source"] == "flickr30k":  # a test split: select on val, report test
        assert select == "val" and len(chosen) == 6
        assert {resolve_variant(cfg, n)["eval"]["split"] for n in cfg["variants"]} == {"test"}
        ds = cfg["dataset"]
        assert len(images_of(ds, "test")) == 5 and len(images_of(ds, "train")) == 40 - 11
        return
    assert select == shipped.get("split", SELECT_SPLIT) == SELECT_SPLIT  # no test split
    assert len(chosen) == 6
    # The holdout plus the rest is the whole source train split: nothing lost or doubled.
    everything = set(json.loads((tmp_path / "data/annotations/captions_train2014.json")
                                .read_text())["images"][i]["file_name"] for i in range(40))
    assert {f"train2014/{n}" for n in everything} == chosen | images_of(cfg["dataset"], "train")


def test_holdout_is_seeded_and_independent_of_subsets(tmp_path):
    raw = shipped_here(REPO / "config" / "demo.yaml", tmp_path)
    first = images_of(load_config(raw)["dataset"], SELECT_SPLIT)
    assert first == images_of(load_config(raw)["dataset"], SELECT_SPLIT)  # deterministic
    raw["dataset"]["subset"] = {"images": {"train": 10}}
    cfg = load_config(raw)
    assert images_of(cfg["dataset"], SELECT_SPLIT) == first  # a train subset keeps it
    assert len(images_of(cfg["dataset"], "train")) == 10
    raw["dataset"]["selection"]["seed"] = 1
    assert images_of(load_config(raw)["dataset"], SELECT_SPLIT) != first


def test_demo_holdout_defaults_to_cocos_fraction():
    ds = load_config({"dataset": {"name": "d", "source": "demo"}, "variants": VARIANTS})
    assert ds["dataset"]["selection"] == {"split": SELECT_SPLIT, "images": 91, "seed": 0}
    assert ds["eval"]["split"] == "val"
    small = load_config({"dataset": {"name": "d", "source": "demo", "demo": {"train_images": 10}},
                         "variants": VARIANTS})
    assert small["dataset"]["selection"]["images"] == 2


# --------------------------------------------------------------------------- other sources


def karpathy_json(path: Path, n: int = 12) -> Path:
    images = [{"imgid": i, "filename": f"{i}.jpg", "split": s, "sentences": [
        {"raw": f"caption {i}", "sentid": i}]}
        for i, s in enumerate(["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2)]
    path.write_text(json.dumps({"images": images}))
    return path


def user_json(path: Path, splits: tuple[str, ...]) -> Path:
    data = {"splits": {s: [{"image_path": f"{s}/{i}.jpg", "caption": f"{s} {i}"}
                           for i in range(10)] for s in splits}}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("kind", ["flickr30k", "json_with_test", "json", "table"])
def test_every_source_selects_apart_from_its_report(kind, tmp_path):
    if kind == "flickr30k":
        ds = {"source": "flickr30k", "root": str(tmp_path),
              "annotations": str(karpathy_json(tmp_path / "k.json"))}
        expected = ("val", "test")
    elif kind.startswith("json"):
        splits = ("train", "val", "test") if kind == "json_with_test" else ("train", "val")
        ds = {"source": "json", "annotations": str(user_json(tmp_path / "u.json", splits)),
              "splits": {s: s for s in splits}, "selection": {"images": 3}}
        expected = ("val", "test") if kind == "json_with_test" else (SELECT_SPLIT, "val")
    else:  # a table without a split column: holdout val/test, default splits train/val
        path = tmp_path / "t.csv"
        pd.DataFrame({"image": [f"{i}.jpg" for i in range(20)],
                      "caption": [f"c {i}" for i in range(20)]}).to_csv(path, index=False)
        ds = {"source": "table", "annotations": str(path), "holdout": {"val": 3, "test": 3},
              "selection": {"images": 2}}
        expected = (SELECT_SPLIT, "val")
    cfg = load_config({"dataset": {"name": "x", **ds}, "variants": VARIANTS})
    assert (cfg["dataset"]["selection"]["split"], cfg["eval"]["split"]) == expected
    assert_honest(cfg)


def test_same_split_for_both_is_allowed_but_named(tmp_path):
    raw = shipped_here(REPO / "config" / "demo.yaml", tmp_path)
    raw["dataset"]["selection"] = {"split": "val"}
    cfg = load_config(raw)
    assert cfg["dataset"]["selection"] == {"split": "val", "images": None, "seed": 0}
    assert resolve_variant(cfg, "baseline")["eval"]["split"] == "val"
    with pytest.raises(AssertionError, match="reports on its selection split"):
        assert_honest(cfg)


@pytest.mark.parametrize("selection,message", [
    ({"split": "train"}, "dataset.selection.split = 'train' is not a split to select on"),
    ({"split": "nope"}, "use one of .*'val'.* or 'select'"),
    ({"images": 40}, "dataset.selection.images = 40 leaves no demo train images"),
])
def test_bad_selection_settings_name_the_fix(selection, message):
    raw = {"dataset": {"name": "d", "source": "demo", "demo": {"train_images": 40},
                       "selection": selection}, "variants": VARIANTS}
    with pytest.raises(ConfigError, match=message):
        load_config(copy.deepcopy(raw))


def test_holdout_larger_than_train_fails_at_the_captions_stage(tmp_path):
    ds = {"source": "json", "annotations": str(user_json(tmp_path / "u.json",
                                                         ("train", "val"))),
          "selection": {"images": 10}}
    cfg = load_config({"dataset": {"name": "x", **ds}, "variants": VARIANTS})
    with pytest.raises(ValueError, match=r"selection.images = 10 but the train split has only "
                                         r"10 images.*lower dataset.selection.images"):
        images_of(cfg["dataset"], SELECT_SPLIT)


def test_data_report_names_the_holdout(tmp_path):
    from cliptune.reporting.data_report import render_markdown, split_report

    raw = shipped_here(REPO / "config" / "demo.yaml", tmp_path)
    ds = load_config(raw)["dataset"]
    splits = {}
    for split in ("train", SELECT_SPLIT):
        src = tmp_path / f"{split}.source.json"
        caps = cap.build_split_captions(cap.split_spec(ds, split), tmp_path / f"{split}.pq", src)
        index = pd.DataFrame({"row": range(caps["image_id"].nunique()),
                              "image_id": sorted(caps["image_id"].unique()),
                              "file_name": "", "ok": True, "problem": ""})
        splits[split] = split_report(caps, index, json.loads(src.read_text()))
    md = render_markdown({"dataset": "d", "source": "demo", "splits": splits,
                          "images_in_two_splits": {}})
    assert "6 train images (seed 0) are held out of this split and select the model" in md
    assert "6 train images (seed 0) select the model here" in md


def job_inputs(proc, rule: str) -> list[str]:
    """Input lines of every planned job of ``rule`` in a dry run's output."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout + proc.stderr)
    return [re.search(r"input: (.*)", b).group(1) for b in blocks
            if re.match(rf"(?:local)?rule {rule}:", b.strip()) and "input:" in b]


def test_train_and_hpo_read_the_selection_split_and_evaluate_the_reported_one(tmp_path, repo):
    from conftest import TINY, snakemake, write_config

    write_config(tmp_path, TINY)
    base = "results/tiny/variants/baseline"
    proc = snakemake(tmp_path, repo, "-n", f"{base}/metrics.json",
                     "results/tiny/hpo/baseline/best_overlay.yaml")
    for rule in ("train", "hpo"):
        (inputs,) = job_inputs(proc, rule)
        assert "captions/select-" in inputs and "images/select-32px-" in inputs
        assert "captions/val-" not in inputs and "val-32px" not in inputs
    (inputs,) = job_inputs(proc, "evaluate")
    assert "captions/val-" in inputs and "select" not in inputs


def test_hpo_with_a_test_split_selects_on_val_and_never_reads_test(tmp_path, repo):
    """Flickr30k (Study A's dataset, fetched by the kaggle rule, so nothing need exist
    here): trials train on train, are scored on val, and test is never an input."""
    from conftest import TINY, snakemake, write_config

    cfg = {**TINY, "dataset": {"name": "fk", "source": "flickr30k", "download": "kaggle"}}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, repo, "-n", "results/fk/hpo/baseline/best_overlay.yaml")
    (inputs,) = job_inputs(proc, "hpo")
    assert "captions/train-" in inputs and "captions/val-" in inputs
    assert "test" not in inputs
