"""Atomic file writes: a crash or a full disk never leaves a half-written artifact."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, seal: bool = False) -> Iterator[Path]:
    """Yield a temp path in the same folder; rename it over ``path`` only on success.

    ``seal``: also record the finished file's size and digest (``cliptune.integrity``),
    so loaders that verify it catch later damage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if seal:
            from cliptune.integrity import seal as seal_file

            seal_file(tmp, path)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise OSError(
                exc.errno,
                f"disk full while writing {path}; free space on {path.parent} (or point "
                "results/ at a larger disk) and rerun: finished artifacts are untouched",
            ) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
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
