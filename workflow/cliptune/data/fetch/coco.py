"""COCO 2014 archives for ``dataset.download: true``: which, where, fetch and extract.

Archives land in ``{root}/archives/`` through :func:`cliptune.data.fetch.http.download`
(``.part`` file, HTTP Range resume, retries, size + md5 check) and are
extracted into ``{root}`` by :func:`cliptune.data.fetch.extract.safe_extract`, whose
completion marker ``{root}/.{archive}.complete`` is what downstream rules
depend on: no marker, no trust in a half-extracted folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cliptune.config.load import deep_merge
from cliptune.data.fetch.extract import safe_extract
from cliptune.data.fetch.http import COCO2014_FILES, DownloadError, download

log = logging.getLogger(__name__)

ANNOTATIONS_ZIP = "annotations_trainval2014.zip"
IMAGE_FOLDERS = ("train2014", "val2014")


def archive_specs(dataset: dict) -> dict[str, dict]:
    """COCO2014_FILES with the user's ``dataset.download_files`` overrides (mirrors, checksums)."""
    return deep_merge(COCO2014_FILES, dataset.get("download_files") or {})


def needed_archives(dataset: dict) -> list[str]:
    """Archive names a COCO source needs: image zips of its folders (+ captions for 'coco')."""
    if dataset["source"] == "karpathy_coco":  # Karpathy splits draw from both folders
        return [f"{f}.zip" for f in IMAGE_FOLDERS]
    folders = sorted(set(dataset["splits"].values()))
    return [ANNOTATIONS_ZIP] + [f"{f}.zip" for f in folders]


def archive_path(root: str | Path, name: str) -> Path:
    return Path(root) / "archives" / name


def marker_path(root: str | Path, name: str) -> Path:
    return Path(root) / f".{name}.complete"


def placement_hint(root: str | Path, names: list[str], specs: dict[str, dict]) -> str:
    """Where to put each archive by hand when this machine cannot download."""
    parts = []
    for name in names:
        spec = specs[name]
        size = f"{spec['size'] / 1e9:.2f} GB, " if spec.get("size") else ""
        check = f"md5 {spec['md5']}" if spec.get("md5") else "unverified"
        parts.append(f"{spec['url']} -> {archive_path(root, name)} ({size}{check})")
    return (
        "To prepare offline, download these on a connected machine and place them (they are "
        "verified and extracted on the next run): " + "; ".join(parts) + ". Or, with COCO "
        "already unpacked somewhere, set dataset.download: false and dataset.root to it."
    )


def fetch_archive(name: str, spec: dict, dest: Path, hint: str = "", retries: int = 5,
                  backoff: float = 2.0) -> Path:
    """Download and verify one archive; a failure names every file to place by hand."""
    try:
        return download(spec["url"], dest, sha256=spec.get("sha256"), md5=spec.get("md5"),
                        size=spec.get("size"), retries=retries, backoff=backoff)
    except DownloadError as exc:
        raise DownloadError(f"{exc} {hint}".strip()) from exc


def extract_archive(archive: Path, root: Path) -> Path:
    """Extract into ``root`` (refusing unsafe members); returns the completion marker."""
    log.info("extracting %s into %s", archive, root)
    marker = safe_extract(archive, root)
    log.info("extracted %s (marker %s)", archive, marker)
    return marker
