"""results/summary.md from synthetic run artifacts, and the report rules' wiring."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cliptune.config.load import UNTRAINED, load_config, resolve_variant
from cliptune.reporting.summary import build_summary, convergence
from cliptune.training.train_log import HISTORY_COLUMNS

REPORT = {"anchors_comparable": False}
# The shared sections of the synthetic runs; each variant's own settings go over them.
# The summary's identity of the run: study, dataset name, source.
DEMO = {"study": "demo", "name": "demo", "source": "demo"}
BASE = {"dataset": {"name": "demo", "source": "demo"}, "image_size": 64,
        "text_encoder": {"model": "offline-minilm", "max_length": 64},
        "model": {"backbone": "resnet18", "pooling": "avg"},
        "train": {"lr": 1e-3, "weight_decay": 0.05, "temperature": 0.07,
                  "learnable_temperature": True}}


def resolved(name: str, override: dict, base: dict = BASE) -> dict:
    """The resolved config of variant ``name``: ``override`` over the shared ``base``
    (``untrained``: the baseline ``override`` at zero epochs)."""
    own = "baseline" if name == UNTRAINED else name
    return resolve_variant(load_config({**base, "variants": {own: override},
                                        "baseline": own}), name)


def make_variant(root: Path, name: str, recall: float, val_losses: list[float],
                 batch_size: int = 32, norm: str = "none", select: str = "select",
                 monitor: str = "val_loss", val_recalls: list[float] | None = None,
                 config: dict | None = None) -> dict:
    d = root / name
    d.mkdir(parents=True)
    m = {f"{dr}_R@{k}": min(100.0, recall * k ** 0.5) for dr in ("i2t", "t2i") for k in (1, 5, 10)}
    m |= {"i2t_medr": 3.0, "t2i_medr": 4.0, "i2t_mrr": 0.4, "t2i_mrr": 0.3,
          "i2t_mAP@10": 20.0, "t2i_mAP@10": math.nan, "i2t_NDCG@10": math.nan,
          "t2i_NDCG@10": math.nan, "i2t_mAP": math.nan, "t2i_mAP": math.nan,
          "i2t_NDCG": math.nan, "t2i_NDCG": math.nan, "n_images": 300, "n_texts": 1500,
          "split": "val", "temperature": 0.05, "reported_on": {"split": "val", "images": 300}}
    m["rsum"] = sum(m[f"{dr}_R@{k}"] for dr in ("i2t", "t2i") for k in (1, 5, 10))
    (d / "metrics.json").write_text(json.dumps(m))
    cfg = config or resolved(name, {"model": {"head": {"norm": norm}},
                                    "train": {"batch_size": batch_size,
                                              "epochs": len(val_losses)}})
    (d / "train_report.json").write_text(json.dumps({
        "variant": name, "config": cfg, "device": "cpu (x86_64, 2 cores)", "torch": "2.x",
        "hardware": {"kind": "cpu", "cpu": "x86_64", "cpu_cores": 2, "torch_threads": 2},
        "epochs_run": len(val_losses), "wall_seconds": 125.0 * len(val_losses),
        "images_per_s": 40.0 + recall, "parameters": 1000, "trainable_parameters": 900,
        "train_images": 2000, "train_captions": 10000,
        "selected_on": {"split": select, "images": 120, "monitor": monitor}}))
    n = len(val_losses)
    hist = pd.DataFrame({"epoch": range(1, n + 1), "train_loss": [v - 0.3 for v in val_losses],
                         "train_loss_in_batch": [v - 0.3 for v in val_losses],
                         "val_loss": val_losses, "lr": [1e-3] * n,
                         "val_recall": val_recalls or [10.0 * (i + 1) for i in range(n)],
                         "temperature": [0.07 - 0.002 * i for i in range(n)],
                         "skipped_steps": 0, "restarts": 0}, columns=HISTORY_COLUMNS)
    hist.to_csv(d / "history.csv", index=False)
    (d / "zero_shot.json").write_text(json.dumps({"task_order": ["shapes", "mood"], "tasks": {
        "shapes": {"classes": ["circle", "square"], "labels": "demo",
                   "accuracy": {"top1_accuracy": recall, "top5_accuracy": 90.0, "mAP": 40.0,
                                "chance_top1_accuracy": 30.0, "n_images": 300},
                   "accuracy_over": "2 classes; labels from the demo generator"},
        "mood": {"classes": ["a calm scene", "a busy scene"], "labels": "none",
                 "accuracy": None, "accuracy_over": None}}}))
    figs = {f: d / "figures" / f"{f}.png" for f in ("text_to_image", "image_to_text",
                                                  "similarity_heatmap", "zero_shot/shapes",
                                                  "zero_shot/mood")}
    return {"metrics": d / "metrics.json", "train_report": d / "train_report.json",
            "history": d / "history.csv", "zero_shot": d / "zero_shot.json", "figures": figs}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "results" / "demo" / "variants"
    return tmp_path, {
        "baseline": make_variant(root, "baseline", 20.0, [3.0, 2.5, 2.2, 2.19]),
        "bn_head": make_variant(root, "bn_head", 25.0, [3.0, 2.4, 2.0, 2.3], norm="batchnorm"),
        "untrained": make_variant(root, "untrained", 1.0, []),
    }


def test_the_heading_names_the_study_and_its_dataset(runs):
    tmp, variants = runs
    out = tmp / "results" / "summary.md"
    assert build_summary(variants, "baseline", DEMO, REPORT, out).startswith(
        "# cliptune results: demo\n")
    second = {**DEMO, "study": "lr_sweep"}
    assert build_summary(variants, "baseline", second, REPORT, out).startswith(
        "# cliptune results: lr_sweep (dataset demo)\n")


def test_summary_has_table_observations_and_relative_figures(runs):
    tmp, variants = runs
    out = tmp / "results" / "summary.md"
    text = build_summary(variants, "baseline", DEMO, REPORT, out,
                         tmp / "results" / "ablation_bar.png",
                         tmp / "results" / "loss_overlay.png")
    # the results table, with computed rsum
    rsum_bn = 2 * sum(min(100.0, 25.0 * k ** 0.5) for k in (1, 5, 10))
    assert re.search(r"\| bn_head \*\*\(best\)\*\* \| 25\.0 \| 55\.9 \| 79\.1 \|", text)
    assert f"{rsum_bn:.1f}" in text
    # observations computed from the runs
    assert "Best variant by rsum: **bn_head**" in text
    assert "validation loss (val_loss, which picks the saved epoch) bottomed out at epoch 3" \
        in text  # bn_head overfits
    # where selection happened, in the first paragraph, apart from the reported split
    first = text.split("\n\n")[1]
    assert "selected (the saved epoch by `train.monitor`" in first
    assert "split `select` (120 images)" in first and "reported on split `val` (300" in first
    assert "share no image" in first and "**" not in first
    assert "`baseline`: converged" in text  # 2.2 -> 2.19 is under 1%
    assert "Overfitting gap" in text and "largest for" in text
    assert "Training moved the baseline from rsum" in text
    # hyperparameters, hardware, anchors, loss explanation
    assert "`model.head.norm=batchnorm`" in text
    assert "CPU x86_64, 2 threads of 2 cores" in text and "Total training time" in text
    assert "**not comparable**" in text and "50.1" in text
    assert "**negatives**" in text
    assert "`baseline`, `bn_head`: 31 negatives per anchor (batch size 32)" in text
    # figures linked relative to results/
    assert "](ablation_bar.png)" in text and "](loss_overlay.png)" in text
    assert "](demo/variants/bn_head/figures/text_to_image.png)" in text


def test_summary_zero_shot_section_per_task(runs):
    """One table per labelled task, "no labels" (never a number) for the other; each task's
    figure of the best variant and the queries-across-variants figure are linked."""
    tmp, variants = runs
    text = build_summary(variants, "baseline", DEMO, REPORT,
                         tmp / "results" / "summary.md",
                         queries_png=tmp / "results" / "queries_across_variants.png")
    section = text.split("## Zero-shot classification", 1)[1].split("\n## ", 1)[0]
    shapes, mood = section.split("### Task `shapes` (2 classes)")[1].split(
        "### Task `mood` (2 classes)")
    assert "| bn_head | 25.0 | 30.0 | 90.0 | 40.0 | 300 |" in shapes
    assert "Accuracy over 2 classes; labels from the demo generator." in shapes
    assert "No labels" in mood and "|" not in mood
    assert "Zero-shot top-1 accuracy on task `shapes` is highest for `bn_head` (25.0%)" in text
    assert "task `mood`" not in text.split("## Observations")[1].split("## Results")[0]
    assert "](demo/variants/bn_head/figures/zero_shot/shapes.png)" in text
    assert "](demo/variants/bn_head/figures/zero_shot/mood.png)" in text
    assert "](queries_across_variants.png)" in text


def write_comparison(tmp: Path, excludes_zero: bool):
    """ablation.csv and paired_vs_baseline.csv as aggregate writes them (the parts read)."""
    from cliptune.reporting.comparison import Comparison

    table = pd.DataFrame({"variant": ["baseline", "bn_head", "untrained"],
                          "rsum": [150.0, 160.0, 10.0], "rsum_lo": [140.0, 150.0, 5.0],
                          "rsum_hi": [160.0, 170.0, 15.0], "n_seeds": [1, 3, 1],
                          "rsum_seed_mean": [150.0, 158.0, 10.0],
                          "rsum_seed_std": [float("nan"), 4.0, float("nan")]})
    lo = 2.0 if excludes_zero else -3.0
    paired = pd.DataFrame([{"variant": v, "baseline": "baseline", "metric": m, "diff": d,
                            "lo": lo if v == "bn_head" else -150.0,
                            "hi": 18.0 if v == "bn_head" else -130.0,
                            "excludes_zero": excludes_zero if v == "bn_head" else True,
                            "confidence": 0.95, "resamples": 1000}
                           for v, d in (("bn_head", 10.0), ("untrained", -140.0))
                           for m in ("rsum", "i2t_R@1", "t2i_R@1")])
    table.to_csv(tmp / "ablation.csv", index=False)
    paired.to_csv(tmp / "paired.csv", index=False)
    return Comparison.load(tmp / "ablation.csv", tmp / "paired.csv", "baseline")


@pytest.mark.parametrize("excludes_zero", [True, False])
def test_observations_call_a_difference_only_when_the_interval_does(runs, excludes_zero):
    tmp, variants = runs
    comp = write_comparison(tmp, excludes_zero)
    text = build_summary(variants, "baseline", DEMO, REPORT,
                         tmp / "results" / "summary.md", comparison=comp)
    assert "## Compared with the baseline" in text
    assert "| bn_head | 160.0 [150.0, 170.0] | 158.0 ± 4.0 (3 seeds) |" in text
    assert "Training randomness (rsum over seeds, mean ± std): `bn_head`" in text
    observations = text.split("## Observations")[1].split("## Results")[0]
    if excludes_zero:
        assert "paired 95% interval [+2.0, +18.0]: better than the baseline)" in observations
        assert "Better than the baseline (paired rsum interval excludes zero): `bn_head`" in text
    else:
        assert "better than the baseline" not in observations.lower()
        assert "not distinguishable from the baseline at this size" in observations
    # untrained is the reference row: in the table, not among the verdict observations.
    assert "`untrained` (" not in observations
    # ...but what training bought carries its (sign-flipped) paired interval.
    assert "(paired 95% interval [+130.0, +150.0]: a real gain))." in observations


def test_anchors_beside_results_only_when_comparable(runs):
    tmp, variants = runs
    out = tmp / "results" / "summary.md"
    text = build_summary(variants, "baseline", {"study": "coco", "name": "coco", "source": "coco"},
                         {"anchors_comparable": True}, out)
    assert "| *CLIP ViT-B/32 (OpenAI), zero-shot, published* | 50.1 |" in text
    assert "not 5,000" in text  # the synthetic split has 300 images: warned


def test_selection_on_the_reported_split_is_said_in_bold(tmp_path):
    root = tmp_path / "results" / "d" / "variants"
    variants = {"baseline": make_variant(root, "baseline", 20.0, [3.0, 2.5], select="val")}
    text = build_summary(variants, "baseline", {"study": "d", "name": "d", "source": "coco"}, REPORT,
                         tmp_path / "results" / "summary.md")
    first = text.split("\n\n")[1]
    assert "**Selection and reporting used the same images (split `val`)" in first


def test_selection_paragraph_without_trained_runs_or_records(tmp_path):
    root = tmp_path / "results" / "d" / "variants"
    out = tmp_path / "results" / "summary.md"
    only = {"untrained": make_variant(root, "untrained", 1.0, [])}
    text = build_summary(only, "untrained", {"study": "d", "name": "d", "source": "coco"}, REPORT, out)
    assert "No variant was trained, so no model was selected; Recall@K is on split `val` " \
           "(300 images)." in text.split("\n\n")[1]


def test_best_epoch_follows_train_monitor():
    h = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3, 2, 1.0],
                      "train_loss_in_batch": [3, 2, 1.0], "val_loss": [3, 2.5, 2.0],
                      "val_recall": [10.0, 30.0, 20.0],
                      "temperature": [0.07] * 3})
    assert convergence(h, "val_loss")["best_epoch"] == 3
    c = convergence(h, "val_recall")
    assert c["best_epoch"] == 2 and c["best_value"] == 30.0
    assert c["state"].startswith("validation recall (val_recall, which picks the saved "
                                 "epoch) peaked at epoch 2 and fell 33.3%")


def test_convergence_states():
    h = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3, 2, 1.0],
                      "train_loss_in_batch": [3, 2, 1.0], "val_loss": [3, 2.5, 2.0],
                      "temperature": [0.07] * 3})
    c = convergence(h)
    assert c["state"].startswith("still improving") and c["gap"] == pytest.approx(1.0)
    assert convergence(pd.DataFrame()) == {"epochs": 0}
    # train.eval_every: 2: epochs 1 and 3 were not validated (NaN) and are not judged.
    nan = float("nan")
    h = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [3, 2, 1.5, 1.0],
                      "train_loss_in_batch": [3, 2, 1.5, 1.0],
                      "val_loss": [nan, 2.0, nan, 1.999], "val_recall": [nan, 5, nan, 6],
                      "temperature": [0.07] * 4})
    c = convergence(h)
    assert (c["epochs"], c["validations"], c["best_epoch"]) == (4, 2, 4)
    assert c["state"].startswith("converged") and c["gap"] == pytest.approx(0.999)


def test_report_rules_are_wired(tmp_path, repo):
    from conftest import TINY, planned_jobs, snakemake

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    jobs = planned_jobs(snakemake(tmp_path, repo, "-n"))
    n_var = len(TINY["variants"]) + 1  # + untrained
    assert jobs["figures"] == n_var and jobs["summary"] == 1 and jobs["loss_overlay"] == 1
    # every caption a report() flag points at exists
    for smk in ("evaluate.smk", "report.smk"):
        rules = (repo / "workflow" / "rules" / smk).read_text()
        for caption in re.findall(r'caption="([^"]+)"', rules):
            assert (repo / "workflow" / "rules" / caption).resolve().is_file(), caption
    assert (repo / "workflow" / "report" / "workflow.rst").is_file()


def _as_clip(paths: dict, epochs: int, mrr: tuple[float, float], checkpoint: str) -> None:
    """Turn a synthetic run into a CLIP variant from ``checkpoint`` with the given MRRs."""
    rep = json.loads(paths["train_report"].read_text())
    rep["config"] = resolved(rep["variant"], {"model": {"kind": "clip",
                                                        "clip": {"model": checkpoint}},
                                              "train": {"epochs": epochs}})
    paths["train_report"].write_text(json.dumps(rep))
    m = json.loads(paths["metrics"].read_text())
    m["i2t_mrr"], m["t2i_mrr"] = mrr
    m["t2i_mAP@10"] = 21.5
    paths["metrics"].write_text(json.dumps(m))


def test_pretrained_vs_fine_tuned_table_has_mrr_both_ways(tmp_path):
    root = tmp_path / "results" / "c" / "variants"
    variants = {"pretrained": make_variant(root, "pretrained", 20.0, []),
                "lora_text": make_variant(root, "lora_text", 25.0, [3.0, 2.5]),
                "other_ckpt": make_variant(root, "other_ckpt", 30.0, [3.0, 2.4])}
    _as_clip(variants["pretrained"], 0, (0.552, 0.401), "openai/clip-vit-base-patch32")
    _as_clip(variants["lora_text"], 20, (0.623, 0.47), "openai/clip-vit-base-patch32")
    _as_clip(variants["other_ckpt"], 5, (0.7, 0.6), "some/other-clip")
    text = build_summary(variants, "pretrained", {"study": "c", "name": "c", "source": "coco"}, REPORT,
                         tmp_path / "results" / "summary.md")
    section = text.split("## Pretrained vs fine-tuned", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ")]
    assert rows[0].split(" | ")[1:] == [
        "trained on", "image→text R@1", "image→text R@5", "image→text R@10", "image→text MRR",
        "text→image R@1", "text→image R@5", "text→image R@10", "text→image MRR |"]
    # R@K = recall * sqrt(k) (make_variant), MRR as set; the other checkpoint is not a row.
    assert rows[1] == ("| pretrained (`pretrained`) | – | 20.0 | 44.7 | 63.2 | 0.552 | 20.0 | "
                       "44.7 | 63.2 | 0.401 |")
    assert rows[2].startswith("| fine-tuned (`lora_text`) | 2,000 images | 25.0 | 55.9 | 79.1 | "
                              "0.623 | 25.0")
    assert rows[3] == ("| change (`lora_text`) |  | +5.0 | +11.2 | +15.8 | +0.071 | +5.0 | "
                       "+11.2 | +15.8 | +0.069 |")
    assert len(rows) == 4 and "other_ckpt" not in section
    # Both MRRs, and mAP/NDCG of both directions, also stand in the Results table.
    assert "| i2t MRR | t2i MRR | i2t mAP@10 | t2i mAP@10 | i2t NDCG@10 | t2i NDCG@10 |" in text
    row = next(r for r in text.split("## Results")[1].splitlines() if r.startswith("| lora_text"))
    assert row.endswith("| 0.623 | 0.470 | 20.0 | 21.5 | – | – | – | – | – | – |")


def test_no_pretrained_table_without_a_zero_shot_clip(runs):
    tmp, variants = runs
    text = build_summary(variants, "baseline", DEMO, REPORT,
                         tmp / "results" / "summary.md")
    assert "Pretrained vs fine-tuned" not in text


def test_summary_lab_sections_stability_llm_hardware_and_t2i_ranking(runs):
    tmp, variants = runs
    d = Path(variants["baseline"]["history"]).parent
    hist = pd.read_csv(d / "history.csv")
    hist["skipped_steps"] = [0, 2, 0, 0]
    hist["restarts"] = [0, 0, 1, 1]
    hist["grad_norm"], hist["grad_norm_min"] = 0.8, [0.2, 0.15, 0.3, 0.3]
    hist["grad_norm_max"] = [4.0, 9.5, 2.0, 1.0]
    for col, v in (("train_acc_i2t", 41.0), ("train_acc_t2i", 40.0), ("val_acc_i2t", 33.3),
                   ("val_acc_t2i", 31.2)):
        hist[col] = v
    hist.to_csv(d / "history.csv", index=False)
    m = json.loads((d / "metrics.json").read_text())
    m |= {"t2i_mAP@10": 12.3, "i2t_NDCG@10": 45.6, "t2i_NDCG@10": 23.4}
    (d / "metrics.json").write_text(json.dumps(m))
    rep = json.loads((d / "train_report.json").read_text())
    rep["hardware"] = {"kind": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1,
                       "gpu_memory_gb": 79.2, "peak_gpu_memory_gb": 11.25}
    rep["config"]["train"] |= {"optimizer": "adamw", "warmup_steps": 500, "grad_clip": 1.0}
    (d / "train_report.json").write_text(json.dumps(rep))
    bn = Path(variants["bn_head"]["train_report"])
    rep = json.loads(bn.read_text())
    rep["hardware"] = {"kind": "cpu", "cpu": "AMD EPYC 9654", "cpu_cores": 2, "torch_threads": 2}
    rep["config"]["train"] |= {"optimizer": "sgd", "momentum": 0.9, "warmup_fraction": 0.05,
                               "warmup_steps": None}
    bn.write_text(json.dumps(rep))
    text = build_summary(variants, "baseline", DEMO, REPORT,
                         tmp / "results" / "summary.md")
    # t2i mAP / NDCG next to the i2t ones
    assert ("| i2t mAP@10 | t2i mAP@10 | i2t NDCG@10 | t2i NDCG@10 | i2t mAP | t2i mAP | "
            "i2t NDCG | t2i NDCG |") in text
    assert re.search(r"\| baseline \|.*\| 20\.0 \| 12\.3 \| 45\.6 \| 23\.4 \|", text)
    # stability from history.csv: skipped steps, restarts, grad-norm range, accuracies
    section = text.split("## Training stability and convergence")[1].split("\n## ")[0]
    assert re.search(r"\| baseline \| 2 \| 1 \| 0\.15 – 9\.5 \| 1\.890 \| 2\.190 \| 41\.0 \| "
                     r"40\.0 \| 33\.3 \| 31\.2 \|", section)
    assert "Some runs needed the guards" in section
    assert "untrained" not in section  # no history, no row
    # hardware: GPU name + peak memory on CUDA, CPU model + threads otherwise
    assert "NVIDIA H100 80GB HBM3 (79 GB) | 11.25 GB" in text
    assert "CPU AMD EPYC 9654, 2 threads of 2 cores | – (CPU)" in text
    # hyperparameters name the optimiser and the warmup
    assert "| AdamW | 0.05 | 500 steps | 1.0 |" in text
    assert "| SGD (momentum 0.9) | 0.05 | 5% of steps |" in text
    # the lab's reflection section with its placeholder link
    llm = text.split("## Reflection on LLM usage")[1]
    assert "Link to the conversation" in llm and "TODO: paste the shared conversation URL" in llm


def test_best_variant_and_margin_use_metrics_rsum_over_r1_5_10(runs):
    """With eval.ks [1, 5, 10, 50] the summary's rsum is metrics.json's (R@1/5/10 both
    ways): a variant ahead only at R@50 is not the best, and the margin is of that rsum."""
    tmp, variants = runs
    for name, r50 in (("baseline", 99.0), ("bn_head", 60.0), ("untrained", 5.0)):
        path = Path(variants[name]["metrics"])
        m = json.loads(path.read_text())
        m["i2t_R@50"] = m["t2i_R@50"] = r50
        m |= {f"{d}_{k}@50": 10.0 for d in ("i2t", "t2i") for k in ("mAP", "NDCG")}
        path.write_text(json.dumps(m))
    text = build_summary(variants, "baseline", DEMO, REPORT,
                         tmp / "results" / "summary.md")
    rsum = {n: json.loads(Path(v["metrics"]).read_text())["rsum"] for n, v in variants.items()}
    assert "| i2t R@50 |" in text
    assert f"Best variant by rsum: **bn_head** (rsum {rsum['bn_head']:.1f}" in text
    assert f"{rsum['bn_head'] - rsum['baseline']:+.1f} rsum over the baseline" in text
    assert "rsum = R@1 + R@5 + R@10 of image→text plus the same of text→image" in text


def test_overfitting_gap_compares_the_in_batch_training_loss_with_validation(runs):
    """A hard-negative run's train_loss includes the mined negatives; the gap uses the
    in-batch form, which validation has too."""
    tmp, variants = runs
    path = Path(variants["baseline"]["history"])
    hist = pd.read_csv(path)
    hist["train_loss"] = hist["train_loss_in_batch"] + 1.8  # the mined negatives' share
    hist.to_csv(path, index=False)
    text = build_summary(variants, "baseline", DEMO, REPORT,
                         tmp / "results" / "summary.md")
    gap = hist["val_loss"].iloc[-1] - hist["train_loss_in_batch"].iloc[-1]
    assert f"`baseline` {gap:+.3f}" in text and gap > 0
