"""Study folders: every study's outputs under results/{study}/, the current study's
aggregates copied to results/, and two studies side by side in one working directory
sharing one set of caches (results/cache/)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import planned_jobs, snakemake, write_config

from cliptune.config.load import DEFAULTS, ConfigError, load_config
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


def toy_study(study: str, variants: dict) -> dict:
    """The demo config at toy scale under its own study name and variants."""
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    cfg["study"] = study
    cfg["dataset"]["demo"].update(train_images=40, val_images=16, image_size=40)
    cfg["dataset"]["selection"]["images"] = 4
    cfg["image_size"] = 32
    cfg["model"].update(backbone="resnet18", weights=None, head={"hidden_dim": 32, "depth": 2,
                                                                 "norm": "none"})
    cfg["train"].update(epochs=1, batch_size=8)
    cfg["include_untrained"] = False
    cfg["report"]["zero_shot"]["tasks"] = {"shapes": cfg["report"]["zero_shot"]["tasks"]["shapes"]}
    cfg["variants"] = variants
    cfg.pop("hpo")
    return cfg


@pytest.mark.slow
def test_two_studies_in_one_working_directory(tmp_path, repo):
    first = toy_study("first", {"baseline": {}})
    second = toy_study("second", {"baseline": {}, "bn": {"model": {"head": {"norm": "batchnorm"}}}})
    write_config(tmp_path, first)
    snakemake(tmp_path, repo)
    summary_first = (tmp_path / "results/first/summary.md").read_text()
    cache = cache_files(tmp_path)
    assert {p.split("/")[0] for p in cache} == {"captions", "images", "text"}

    # The second study reads the same data: its caches are the first study's.
    write_config(tmp_path, second)
    jobs = planned_jobs(snakemake(tmp_path, repo, "-n"))
    assert not {"demo_dataset", "captions", "image_cache", "text_embeddings"} & set(jobs), jobs
    snakemake(tmp_path, repo)
    assert cache_files(tmp_path) == cache  # not one cache file added or rewritten
    print(f"results/cache after both studies: {sum(n for n, _ in cache.values()):,} bytes")
    for study, variants in (("first", ["baseline"]), ("second", ["baseline", "bn"])):
        out = tmp_path / "results" / study
        assert sorted(p.name for p in (out / "variants").iterdir()) == variants
        for name in CURRENT_FILES:
            assert (out / name).stat().st_size > 0, (study, name)
        assert (tmp_path / "logs" / study / "summary.log").is_file()
    # The first study's summary is untouched; the top-level copies are the second's.
    assert (tmp_path / "results/first/summary.md").read_text() == summary_first
    assert (tmp_path / "results/ablation.csv").read_bytes() == (
        tmp_path / "results/second/ablation.csv").read_bytes()
    assert "| bn" in (tmp_path / "results/summary.md").read_text()

    # Back to the first study: only the top-level copies are redone.
    write_config(tmp_path, first)
    jobs = planned_jobs(snakemake(tmp_path, repo, "-n"))
    assert jobs == {"current_study": len(CURRENT_FILES), "all": 1}, jobs
    snakemake(tmp_path, repo)
    assert (tmp_path / "results/ablation.csv").read_bytes() == (
        tmp_path / "results/first/ablation.csv").read_bytes()
    assert planned_jobs(snakemake(tmp_path, repo, "-n")) == {}
