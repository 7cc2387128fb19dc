"""What the report says about a variant follows its resolved config: unit tests of
cliptune.reporting.variant_description, and the summary of every shipped config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cliptune.config.load import load_config, resolve_run, run_names
from cliptune.reporting import variant_description as vd
from cliptune.reporting.summary import build_summary
from cliptune.training.train_log import HISTORY_COLUMNS

SHIPPED = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))


def _resolve(repo: Path, name: str) -> dict[str, dict]:
    cfg = load_config(yaml.safe_load((repo / "config" / name).read_text()))
    return {variant: resolve_run(cfg, variant) for variant in run_names(cfg)}


def _clip(**clip) -> dict:
    cfg = load_config({"dataset": {"name": "d", "source": "demo"},
                       "text_encoder": {"model": "some/clip"},
                       "model": {"kind": "clip", "clip": {"model": "some/clip", **clip}},
                       "train": {"temperature": None},
                       "variants": {"v": {}}, "baseline": "v"})
    return resolve_run(cfg, "v")


def test_lora_on_one_tower_freezes_the_other():
    v = _clip(lora={"vision": True, "r": 4, "alpha": 8}, lock_text=True)
    d = vd.describe(v)
    assert d.kind == vd.CLIP_LORA
    assert "LoRA on the vision tower (r 4, alpha 8, q_proj, v_proj)" in d.model
    assert d.image_tower == "frozen, LoRA adapters train"
    # Frozen text tower from the cached checkpoint: tokenized when the cache was built.
    assert d.text_tower == "frozen (cached caption embeddings)"
    assert d.tokenizer == "`some/clip`'s (text cache)"
    assert d.temperature == "the checkpoint's, learned"


def test_unlocked_clip_with_frozen_projections():
    d = vd.describe(_clip(lock_image=False, lock_text=False, freeze_projections=True))
    assert d.kind == vd.CLIP_FINE_TUNED
    assert d.image_tower == d.text_tower == "trains, projection frozen"
    assert d.tokenizer == "`some/clip`'s"  # its own tower reads the captions
    assert vd.resnet_columns(_clip()) == ["n/a", "n/a", "n/a"]


def test_losses_state_their_settings():
    v = _clip(lock_image=False)
    v["train"] |= {"loss": "triplet", "triplet": {"margin": 0.3, "mining": "semihard"}}
    assert vd.loss(v) == "bidirectional triplet hinge, margin 0.3, semihard mining"
    assert vd.temperature(v).startswith("n/a")
    v["train"] |= {"loss": "hard_negative", "temperature": 0.05, "learnable_temperature": False,
                   "hard_negatives": {"k": 5, "strategy": "random", "refresh_epochs": 2,
                                      "hardest_weight": 0.0, "margin": 0.2}}
    assert vd.loss(v) == ("hard-negative InfoNCE with k = 5 random negatives per anchor from "
                          "an index rebuilt every 2 epochs")  # weight 0: no hinge
    assert vd.temperature(v) == "0.05, fixed"
    v["train"]["epochs"] = 0
    assert vd.loss(v).startswith("n/a") and vd.model_kind(v) == vd.CLIP_AS_IS


def test_trunk_head_and_dual_encoder():
    cfg = load_config({"dataset": {"name": "d", "source": "demo"},
                       "text_encoder": {"model": "offline-minilm"},
                       "model": {"backbone": "resnet18", "trainable_stages": 2},
                       "variants": {"r": {}, "de": {"model": {"kind": "dual_encoder"}}},
                       "baseline": "r"})
    r, de = resolve_run(cfg, "r"), resolve_run(cfg, "de")
    assert vd.image_tower(r) == "last 2 trunk stages, pooling and head train"
    assert vd.text_tower(r) == "frozen `offline-minilm` (cached caption embeddings)"
    assert vd.resnet_columns(r) == ["resnet18", "avg", "none"]
    # dual_encoder.tokenizer null: the text_encoder's vocabulary
    assert vd.tokenizer(de) == "`offline-minilm`'s"
    assert vd.image_tower(de) == vd.text_tower(de) == "trains from scratch"
    de["model"]["dual_encoder"]["tokenizer"] = "clip-bpe"
    assert vd.tokenizer(de).startswith("CLIP byte-level BPE")


def test_importing_it_loads_no_torch():
    code = ("import sys; import cliptune.reporting.variant_description; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _fake_run(root: Path, name: str, variant: dict, recall: float) -> dict:
    """The artifacts the summary reads, for one resolved run (train_report as train writes
    it: the resolved config without its eval section)."""
    d = root / name
    d.mkdir(parents=True)
    m = {f"{dr}_{key}": recall * k ** 0.5 for dr in ("i2t", "t2i") for k in (1, 5, 10)
         for key in (f"R@{k}", f"mAP@{k}", f"NDCG@{k}")}
    m |= {f"{dr}_{key}": 2.0 for dr in ("i2t", "t2i") for key in ("medr", "mrr", "mAP", "NDCG")}
    m |= {"n_images": 50, "n_texts": 250, "split": "val", "temperature": 0.05,
          "reported_on": {"split": "val", "images": 50}}
    m["rsum"] = sum(m[f"{dr}_R@{k}"] for dr in ("i2t", "t2i") for k in (1, 5, 10))
    (d / "metrics.json").write_text(json.dumps(m))
    epochs = variant["train"]["epochs"]
    (d / "train_report.json").write_text(json.dumps({
        "variant": name, "config": {k: c for k, c in variant.items() if k != "eval"}, "device": "cpu", "torch": "2.x",
        "hardware": {"kind": "cpu", "cpu": "x86_64", "cpu_cores": 2, "torch_threads": 2},
        "epochs_run": min(epochs, 2), "wall_seconds": 10.0, "images_per_s": 5.0,
        "parameters": 10, "trainable_parameters": 5, "train_images": 100,
        "train_captions": 500, "selected_on": {"split": "select", "images": 20,
                                               "monitor": "val_loss"}}))
    n = min(epochs, 2)
    pd.DataFrame({"epoch": range(1, n + 1), "train_loss": [2.0] * n,
                  "train_loss_in_batch": [2.0] * n, "val_loss": [2.5] * n,
                  "temperature": [0.07] * n, "skipped_steps": 0, "restarts": 0},
                 columns=HISTORY_COLUMNS).to_csv(d / "history.csv", index=False)
    (d / "zero_shot.json").write_text(json.dumps({"task_order": [], "tasks": {}}))
    return {"metrics": d / "metrics.json", "train_report": d / "train_report.json",
            "history": d / "history.csv", "zero_shot": d / "zero_shot.json", "figures": {}}


def _table(text: str, heading: str, first_column: str) -> dict[str, dict[str, str]]:
    """Rows of the first markdown table after ``heading`` whose header starts with
    ``first_column``, keyed by that column (backticks stripped)."""
    lines = text.split(f"## {heading}", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return rows


@pytest.mark.parametrize("config_name", SHIPPED)
def test_summary_describes_every_variant_of_every_shipped_config(tmp_path, repo, config_name):
    runs = _resolve(repo, config_name)
    raw = load_config(yaml.safe_load((repo / "config" / config_name).read_text()))
    root = tmp_path / "results" / "s" / "variants"
    paths = {n: _fake_run(root, n, v, 10.0 + i) for i, (n, v) in enumerate(runs.items())}
    text = build_summary(paths, raw["baseline"],
                         {"study": "s", "name": "s", "source": raw["dataset"]["source"]},
                         {"anchors_comparable": False}, tmp_path / "results" / "summary.md")
    models = _table(text, "Variants and hyperparameters", "variant")
    assert set(models) == set(runs)
    losses_used = set()
    for name, v in runs.items():
        row, mcfg, tcfg = models[name], v["model"], v["train"]
        trained = tcfg["epochs"] > 0
        # model kind and where the text side comes from
        if mcfg["kind"] == "resnet":
            assert mcfg["backbone"] in row["model"] and f"`{mcfg['pooling']}`" in row["model"]
            assert row["text tower"].startswith("frozen") and \
                v["text_encoder"]["model"] in row["text tower"]
        elif mcfg["kind"] == "clip":
            assert mcfg["clip"]["model"] in row["model"] and "trunk" not in row["model"]
            for tower, col in (("vision", "image tower"), ("text", "text tower")):
                lora = mcfg["clip"]["lora"][tower]
                assert ("LoRA" in row[col]) == (trained and lora)
                lock = mcfg["clip"]["lock_image" if tower == "vision" else "lock_text"]
                if trained:
                    assert row[col].startswith("frozen") == (lock or any(
                        mcfg["clip"]["lora"][t] for t in ("vision", "text")))
        else:
            assert "from random init" in row["model"]
            assert f"width {mcfg['dual_encoder']['vision']['width']}" in row["model"]
            if trained:
                assert row["image tower"] == row["text tower"] == "trains from scratch"
        if not trained:
            assert row["image tower"] == "not trained" and row["loss"].startswith("n/a")
            continue
        # the loss actually used, with its settings
        loss = tcfg["loss"]
        losses_used.add(loss)
        assert row["loss"].startswith(vd.LOSS_NAMES[loss])
        if loss == "hard_negative":
            hn = tcfg["hard_negatives"]
            assert f"k = {hn['k']} {hn['strategy']}" in row["loss"]
            assert f"margin {hn['margin']:g}" in row["loss"]
        if loss == "triplet":
            assert f"margin {tcfg['triplet']['margin']:g}, {tcfg['triplet']['mining']}" \
                in row["loss"]
            assert row["temperature"].startswith("n/a")
        else:
            assert row["temperature"].endswith(
                "learned" if tcfg["learnable_temperature"] else "fixed")
            start = tcfg["temperature"]
            assert row["temperature"].startswith("the checkpoint's" if start is None
                                                 else f"{start:g}")
    # trunk + head columns of the hyperparameter table: real values or n/a, never a default
    section = text.split("## Variants and hyperparameters", 1)[1].split("\n## ", 1)[0]
    hyper_lines = section.split("| variant | backbone |", 1)[1].splitlines()[2:]
    for line in hyper_lines:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        v = runs[cells[0]]
        assert cells[1:4] == (
            [v["model"]["backbone"], v["model"]["pooling"], v["model"]["head"]["norm"]]
            if v["model"]["kind"] == "resnet" else ["n/a"] * 3)
    # the loss explanation covers the losses used and no other
    words = text.split("## The training loss in plain words", 1)[1].split("\n## ", 1)[0]
    assert ("symmetric InfoNCE loss" in words) == bool(losses_used & {"infonce", "hard_negative"})
    assert ("**hard-negative** loss" in words) == ("hard_negative" in losses_used)
    assert ("**triplet** loss" in words) == ("triplet" in losses_used)
    assert "Text tower (frozen)" not in text


def _render(repo: Path, template: str, **context) -> str:
    """A report template rendered as `snakemake --report` does (Jinja, then docutils)."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    text = (repo / "workflow" / "report" / template).read_text()
    rst = Environment(trim_blocks=True, lstrip_blocks=True).from_string(text).render(**context)
    return publish_parts(rst, writer="html")["html_body"]


def test_html_report_intro_and_captions_follow_each_variant(repo):
    from types import SimpleNamespace as NS

    runs = _resolve(repo, "coco_hard_negatives.yaml")
    lines = [vd.describe(v).sentence for v in runs.values()]
    summary = NS(job=NS(rule=NS(name="summary"), params=NS(descriptions=lines)))
    other = NS(job=NS(rule=NS(name="aggregate"), params=NS()))
    html = _render(repo, "workflow.rst", snakemake=NS(config={"dataset": {"name": "hn"}}),
                   categories={"1. Overview": {"": [other, summary]}}, files={})
    items = html.split("<li>")[1:]
    assert len(items) == len(runs)
    for item, (name, v) in zip(items, runs.items(), strict=True):
        assert f"<tt class=\"docutils literal\">{name}</tt>" in item
        assert vd.loss(v).split(" ")[0] in item
    assert "ResNet" not in html and "frozen text tower" not in html
    triplet = runs["triplet"]
    caption = _render(repo, "loss_curves.rst", snakemake=NS(
        wildcards=NS(variant="triplet"),
        params=NS(loss=vd.loss(triplet), temperature_used=vd.uses_temperature(triplet))))
    assert "bidirectional triplet hinge, margin 0.5, hardest mining" in caption
    assert "which this loss does not use" in caption and "InfoNCE" not in caption
