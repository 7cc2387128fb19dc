"""Seal finished artifacts and verify them before use: a damaged file is never used.

When a producer finishes a cache or checkpoint, :func:`seal` writes ``<file>.sha256``
next to it (JSON: size, digest, how the digest was taken). Loaders call :func:`verify`
before reading, so a truncated or byte-flipped image cache, text cache, trunk-feature
cache, ``model.safetensors`` or resume ``state.pt`` stops with :class:`DamagedFileError`
naming the file and the fix, instead of being trained on or evaluated.

Files up to ``FULL_DIGEST_MAX_BYTES`` are hashed whole (SHA-256). Bigger files (the COCO
image cache is ~18 GB) get their exact size plus a digest of the first and last MiB and
``SAMPLED_BLOCKS`` evenly spaced 64 KiB blocks: a truncation, a damaged header or tail,
and damage touching a sampled block are caught for the price of ~17 MiB of reads, where
a whole digest would cost a full extra pass over the file on every load (SHA-256 runs
at 200-400 MB/s on the two shared dev cores: 256 MiB is ~1 s, the COCO cache ~60 s).

A file without a sidecar (written before sealing existed, or by hand) gets the structural
checks only (``.npy`` header against the file size, safetensors header against the file
size), and a warning naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
FULL_DIGEST_MAX_BYTES = 256 << 20
SAMPLED_BLOCKS = 256
_BLOCK = 1 << 16
_EDGE = 1 << 20
_CHUNK = 1 << 20


class DamagedFileError(RuntimeError):
    """An artifact does not match what its producer wrote (truncated, flipped, replaced)."""


def sidecar(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _digest(path: Path, size: int, mode: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if mode == "full":
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            return h.hexdigest()
        offsets = [0, max(0, size - _EDGE)]
        step = max(1, (size - _BLOCK) // SAMPLED_BLOCKS)
        for off in sorted(set(offsets)):
            f.seek(off)
            h.update(f.read(_EDGE))
        for i in range(SAMPLED_BLOCKS):
            f.seek(i * step)
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def record(path: str | os.PathLike) -> dict:
    """The size and digest of ``path`` as :func:`seal` stores them."""
    path = Path(path)
    size = path.stat().st_size
    mode = "full" if size <= FULL_DIGEST_MAX_BYTES else "sampled"
    return {"size": size, "sha256": _digest(path, size, mode), "mode": mode}


def seal(written: str | os.PathLike, final: str | os.PathLike) -> None:
    """Store the record of ``written`` (a finished temp file) as ``final``'s sidecar.

    Called before ``written`` is renamed to ``final``: the sidecar never describes a
    file that is not yet complete, and a kill between the two leaves Snakemake's
    incomplete marker on ``final``'s job, so the rerun rebuilds both."""
    from cliptune.files.atomic import atomic_path

    rec = record(written)
    with atomic_path(sidecar(final)) as tmp:
        tmp.write_text(json.dumps(rec, sort_keys=True) + "\n")


def _fix(path: Path) -> str:
    return (f"delete {path} and rerun snakemake, which rebuilds it (or "
            f"`snakemake --forcerun <the rule that writes {path.name}>`)")


def verify(path: str | os.PathLike, fix: str | None = None) -> None:
    """Raise :class:`DamagedFileError` when ``path`` is not the file its producer sealed.

    ``fix`` overrides the default advice (delete the file and rerun)."""
    path = Path(path)
    fix = fix or _fix(path)
    if not path.exists():
        raise DamagedFileError(f"{path} is missing; {fix}")
    _check_structure(path, fix)
    side = sidecar(path)
    if not side.exists():
        log.warning("%s has no integrity record (%s); only its structure was checked",
                    path, side.name)
        return
    try:
        want = json.loads(side.read_text())
        want_size, want_digest, mode = want["size"], want["sha256"], want["mode"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedFileError(f"integrity record {side} is unreadable ({exc}); {fix}") from exc
    size = path.stat().st_size
    if size != want_size:
        raise DamagedFileError(
            f"{path} is damaged: {size} bytes, but its producer wrote {want_size} "
            f"(truncated or overwritten); {fix}")
    if _digest(path, size, mode) != want_digest:
        raise DamagedFileError(
            f"{path} is damaged: its content no longer matches the SHA-256 its producer "
            f"recorded in {side.name}; {fix}")


def _check_structure(path: Path, fix: str) -> None:
    """Cheap header-against-size checks for the formats whose header states the size."""
    size = path.stat().st_size
    if path.suffix == ".npy":
        import numpy as np

        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                offset = f.tell()
        except (ValueError, OSError, SyntaxError) as exc:
            raise DamagedFileError(f"{path} has no valid .npy header ({exc}); {fix}") from exc
        want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != want:
            raise DamagedFileError(
                f"{path} is damaged: its header describes {want} bytes, the file has "
                f"{size}; {fix}")
    elif path.suffix == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            try:
                header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
            except ValueError:
                header = None
        if not isinstance(header, dict):
            raise DamagedFileError(f"{path} has no valid safetensors header; {fix}")
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        want = 8 + n + max(ends, default=0)
        if size != want:
            raise DamagedFileError(
                f"{path} is damaged: its header describes {want} bytes, the file has "
                f"{size}; {fix}")
