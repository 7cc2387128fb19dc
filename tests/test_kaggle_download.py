"""dataset.download: kaggle (Flickr30k's Kaggle copy) with a stand-in for kagglehub.

Never downloads: ``kagglehub`` is replaced by a module whose ``dataset_download``
returns a generated tiny copy in the Kaggle layout (flickr30k_images/results.csv +
flickr30k_images/flickr30k_images/*.jpg).
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cliptune.config.datasets import KAGGLE_IMAGES
from cliptune.config.load import ConfigError, load_config
from cliptune.data.fetch.kaggle import (
    KAGGLE_FLICKR30K,
    KaggleDownloadError,
    fetch_flickr30k,
)

N_IMAGES = 8


def write_kaggle_copy(folder: Path) -> Path:
    """A tiny Flickr30k in the Kaggle copy's layout; returns what dataset_download would."""
    outer = folder / "flickr30k_images"
    images = outer / "flickr30k_images"
    images.mkdir(parents=True)
    lines = ["image_name| comment_number| comment"]
    for i in range(N_IMAGES):
        name = f"{1000 + i}.jpg"
        Image.new("RGB", (24, 24), (30 * i, 255 - 30 * i, 90)).save(images / name)
        lines += [f"{name}| {k}| A picture number {i} , caption {k} ." for k in range(5)]
    (outer / "results.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def fake_kagglehub(tmp_path, monkeypatch):
    calls = []
    copy = write_kaggle_copy(tmp_path / "kagglehub_cache")

    def dataset_download(handle):
        calls.append(handle)
        return str(copy)

    monkeypatch.setitem(sys.modules, "kagglehub",
                        types.SimpleNamespace(dataset_download=dataset_download))
    return calls


def kaggle_dataset(root: Path | None = None) -> dict:
    ds = {"name": "fk", "source": "flickr30k", "download": "kaggle",
          "holdout": {"val": 2, "test": 2}}
    if root is not None:
        ds["root"] = str(root)
    return ds


def test_download_points_the_source_at_results_csv_and_the_images(fake_kagglehub, tmp_path):
    from cliptune.data.sources.captions import check_sources, split_spec
    from cliptune.data.sources.formats import read_source

    ds = load_config({"dataset": kaggle_dataset(tmp_path / "data" / "flickr30k_images"),
                      "variants": {"baseline": {}}})["dataset"]
    assert ds["annotations"] == str(tmp_path / "data" / "results.csv")
    check_sources(ds)  # nothing there yet: the download rule will make both
    fetch_flickr30k(Path(ds["annotations"]), Path(ds["root"]))
    assert fake_kagglehub == [KAGGLE_FLICKR30K]
    assert Path(ds["root"]).is_symlink() and Path(ds["annotations"]).is_file()
    table = read_source(split_spec(ds, "train")).captions
    assert table["file_name"].nunique() == N_IMAGES and len(table) == 5 * N_IMAGES
    assert all((Path(ds["root"]) / name).is_file() for name in table["file_name"])
    assert table.groupby("split")["file_name"].nunique().to_dict() == {
        "train": 4, "val": 2, "test": 2}
    # A rerun (e.g. after the cache moved) replaces its own link; a real folder is refused.
    fetch_flickr30k(Path(ds["annotations"]), Path(ds["root"]))
    os.unlink(ds["root"])
    Path(ds["root"]).mkdir()
    with pytest.raises(KaggleDownloadError, match="already exists and is not a link"):
        fetch_flickr30k(Path(ds["annotations"]), Path(ds["root"]))


def test_without_kagglehub_one_error_says_what_to_install_and_where_to_put_files(
        monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import kagglehub -> ImportError
    with pytest.raises(KaggleDownloadError) as err:
        fetch_flickr30k(tmp_path / "results.csv", tmp_path / "flickr30k_images")
    text = str(err.value)
    assert "pip install 'kagglehub>=0.3'" in text
    assert f"results.csv at {tmp_path / 'results.csv'}" in text
    assert f"flickr30k_images image folder at {tmp_path / 'flickr30k_images'}" in text
    assert "dataset.root to the image folder" in text


def test_a_failed_download_names_credentials_network_and_the_manual_path(monkeypatch,
                                                                         tmp_path):
    def offline(handle):
        raise ConnectionError("Max retries exceeded with url: /api/v1/datasets")

    monkeypatch.setitem(sys.modules, "kagglehub",
                        types.SimpleNamespace(dataset_download=offline))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no_config"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    with pytest.raises(KaggleDownloadError) as err:
        fetch_flickr30k(tmp_path / "results.csv", tmp_path / "flickr30k_images")
    text = str(err.value)
    assert "ConnectionError: Max retries exceeded" in text
    assert "~/.kaggle/kaggle.json" in text and "KAGGLE_USERNAME and KAGGLE_KEY" in text
    assert f"results.csv at {tmp_path / 'results.csv'}" in text
    assert isinstance(err.value.__cause__, ConnectionError)
    # With credentials present the message says so instead of asking for them.
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    with pytest.raises(KaggleDownloadError, match="found in KAGGLE_USERNAME/KAGGLE_KEY"):
        fetch_flickr30k(tmp_path / "results.csv", tmp_path / "flickr30k_images")


def test_kaggle_config_defaults_and_errors():
    ds = load_config({"dataset": kaggle_dataset(), "variants": {"baseline": {}}})["dataset"]
    assert ds["root"] == KAGGLE_IMAGES
    assert ds["annotations"] == str(Path(KAGGLE_IMAGES).parent / "results.csv")
    with pytest.raises(ConfigError, match="kaggle fetches Flickr30k only"):
        load_config({"dataset": {**kaggle_dataset(), "source": "karpathy_coco"},
                     "variants": {"b": {}}})
    with pytest.raises(ConfigError, match=r"Flickr30k: download: kaggle"):
        load_config({"dataset": {**kaggle_dataset(), "download": True}, "variants": {"b": {}}})
    with pytest.raises(ConfigError, match="name a .csv path"):
        load_config({"dataset": {**kaggle_dataset(), "annotations": "x/dataset_flickr30k.json"},
                     "variants": {"b": {}}})
    with pytest.raises(ConfigError, match="dataset.download"):
        load_config({"dataset": {**kaggle_dataset(), "download": "kagle"}, "variants": {"b": {}}})


@pytest.mark.slow
def test_the_workflow_downloads_then_builds_captions_and_the_image_cache(tmp_path, repo,
                                                                         monkeypatch):
    """The kaggle_flickr30k rule runs in its own job with the stand-in on PYTHONPATH."""
    import yaml
    from conftest import TINY, planned_jobs, snakemake

    fake = tmp_path / "fake_site" / "kagglehub"
    fake.mkdir(parents=True)
    copy = write_kaggle_copy(tmp_path / "cache")
    fake.joinpath("__init__.py").write_text(
        f"def dataset_download(handle):\n    assert handle == {KAGGLE_FLICKR30K!r}\n"
        f"    return {str(copy)!r}\n")
    work = tmp_path / "work"
    work.mkdir()
    cfg = {**json.loads(json.dumps(TINY)), "dataset": kaggle_dataset()}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    from cliptune.data.caches.keys import captions_paths, image_paths

    dataset = load_config(cfg)["dataset"]
    target = image_paths(dataset, "train", 32)["array"]
    jobs = planned_jobs(snakemake(work, repo, "-n", target))
    assert jobs == {"kaggle_flickr30k": 1, "captions": 1, "image_cache": 1}
    snakemake(work, repo, target)
    assert (work / KAGGLE_IMAGES).is_symlink()
    captions = pd.read_parquet(work / captions_paths(dataset, "train")["captions"])
    assert captions["file_name"].nunique() == N_IMAGES - 4  # 2 val + 2 test held out
    assert planned_jobs(snakemake(work, repo, "-n", target)) == {}  # nothing downloads again
