"""End to end: the whole DAG on a tiny demo config, then the minimal-rerun guarantees."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import (
    AGGREGATES,
    TOY_HPO_TARGET,
    TOY_RUN,
    caption_table,
    check_hpo_outputs,
    dry_run_of_toy_run_with,
    planned,
    planned_jobs,
    snakemake,
    write_config,
)

pytestmark = pytest.mark.slow

@pytest.fixture
def finished_run(toy_run):
    return toy_run.workdir


def test_outputs_of_every_stage(finished_run):
    w = finished_run
    assert (w / "resources/tiny/annotations/captions_train2014.json").is_file()
    caps = pd.read_parquet(w / caption_table("val"))
    assert list(caps.columns) == ["image_id", "caption_id", "caption", "file_name", "split"]
    assert caps["image_id"].is_monotonic_increasing and len(caps) == 40 * 5
    table = pd.read_csv(w / "results/ablation.csv")
    assert list(table.columns[:8]) == ["variant", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1",
                                       "t2i_R@5", "t2i_R@10", "rsum"]
    assert ((table["rsum_lo"] <= table["rsum"]) & (table["rsum"] <= table["rsum_hi"])).all()
    paired = pd.read_csv(w / "results/paired_vs_baseline.csv")
    assert set(paired["variant"]) == {"frozen", "untrained"}
    # The summary shows the intervals and words its verdicts by the paired interval.
    summary = (w / "results/summary.md").read_text()
    assert "## Compared with the baseline" in summary and "95% bootstrap interval" in summary
    verdicts = ("better than the baseline", "worse than the baseline",
                "not distinguishable from the baseline at this size")
    assert any(v in summary.split("## Compared with the baseline")[1] for v in verdicts)
    assert list(table["variant"]) == ["baseline", "frozen", "untrained"]
    assert ((table.iloc[:, 1:7] >= 0) & (table.iloc[:, 1:7] <= 100)).all().all()
    assert (w / "results/ablation_bar.png").stat().st_size > 10_000
    for variant in ("baseline", "frozen", "untrained"):
        vdir = w / "results/tiny/variants" / variant
        metrics = json.loads((vdir / "metrics.json").read_text())
        assert metrics["n_images"] == 40 and metrics["n_texts"] == 200
        assert "bootstrap" not in metrics  # intervals: ablation.csv, drawn from the ranks
        assert (vdir / "ranks.safetensors").is_file()
        report = json.loads((vdir / "train_report.json").read_text())
        assert report["config"]["name"] == variant
        hist = pd.read_csv(vdir / "history.csv")
        assert len(hist) == (0 if variant == "untrained" else 2)
        assert (vdir / "loss_curves.png").is_file()
        # evaluate's zero-shot results and query ranking, which the figures job drew
        zero_shot = json.loads((vdir / "zero_shot.json").read_text())
        assert zero_shot["temperature"] == metrics["temperature"]
        assert zero_shot["tasks"]["objects"]["accuracy"]["n_images"] > 0  # demo labels
        assert (vdir / "prompts.safetensors").is_file() and (vdir / "queries.json").is_file()
        assert (vdir / "figures" / "zero_shot" / "objects.png").is_file()
    # The demo's zero-shot ground truth lies beside its captions.
    assert (w / "resources/tiny/annotations/scenes_val2014.json").is_file()
    # Selection on the `select` holdout of train (6 = 96 x 5000/82783), reporting on val.
    select = pd.read_parquet(w / caption_table("select"))
    train = pd.read_parquet(w / caption_table("train"))
    assert select["image_id"].nunique() == 6 and train["image_id"].nunique() == 90
    assert not set(select["file_name"]) & (set(train["file_name"]) | set(caps["file_name"]))
    for variant in ("baseline", "frozen"):
        vdir = w / "results/tiny/variants" / variant
        assert json.loads((vdir / "train_report.json").read_text())["selected_on"] == {
            "split": "select", "images": 6, "monitor": "val_loss"}
        assert json.loads((vdir / "metrics.json").read_text())["reported_on"] == {
            "split": "val", "images": 40}
    first = (w / "results/summary.md").read_text().split("\n\n")[1]
    assert "on split `select` (6 images); Recall@K is reported on split `val` (40" in first
    # Training state for resume lives outside the declared outputs.
    assert (w / "results/tiny/checkpoints/baseline/state.pt").is_file()


def test_hpo_search_of_the_finished_run(toy_run):
    from cliptune.config.load import load_config

    check_hpo_outputs(toy_run.workdir / TOY_HPO_TARGET.rsplit("/", 1)[0], load_config(TOY_RUN))
    assert {"hpo", "backbone_features"} <= toy_run.rules_run


def test_finished_run_has_nothing_to_do(finished_run, repo):
    assert planned_jobs(snakemake(finished_run, repo, "-n")) == {}


def test_one_variant_flag_reruns_only_that_variant(finished_run, repo):
    cfg = json.loads(json.dumps(TOY_RUN))
    cfg["variants"]["frozen"]["train"] = {"lr": 5e-4}
    jobs = planned(dry_run_of_toy_run_with(finished_run, repo, cfg))
    per_variant = {(r, w) for r, w in jobs if r not in AGGREGATES}
    # Only frozen's own jobs, and at least its training and evaluation; its cached trunk
    # features do not depend on the learning rate.
    assert per_variant, jobs
    assert all(w == "variant=frozen" for _, w in per_variant), jobs
    assert "backbone_features" not in {r for r, _ in per_variant}
    assert {"train", "evaluate"} <= {r for r, _ in per_variant}
    assert {r for r, _ in jobs} - {r for r, _ in per_variant} <= AGGREGATES
    assert len(jobs) == len(set(jobs))


def test_encoder_change_reruns_the_text_cache_and_its_readers(finished_run, repo):
    cfg = json.loads(json.dumps(TOY_RUN))
    cfg["text_encoder"]["max_length"] = 24
    jobs = planned_jobs(dry_run_of_toy_run_with(finished_run, repo, cfg))
    assert jobs["text_embeddings"] == 3  # train, the select holdout, val
    assert jobs["train"] == 4 and jobs["evaluate"] == 4  # the baseline twice (seeds)
    # Nothing upstream of the text cache reruns.
    assert not {"demo_dataset", "captions", "image_cache", "data_report",
                "samples"} & set(jobs)


def test_bootstrap_change_rescores_nothing(finished_run, repo):
    """Intervals come from the saved ranks: new bootstrap settings rerun aggregates only."""
    cfg = json.loads(json.dumps(TOY_RUN))
    cfg["bootstrap"] = {"resamples": 500, "confidence": 0.9}
    jobs = planned_jobs(dry_run_of_toy_run_with(finished_run, repo, cfg))
    assert jobs and set(jobs) <= AGGREGATES, jobs
    assert "aggregate" in jobs


def test_figure_setting_redraws_without_evaluating(finished_run, repo):
    """evaluate computed what the figures show: a figure-only report setting reruns the
    figures (and the summary that links them, and its top-level copy), never a
    model-loading job."""
    cfg = json.loads(json.dumps(TOY_RUN))
    cfg["report"] = {"n_images": 3, "heatmap_size": 5}
    jobs = planned_jobs(dry_run_of_toy_run_with(finished_run, repo, cfg))
    assert jobs.get("figures") == 3, jobs  # baseline, frozen, untrained
    # current_study: the top-level copy of the summary
    assert set(jobs) <= {"figures", "summary", "current_study", "all"}, jobs


def test_bad_config_fails_before_any_job(tmp_path, repo):
    cfg = json.loads(json.dumps(TOY_RUN))
    cfg["train"]["epoch"] = 3
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, repo, "-n", check=False)
    assert proc.returncode != 0
    assert "unknown key train.'epoch' (did you mean 'epochs'?)" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_html_report_is_self_contained(finished_run, repo):
    snakemake(finished_run, repo, "--report", "results/report.html")
    html = (finished_run / "results/report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "ablation" in html


def test_search_your_own_images(finished_run, repo, tmp_path):
    """`snakemake search` on the finished tiny run, a folder holding a bad file; new
    queries re-rank without re-embedding, a new photo re-embeds, no folder stops early."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(230, 20, 20), (20, 20, 230), (20, 200, 20)]):
        Image.new("RGB", (48, 36), colour).save(photos / f"p{i}.jpg")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")

    def search(*args, queries="[a red circle, a blue square]", target="search", check=True):
        override = f"search={{images: {photos}, queries: {queries}, top_k: 2}}"
        return snakemake(finished_run, repo, *args, target, "--config", override, check=check)

    search()
    out = finished_run / "results/tiny/search/baseline"
    assert (out / "skipped.txt").read_text().splitlines()[1].startswith("broken.png\tnot an image")
    t2i = pd.read_csv(out / "text_to_image.csv")
    assert t2i["query"].tolist() == ["a red circle"] * 2 + ["a blue square"] * 2
    assert set(t2i["file"]) <= {"p0.jpg", "p1.jpg", "p2.jpg"}
    i2t = pd.read_csv(out / "image_to_text.csv")
    assert i2t["file"].tolist() == ["p0.jpg", "p0.jpg", "p1.jpg", "p1.jpg", "p2.jpg", "p2.jpg"]
    val = pd.read_parquet(finished_run / caption_table("val"))
    assert set(i2t["caption"]) <= set(val["caption"])  # captions of the evaluation split
    for png in ("text_to_image.png", "image_to_text.png"):
        assert (out / png).stat().st_size > 10_000
    assert "img/s" in (finished_run / "logs/tiny/search/baseline/embed.log").read_text()
    # New queries: only the ranking reruns, the folder embeddings are reused.
    jobs = planned_jobs(search("-n", queries="[two shapes]"))
    assert "search_embed" not in jobs and jobs.get("search_text_to_image") == 1
    # A new photo changes the folder: it is embedded again.
    Image.new("RGB", (40, 40), (230, 20, 20)).save(photos / "p3.png")
    assert planned_jobs(search("-n")).get("search_embed") == 1
    # ... and only it: the unchanged photos keep their embeddings.
    search(target="results/tiny/search/baseline/image_embeddings.safetensors")
    assert "4 images of" in (log := (finished_run / "logs/tiny/search/baseline/embed.log")
                             .read_text()) and "1 embedded" in log and "3 unchanged" in log, log
    # Without a folder the target stops before any job and says what to set.
    proc = snakemake(finished_run, repo, "-n", "search", check=False)
    assert proc.returncode != 0 and "search.images is not set" in proc.stdout + proc.stderr
