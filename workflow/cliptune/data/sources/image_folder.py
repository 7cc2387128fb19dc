"""A user's folder of images (``search.images``): its listing and a fingerprint of it.

The folder is read recursively in sorted relative-path order; hidden files and folders
(``.DS_Store``, ``.git``, ``._IMG_0001.jpg`` AppleDouble files) are not photos and are
ignored. Every other file is a candidate: whether it decodes is found out when it is
embedded (cliptune.evaluation.search), and the ones that do not are listed there.
No torch here: search.smk calls this at DAG-build time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


class ImageFolderError(ValueError):
    """``search.images`` is unset, missing or empty; the message names the fix."""


@dataclass(frozen=True)
class FolderEntry:
    file: str  # path relative to the folder, POSIX separators
    size: int
    mtime_ns: int


def resolve_folder(images: str | None) -> Path:
    """The configured folder as an absolute path, or a clear error saying what to set."""
    if not images:
        raise ImageFolderError(
            "search.images is not set: name the folder to search, e.g. "
            "--config search='{images: ~/Pictures}' (or search: {images: ...} in your config)")
    folder = Path(os.path.expanduser(str(images))).resolve()
    if not folder.exists():
        raise ImageFolderError(f"search.images = {images!r}: {folder} does not exist")
    if not folder.is_dir():
        raise ImageFolderError(f"search.images = {images!r}: {folder} is not a folder")
    return folder


def scan_folder(folder: Path) -> list[FolderEntry]:
    """Every non-hidden file below ``folder`` (symlinked files followed, symlinked folders
    not, so a link loop cannot recurse), sorted by relative path."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:  # a dangling symlink: still listed, decoding reports it
                st = os.stat_result((0,) * 10)
            entries.append(FolderEntry(path.relative_to(folder).as_posix(), st.st_size,
                                       st.st_mtime_ns))
    entries.sort(key=lambda e: e.file)
    if not entries:
        raise ImageFolderError(f"search.images: {folder} holds no files (hidden ones ignored); "
                               "point it at a folder of images")
    return entries


def folder_fingerprint(folder: Path, entries: list[FolderEntry]) -> str:
    """Changes exactly when a file is added, removed, renamed, resized or touched (or the
    folder itself changes): the search embed job's params, so Snakemake re-embeds then and
    only then."""
    digest = hashlib.sha256(str(folder).encode())
    for e in entries:
        digest.update(f"\n{e.file}\t{e.size}\t{e.mtime_ns}".encode())
    return f"{folder} ({len(entries)} files, {digest.hexdigest()[:16]})"


def searched_folder(images: str | None) -> str:
    """search.smk's params: the folder (absolute), or the error naming what to set."""
    return str(resolve_folder(images))


def folder_state(images: str | None) -> str:
    """search.smk's params of the embed job: the folder's current fingerprint."""
    folder = resolve_folder(images)
    return folder_fingerprint(folder, scan_folder(folder))
