"""Which config a run sees: the default, --configfile (replaces it) and --config (merges last)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import snakemake_batch

from cliptune.config.overrides import typed_cli_overrides


def test_nested_override_strings_get_yaml_types():
    # What Snakemake hands over for: train='{epochs: 1, lr: 1e-3}' include_untrained=false
    # eval='{ks: [1, 5]}' dataset='{root: /data/coco}' model='{weights: null}'
    overrides = {"train": {"epochs": "1", "lr": "1.0e-3"}, "include_untrained": "false",
                 "eval": {"ks": ["1", "5"]}, "dataset": {"root": "/data/coco"},
                 "model": {"weights": "null"}}
    merged = {"train": {"epochs": "1", "lr": "1.0e-3", "batch_size": 64},
              "include_untrained": "false", "eval": {"ks": ["1", "5"], "split": "val"},
              "dataset": {"root": "/data/coco", "name": "2014"},
              "model": {"weights": "null"}}
    out = typed_cli_overrides(merged, overrides)
    assert out["train"] == {"epochs": 1, "lr": 1e-3, "batch_size": 64}
    assert out["include_untrained"] is False
    assert out["eval"] == {"ks": [1, 5], "split": "val"}
    assert out["dataset"] == {"root": "/data/coco", "name": "2014"}  # file values untouched
    assert out["model"]["weights"] is None
    assert merged["train"]["epochs"] == "1", "the input must not be modified"


def test_value_a_config_file_set_is_not_retyped():
    # The key came from a file (a quoted string) and the override did not touch it.
    assert typed_cli_overrides({"dataset": {"name": "2014"}}, {}) == {"dataset": {"name": "2014"}}


# ---------------------------------------------------------------- dry runs through Snakemake


@pytest.fixture()
def workdir(tmp_path, repo) -> Path:
    """A working directory holding the shipped config/ (the default is relative to it)."""
    shutil.copytree(repo / "config", tmp_path / "config")
    return tmp_path


def dry_run(workdir: Path, repo: Path, *args: str) -> subprocess.CompletedProcess:
    args = ["-s", str(repo / "Snakefile"), "--directory", str(workdir), "--cores", "1", "-n",
            *args]
    return snakemake_batch([{"args": args, "cwd": workdir}])[0]


def trained_variants(proc: subprocess.CompletedProcess, study: str) -> set[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = f"results/{study}/variants/"
    text = proc.stdout + proc.stderr
    return {line.split(prefix)[1].split("/")[0]
            for line in text.splitlines() if "output:" in line and prefix in line
            and "model.safetensors" in line}


def shipped(repo: Path, name: str) -> dict:
    return yaml.safe_load((repo / "config" / name).read_text())


def test_override_merges_over_the_default_config(workdir, repo):
    # The reported failure: "'dataset' is a required property".
    proc = dry_run(workdir, repo, "--config", "train={epochs: 1}")
    expected = set(shipped(repo, "config.yaml")["variants"]) | {"untrained"}
    assert trained_variants(proc, "lab") == expected


def test_nested_and_top_level_overrides_keep_the_rest(workdir, repo):
    # dataset.name alone: source, root and splits must still come from config.yaml,
    # and include_untrained=false must arrive as a boolean; study= moves the outputs.
    proc = dry_run(workdir, repo, "--config", "dataset={name: coco_small}",
                   "include_untrained=false", "study=lab_small")
    assert trained_variants(proc, "lab_small") == set(shipped(repo, "config.yaml")["variants"])


def test_configfile_replaces_the_default_and_overrides_merge_over_it(workdir, repo):
    proc = dry_run(workdir, repo, "--configfile", "config/demo.yaml",
                   "--config", "study=demo_small", "dataset={demo: {train_images: 50}}")
    # Only the demo's variants: nothing inherited from config.yaml (no lora_clip).
    assert trained_variants(proc, "demo_small") == set(shipped(repo, "demo.yaml")["variants"]) | {
        "untrained"}


def test_configfiles_stack_left_to_right(workdir, repo):
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(
        {"study": "overlaid", "variants": {"extra": {"train": {"lr": 3e-4}}}}))
    proc = dry_run(workdir, repo, "--configfile", "config/config.yaml", "overlay.yaml")
    expected = set(shipped(repo, "config.yaml")["variants"]) | {"extra", "untrained"}
    assert trained_variants(proc, "overlaid") == expected


def test_bad_override_is_named(workdir, repo):
    proc = dry_run(workdir, repo, "--config", "train={epoch: 1}")
    assert proc.returncode != 0
    assert "unknown key train.'epoch' (did you mean 'epochs'?)" in proc.stdout + proc.stderr
    proc = dry_run(workdir, repo, "--config", "train={epochs: many}")
    assert proc.returncode != 0
    assert "train.epochs = 'many' has the wrong type" in proc.stdout + proc.stderr
