"""Every variant of every shipped config (config/*.yaml) runs through `rule all`.

The configs run as shipped except for what cannot run here, which tests/toy_overlay.py
replaces (dataset -> generated stand-in, hub ids -> a tiny local CLIP, ImageNet weights
-> none, small sizes); the first test checks the overlay touched nothing else.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from toy_overlay import (
    BATCH_SIZE,
    EPOCHS,
    IMAGE_SIZE,
    SELECT_IMAGES,
    SUBSET_IMAGES,
    TINY_DUAL,
    TRAIN_IMAGES,
    VAL_IMAGES,
    changed_paths,
    touchable,
    toy_overlay,
    write_toy_sources,
)

from cliptune.config import load_config, resolve_variant, variant_names
from cliptune.data.captions import check_sources
from cliptune.data.dataset_formats import read_karpathy
from cliptune.models.weights import needed_weights

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "config").glob("*.yaml"))
FIGURES = ("text_to_image", "image_to_text", "similarity_heatmap")


@pytest.fixture(scope="module")
def toy_sources(tmp_path_factory) -> dict[str, Path]:
    return write_toy_sources(tmp_path_factory.mktemp("toy_sources"))


def shipped(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_both_reference_configs_are_covered():
    assert {"config.yaml", "demo.yaml"} <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("source", ["coco", "karpathy_coco", "flickr30k"])
def test_stand_in_sources_have_the_real_layout(source, toy_sources, tiny_clip_dir):
    cfg = shipped(REPO / "config" / "config.yaml")
    cfg["dataset"] = {"name": "stand_in", "source": source}
    ds = load_config(toy_overlay(cfg, toy_sources, tiny_clip_dir))["dataset"]
    check_sources(ds)  # the workflow's own start-up check: names any missing file
    if source == "coco":
        assert (Path(ds["root"]) / "annotations" / "instances_val2014.json").is_file()
        return
    table = read_karpathy(Path(ds["annotations"])).captions
    assert set(table["split"]) == {"train", "restval", "val", "test"}
    assert table["file_name"].nunique() == TRAIN_IMAGES + VAL_IMAGES
    assert all((Path(ds["root"]) / name).is_file() for name in table["file_name"].unique())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_overlay_changes_only_what_cannot_run_here(path, toy_sources, tiny_clip_dir):
    cfg = shipped(path)
    toy = toy_overlay(cfg, toy_sources, tiny_clip_dir)
    outside = sorted(p for p in changed_paths(cfg, toy) if not touchable(p))
    assert not outside, f"the overlay changed keys outside its list: {outside}"
    full = load_config(toy)
    assert full["dataset"]["download"] is False or full["dataset"]["source"] == "demo"
    for name in variant_names(full):
        v = resolve_variant(full, name)
        # Nothing left that the weights rule would have to download.
        assert needed_weights(v) == [], f"{path.name} variant {name}: {needed_weights(v)}"
        assert v["image_size"] == IMAGE_SIZE
        assert v["train"]["epochs"] <= EPOCHS and v["train"]["batch_size"] == BATCH_SIZE
        if v["model"]["kind"] == "dual_encoder":  # tiny towers over the tiny local vocabulary
            dual = v["model"]["dual_encoder"]
            assert dual["tokenizer"] == str(tiny_clip_dir), dual
            assert dual["vision"]["width"] == TINY_DUAL["vision"]["width"], dual
            assert dual["text"]["depth"] == TINY_DUAL["text"]["depth"], dual


def hpo_dir(cfg: dict) -> Path:
    return Path("results", load_config(cfg)["study"], "hpo", cfg["baseline"])


def run_all(workdir: Path, cfg: dict) -> subprocess.CompletedProcess:
    """`rule all`, plus the HPO search on the baseline when the config configures one."""
    targets = ["all"] + ([str(hpo_dir(cfg) / "best_overlay.yaml")] if "hpo" in cfg else [])
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
           "--cores", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def failed_logs(workdir: Path) -> str:
    """The tail of every job log that mentions an error, to make a failure readable."""
    tails = []
    for log in sorted((workdir / "logs").rglob("*.log")):
        text = log.read_text(errors="replace")
        if re.search(r"Error|Traceback", text):
            tails.append(f"--- {log.relative_to(workdir)}\n{text[-3000:]}")
    return "\n".join(tails)


def summary_rows(summary: str) -> set[str]:
    """First cells of the rows of the summary's Results table."""
    section = summary.split("## Results", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| ([A-Za-z0-9_-]+)\b", section, re.M)}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_variant_runs_through_rule_all(path, toy_sources, tiny_clip_dir, tmp_path):
    toy = toy_overlay(shipped(path), toy_sources, tiny_clip_dir)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(toy))
    start = time.perf_counter()
    proc = run_all(tmp_path, toy)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (f"{path.name}: rule all failed\n{proc.stderr[-6000:]}\n"
                                  f"{failed_logs(tmp_path)}")
    print(f"{path.name}: rule all in {seconds:.0f} s")  # recorded in benchmarks/results/shipped_configs.md
    full = load_config(toy)
    variants = variant_names(full)
    vdir = tmp_path / "results" / full["study"] / "variants"
    for name in variants:
        metrics = json.loads((vdir / name / "metrics.json").read_text())
        assert 0 <= metrics["i2t_R@1"] <= 100 and 0 <= metrics["t2i_R@1"] <= 100, name
        tasks = json.loads((vdir / name / "zero_shot.json").read_text())["task_order"]
        assert tasks, name
        for figure in (*FIGURES, *(f"zero_shot/{t}" for t in tasks)):
            png = vdir / name / "figures" / f"{figure}.png"
            assert png.stat().st_size > 5_000, f"{name}: {figure}.png missing or empty"
    assert (tmp_path / "results" / "queries_across_variants.png").stat().st_size > 5_000
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert summary_rows(summary) >= set(variants), summary
    if "hpo" in toy:
        check_hpo_outputs(tmp_path / hpo_dir(toy), full)
    if path.name == "coco20k_lora.yaml":
        check_three_lora_models(vdir, summary)


def check_three_lora_models(vdir: Path, summary: str) -> None:
    """Study C's three models: the full-COCO one trains on its own, larger training split
    (train.subset), all three are reported on the same images and in one table."""
    reports = {n: json.loads((vdir / n / "train_report.json").read_text())
               for n in ("pretrained", "lora_text", "lora_full")}
    assert reports["lora_text"]["config"]["train_split"] == "train"
    assert reports["lora_full"]["config"]["train_split"] == "train-all"
    # The stand-in's 24 train images less the 4-image holdout; the study's subset keeps 12.
    assert reports["lora_text"]["train_images"] == SUBSET_IMAGES
    assert reports["lora_full"]["train_images"] == TRAIN_IMAGES - SELECT_IMAGES
    assert {r["selected_on"]["images"] for r in reports.values()} == {SELECT_IMAGES}
    evaluated = [json.loads((vdir / n / "metrics.json").read_text())["reported_on"]
                 for n in reports]
    assert evaluated == [{"split": "val", "images": SUBSET_IMAGES}] * 3, evaluated
    table = summary.split("## Pretrained vs fine-tuned", 1)[1].split("\n## ", 1)[0]
    assert "| pretrained (`pretrained`) |" in table
    assert f"| fine-tuned (`lora_text`) | {SUBSET_IMAGES} images |" in table
    assert f"| fine-tuned (`lora_full`) | {TRAIN_IMAGES - SELECT_IMAGES} images |" in table


def check_hpo_outputs(out: Path, full: dict) -> None:
    """The search ran its trials over the configured space on the baseline, and the best
    overlay sets every searched key (tied keys each) to the best trial's value."""
    from cliptune.hpo_space import expand

    trials = (out / "trials.csv").read_text().strip().splitlines()
    assert len(trials) - 1 == full["hpo"]["trials"], trials
    best = json.loads((out / "best_params.json").read_text())
    assert set(best["params"]) == set(full["hpo"]["space"]), best
    overlay = yaml.safe_load((out / "best_overlay.yaml").read_text())
    variant = overlay["variants"][f"{full['baseline']}_hpo"]
    for key, value in best["params"].items():
        for path in expand(key):
            node = variant
            for part in path.split("."):
                node = node[part]
            assert node == value, (path, node, value)
