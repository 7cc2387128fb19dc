"""Streaming file digests: downloads, hub weights and the search cache key hash files
this way (archives are many GB, so never read whole)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_digests(path: Path | str, algos: list[str]) -> dict[str, str]:
    """Hex digest per algorithm (hashlib names), all from one pass over the file."""
    hashers = {a: hashlib.new(a) for a in algos}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def file_sha256(path: Path | str) -> str:
    return file_digests(path, ["sha256"])["sha256"]
