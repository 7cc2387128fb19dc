"""Atomic file writes: a crash or a full disk never leaves a half-written artifact."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """The disk filled while an artifact was written; the message names the path and the
    space needed. Nothing was left behind: the temp file is removed."""


_LOW_SPACE = 1 << 20


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _disk_full(exc: BaseException, tmp: Path) -> bool:
    """True when ``exc`` comes from a full disk. safetensors and torch.save report it
    without an errno (a RuntimeError), so a failed write with under 1 MiB left on the
    file system counts too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(tmp.parent).free < _LOW_SPACE
    except OSError:
        return False


def _disk_full_error(path: Path, tmp: Path, expected_bytes: int | None) -> DiskFullError:
    written = tmp.stat().st_size if tmp.exists() else 0
    free = shutil.disk_usage(path.parent).free
    need = (f"it needs about {_mb(expected_bytes)}" if expected_bytes
            else f"it needs more than the {_mb(written)} written before the disk filled")
    return DiskFullError(
        errno.ENOSPC,
        f"disk full while writing {path}: {need}, and {path.parent} has {_mb(free)} free. "
        "Free space there (or point the results folder at a larger disk) and rerun: the "
        "partial file was removed and finished artifacts are untouched")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, seal: bool = False,
                expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temp path in the same folder; rename it over ``path`` only on success.

    ``seal``: also record the finished file's size and digest (``cliptune.files.integrity``),
    so loaders that verify it catch later damage. ``expected_bytes``: the size of the
    finished file where the writer knows it, for the disk-full message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if seal:
            from cliptune.files.integrity import seal as seal_file

            seal_file(tmp, path)
        os.replace(tmp, path)
    except (KeyboardInterrupt, SystemExit):
        tmp.unlink(missing_ok=True)
        raise
    except BaseException as exc:
        full = _disk_full(exc, tmp)
        error = _disk_full_error(path, tmp, expected_bytes) if full else None
        tmp.unlink(missing_ok=True)
        if error is not None:
            raise error from exc
        raise


def reserve(path: str | os.PathLike) -> None:
    """Allocate the blocks of a sparse file (a fresh ``open_memmap``) now: on a full disk
    a memmap write dies of SIGBUS, while this raises ENOSPC the writer can report."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # the file system cannot preallocate; writes report ENOSPC themselves
            raise


def write_json(path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(path, df, seal: bool = False) -> None:
    with atomic_path(path, seal=seal) as tmp:
        df.to_parquet(tmp, index=False)


def save_figure(fig, path, dpi: int = 150) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
