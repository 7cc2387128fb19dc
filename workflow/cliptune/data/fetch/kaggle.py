"""Flickr30k from Kaggle for ``dataset.download: kaggle``.

``kagglehub.dataset_download`` (an optional dependency, imported only here) fetches
the Kaggle copy ``hsankesara/flickr-image-dataset`` into its own cache; this module
then points the configured source at it: ``results.csv`` is copied to
``dataset.annotations`` (the rule's output, written last, so an interrupted run leaves
none) and ``dataset.root`` becomes a symlink to the image folder (no second 8 GB copy).
Any failure (kagglehub missing, no credentials, no network) ends in one error that
also says how to place the files by hand.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cliptune.files.atomic import atomic_path

log = logging.getLogger(__name__)

KAGGLE_FLICKR30K = "hsankesara/flickr-image-dataset"
RESULTS_CSV = "results.csv"
IMAGE_FOLDER = "flickr30k_images"


class KaggleDownloadError(RuntimeError):
    """The Kaggle copy could not be fetched or did not have the expected layout."""


def manual_hint(annotations: Path, images: Path) -> str:
    return (
        f"To prepare by hand: on a connected machine download {KAGGLE_FLICKR30K} from "
        f"kaggle.com (or run kagglehub.dataset_download('{KAGGLE_FLICKR30K}')), then put "
        f"{RESULTS_CSV} at {annotations} and the {IMAGE_FOLDER} image folder at {images} "
        "(the next run uses them without downloading); or put them anywhere, set "
        "dataset.download: false, dataset.root to the image folder and "
        f"dataset.annotations to {RESULTS_CSV}.")


def _credentials_note() -> str:
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "Kaggle credentials were found in KAGGLE_USERNAME/KAGGLE_KEY."
    if (config_dir / "kaggle.json").is_file():
        return f"Kaggle credentials were found in {config_dir / 'kaggle.json'}."
    return ("No Kaggle credentials were found: create an API token at "
            "kaggle.com -> Settings -> API and save it as ~/.kaggle/kaggle.json (or set "
            "KAGGLE_USERNAME and KAGGLE_KEY).")


def download_copy(annotations: Path, images: Path) -> Path:
    """kagglehub's local folder of the dataset (downloaded on first use, then cached)."""
    hint = manual_hint(annotations, images)
    try:
        import kagglehub
    except ImportError as exc:
        raise KaggleDownloadError(
            "dataset.download: kaggle needs the optional package kagglehub in the "
            "environment that runs the job: pip install 'kagglehub>=0.3' (or pip install "
            f"-e '.[kaggle]'). {hint}") from exc
    try:
        return Path(kagglehub.dataset_download(KAGGLE_FLICKR30K))
    except Exception as exc:  # network, HTTP 401/403/404, quota: one message for all
        raise KaggleDownloadError(
            f"could not download {KAGGLE_FLICKR30K} with kagglehub "
            f"({type(exc).__name__}: {exc}). Check the network and your Kaggle "
            f"credentials. {_credentials_note()} {hint}") from exc


def locate(folder: Path) -> tuple[Path, Path]:
    """(results.csv, image folder) inside a downloaded copy: the folder holding the
    first image that results.csv names, so a nested or flattened copy both work."""
    tables = sorted(folder.rglob(RESULTS_CSV), key=lambda p: (len(p.parts), str(p)))
    if not tables:
        raise KaggleDownloadError(f"{folder}: no {RESULTS_CSV} in the downloaded copy")
    with open(tables[0], encoding="utf-8") as f:
        f.readline()  # header: image_name| comment_number| comment
        first = f.readline().split("|", 1)[0].strip()
    candidates = sorted((p.parent for p in folder.rglob(first) if p.is_file()),
                        key=lambda p: (len(p.parts), str(p)))
    if not first or not candidates:
        raise KaggleDownloadError(
            f"{folder}: no image folder holds {first or 'the first image'!r} named in "
            f"{tables[0]}")
    return tables[0], candidates[0]


def place(table: Path, image_dir: Path, annotations: Path, images: Path) -> None:
    """Link ``images`` to ``image_dir`` and copy the captions to ``annotations`` (last)."""
    if images.is_symlink():
        images.unlink()  # an earlier download's link (the cache may have moved)
    elif images.exists():
        raise KaggleDownloadError(
            f"{images} already exists and is not a link to a downloaded copy; it would "
            f"be mixed with the download: remove it, or put {RESULTS_CSV} at "
            f"{annotations} too to use the images you placed")
    images.parent.mkdir(parents=True, exist_ok=True)
    images.symlink_to(image_dir.resolve(), target_is_directory=True)
    with atomic_path(annotations) as tmp:
        shutil.copyfile(table, tmp)
    log.info("Flickr30k from Kaggle: captions %s, images %s -> %s", annotations, images,
             image_dir)


def fetch_flickr30k(annotations: Path, images: Path) -> None:
    """``dataset.download: kaggle``: download (or reuse kagglehub's cache) and place."""
    folder = download_copy(annotations, images)
    table, image_dir = locate(folder)
    place(table, image_dir, Path(annotations), Path(images))
