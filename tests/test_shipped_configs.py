"""Every shipped config (config/*.yaml) at toy scale.

The configs run as shipped except for what cannot run here, which tests/toy_overlay.py
replaces (dataset -> generated stand-in, hub ids -> a tiny local CLIP, ImageNet weights
-> none, small sizes); the first tests check the overlay touched nothing else. Then:

* every variant of every config builds and trains on its own inputs, in-process;
* every config's DAG plans, and each of its rules ran in the suite's finished toy run;
* (`make test-all`) every config's own `rule all`, end to end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import check_hpo_outputs, planned_jobs, snakemake_batch
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

from cliptune.config.load import (
    encoder_key,
    load_config,
    resolve_run,
    resolve_variant,
    variant_names,
)
from cliptune.data.caches.feature_keys import feature_paths, feature_spec
from cliptune.data.caches.features import build_feature_cache, load_split
from cliptune.data.caches.images import build_image_cache
from cliptune.data.caches.text import build_text_cache
from cliptune.data.sources.captions import build_split_captions, check_sources, split_spec
from cliptune.data.sources.formats import read_karpathy
from cliptune.demo.dataset import generate_demo_dataset
from cliptune.models.weights import needed_weights
from cliptune.training.trainer import train_variant

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


# (config file, variant) for every variant of every shipped config, primary runs.
SHIPPED_VARIANTS = [(path, name) for path in SHIPPED
                    for name in variant_names(load_config(shipped(path)))]


class ToyStudy:
    """One shipped config at toy scale, its inputs built in-process by the functions its
    rules call (captions, image cache, text cache, trunk features) and kept for the
    other variants of the config: a variant then trains as its `train` job would."""

    def __init__(self, full: dict, workdir: Path):
        self.full, self.results = full, workdir / "results"
        ds = full["dataset"]
        if ds["source"] == "demo":  # the demo_dataset rule, into the study's own folder
            ds["root"] = str(workdir / ds["root"])
            generate_demo_dataset(Path(ds["root"]), **ds["demo"])
        check_sources(ds)

    def inputs(self, v: dict, split: str, prefix: str) -> dict[str, str]:
        """The named inputs of one split as the `train` rule passes them (pair_inputs,
        feature_inputs), each built on first use."""
        ds, r = self.full["dataset"], self.results
        caps = r / "captions" / f"{split}.parquet"
        if not caps.exists():
            caps.parent.mkdir(parents=True, exist_ok=True)
            build_split_captions(split_spec(ds, split), caps, caps.with_suffix(".source.json"))
        size = v["image_size"]
        array, index = r / "images" / f"{split}_{size}.npy", r / "images" / f"{split}_{size}.index.parquet"
        if not array.exists():
            array.parent.mkdir(parents=True, exist_ok=True)
            build_image_cache(caps, Path(ds["root"]), size, array, index, workers=1,
                              max_bad_fraction=ds["max_bad_image_fraction"])
        enc = v["text_encoder"]
        text = r / "text" / encoder_key(enc) / f"{split}.safetensors"
        if not text.exists():
            text.parent.mkdir(parents=True, exist_ok=True)
            build_text_cache(caps, text, enc["model"], enc["pooling"], enc["max_length"],
                             enc["batch_size"], device="cpu")
        inputs = {f"{prefix}_captions": str(caps), f"{prefix}_text": str(text),
                  f"{prefix}_array": str(array), f"{prefix}_index": str(index)}
        features = feature_paths(str(r), v, split, prefix)
        if features and not Path(features[f"{prefix}_features"]).exists():
            Path(features[f"{prefix}_features"]).parent.mkdir(parents=True, exist_ok=True)
            build_feature_cache(array, index, feature_spec(v), Path(features[f"{prefix}_features"]),
                                Path(features[f"{prefix}_features_meta"]), device="cpu",
                                show_progress=False)
        return {**inputs, **features}


@pytest.fixture(scope="module")
def toy_studies(toy_sources, tiny_clip_dir, tmp_path_factory):
    studies: dict[str, ToyStudy] = {}

    def study(path: Path) -> ToyStudy:
        if path.name not in studies:
            full = load_config(toy_overlay(shipped(path), toy_sources, tiny_clip_dir))
            studies[path.name] = ToyStudy(full, tmp_path_factory.mktemp(path.stem))
        return studies[path.name]

    return study


@pytest.mark.parametrize(("path", "name"), SHIPPED_VARIANTS,
                         ids=[f"{p.name}-{n}" for p, n in SHIPPED_VARIANTS])
def test_every_variant_builds_and_trains(path, name, toy_studies, tmp_path):
    """Each variant of each shipped config, resolved as the workflow resolves it, builds
    and trains its (toy) epochs on its own inputs through train_variant, the train job's
    function; the end-to-end runs of the rules are in tests/test_workflow.py."""
    study = toy_studies(path)
    v = resolve_run(study.full, name)
    select = study.full["dataset"]["selection"]["split"]
    train = load_split(study.inputs(v, "train", "train"), "train")
    val = load_split(study.inputs(v, select, "val"), "val")
    out = tmp_path / "variant"
    result = train_variant(v, train, val, out, tmp_path / "state.pt", show_progress=False)
    epochs = v["train"]["epochs"]
    assert len(result["history"]) == epochs
    assert (out / "model.safetensors").stat().st_size > 0
    steps = pd.read_csv(out / "steps.csv")
    assert (len(steps) > 0) == (epochs > 0), steps
    report = json.loads((out / "train_report.json").read_text())
    assert report["config"]["name"] == name


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


def test_every_rule_of_every_shipped_config_runs_end_to_end(toy_run, toy_sources, tiny_clip_dir,
                                                           tmp_path):
    """Each shipped config's toy DAG (`rule all`, plus its HPO search when it has one)
    plans, and each of its rules is one the suite's finished toy run (conftest.TOY_RUN)
    executed through Snakemake."""
    requests = []
    for path in SHIPPED:
        toy = toy_overlay(shipped(path), toy_sources, tiny_clip_dir)
        work = tmp_path / path.stem
        work.mkdir()
        (work / "config.yaml").write_text(yaml.safe_dump(toy))
        targets = ["all"] + ([str(hpo_dir(toy) / "best_overlay.yaml")] if "hpo" in toy else [])
        requests.append({"args": ["-n", *targets, "-s", REPO / "Snakefile", "--directory", work,
                                  "--configfile", work / "config.yaml", "--cores", "2"],
                         "cwd": work})
    for path, proc in zip(SHIPPED, snakemake_batch(requests), strict=True):
        assert proc.returncode == 0, f"{path.name}: dry run failed\n{proc.stderr[-6000:]}"
        rules = set(planned_jobs(proc))
        assert "train" in rules, f"{path.name}: {rules}"
        missing = rules - toy_run.rules_run
        assert not missing, (f"{path.name}: rules {sorted(missing)} run in no end-to-end test; "
                             "give conftest.TOY_RUN what makes them run")


# The slower lane (`make test-all`): every shipped config's own toy `rule all`.
@pytest.mark.shipped_rule_all
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
