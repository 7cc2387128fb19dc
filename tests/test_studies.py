"""Study folders: every study's outputs under results/{study}/, the current study's
aggregates copied to results/, and two studies side by side in one working directory
sharing one set of caches (results/cache/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TOY_RUN, planned_jobs, snakemake, write_config

from cliptune.config.load import DEFAULTS, ConfigError, deep_merge, load_config
from cliptune.study_outputs import CURRENT_FILES, copy_current, relink_markdown

REPO = Path(__file__).resolve().parents[1]


def test_study_defaults_to_the_dataset_name():
    assert DEFAULTS["study"] is None
    cfg = {"dataset": {"name": "mine", "source": "demo"}, "variants": {"baseline": {}}}
    assert load_config(cfg)["study"] == "mine"
    assert load_config({**cfg, "study": "ablation_2"})["study"] == "ablation_2"
    with pytest.raises(ConfigError, match="study"):
        load_config({**cfg, "study": "a/b"})


def test_every_shipped_config_names_its_own_study():
    studies = {p.name: yaml.safe_load(p.read_text())["study"]
               for p in sorted((REPO / "config").glob("*.yaml"))}
    assert len(set(studies.values())) == len(studies), studies


def test_relinked_markdown_points_into_the_study(tmp_path):
    text = ("![chart](ablation_bar.png)\n![fig](variants/a/figures/x.png \"t\")\n"
            "[web](https://example.org/x.png) [top](#results) [abs](/tmp/x.png)\n")
    out = relink_markdown(text, Path("results/lab"), Path("results"))
    assert out == ("![chart](lab/ablation_bar.png)\n![fig](lab/variants/a/figures/x.png \"t\")\n"
                   "[web](https://example.org/x.png) [top](#results) [abs](/tmp/x.png)\n")
    # Every relinked target exists when the study's files do.
    study = tmp_path / "results" / "lab"
    (study / "variants/a/figures").mkdir(parents=True)
    (study / "variants/a/figures/x.png").write_bytes(b"png")
    (study / "summary.md").write_text("![fig](variants/a/figures/x.png)\n")
    copy_current(study / "summary.md", tmp_path / "results" / "summary.md")
    link = (tmp_path / "results" / "summary.md").read_text().split("(")[1].split(")")[0]
    assert (tmp_path / "results" / link).read_bytes() == b"png"


def cache_files(workdir: Path) -> dict[str, tuple[int, int]]:
    """Every file under results/cache/ -> its size (with its mtime: rewritten files differ)."""
    root = workdir / "results" / "cache"
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_studies_in_one_working_directory(toy_run, tmp_path, repo):
    # The first study is the suite's finished toy run (study "tiny"), copied with its
    # mtimes and Snakemake metadata so it is as complete here as there.
    work = tmp_path / "work"
    shutil.copytree(toy_run.workdir, work, symlinks=True)
    first = TOY_RUN
    assert planned_jobs(snakemake(work, repo, "-n")) == {}
    summary_first = (work / "results/tiny/summary.md").read_text()
    cache = cache_files(work)
    assert {p.split("/")[0] for p in cache} == {"captions", "images", "text", "features"}

    # A second study of the same data: its caches are the first study's.
    second = {**deep_merge(TOY_RUN, {"study": "second", "include_untrained": False,
                                     "train": {"epochs": 1}}),
              "variants": {"baseline": {}}}
    write_config(work, second)
    jobs = planned_jobs(snakemake(work, repo, "-n"))
    assert not {"demo_dataset", "captions", "image_cache", "text_embeddings",
                "backbone_features"} & set(jobs), jobs
    snakemake(work, repo)
    assert cache_files(work) == cache  # not one cache file added or rewritten
    for study, variants in (("tiny", ["baseline", "frozen", "untrained"]),
                            ("second", ["baseline"])):
        out = work / "results" / study
        assert sorted(p.name for p in (out / "variants").iterdir()) == variants
        for name in CURRENT_FILES:
            assert (out / name).stat().st_size > 0, (study, name)
        assert (work / "logs" / study / "summary.log").is_file()
    # The first study's summary is untouched; the top-level copies are the second's.
    assert (work / "results/tiny/summary.md").read_text() == summary_first
    assert (work / "results/ablation.csv").read_bytes() == (
        work / "results/second/ablation.csv").read_bytes()
    top = (work / "results/summary.md").read_text()
    assert "](second/" in top and "](tiny/" not in top  # its links point into results/second/
    assert top.startswith("# cliptune results: second (dataset tiny)\n")
    assert summary_first.startswith("# cliptune results: tiny\n")

    # Back to the first study: only the top-level copies are redone.
    write_config(work, first)
    jobs = planned_jobs(snakemake(work, repo, "-n"))
    assert jobs == {"current_study": len(CURRENT_FILES), "all": 1}, jobs
    snakemake(work, repo)
    assert (work / "results/ablation.csv").read_bytes() == (
        work / "results/tiny/ablation.csv").read_bytes()
    assert planned_jobs(snakemake(work, repo, "-n")) == {}
