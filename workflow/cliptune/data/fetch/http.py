"""Resumable, verified HTTP downloads for large dataset archives.

COCO's image zips are 6-13 GB and are served over plain HTTP, so a download must
survive dropped connections (resume with an HTTP ``Range`` request), must never leave a
half-written or corrupt file under the final name (data land in ``<dest>.part`` and are
moved into place only after size/checksum verification), and must fail with a message
that tells the user how to proceed offline (place the file manually at ``dest``).

Only the standard library is used for networking; the progress bar is
cliptune.runtime.progress.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from cliptune.files.hashing import file_digests
from cliptune.runtime import progress as run_progress

log = logging.getLogger(__name__)

__all__ = ["COCO2014_FILES", "DownloadError", "download", "verify_file"]


class DownloadError(RuntimeError):
    """A download failed or its result did not verify."""


# Official COCO 2014 archives. cocodataset.org itself publishes no checksums, so the
# values below come from other public code, each seen in several independent projects:
# - sizes: the Content-Length the server reports (wget/Keras download logs quoted in
#   public tutorials, and scripts that pin the byte counts);
# - md5: the values pinned by PaddlePaddle's COCO download script, Salesforce LAVIS'
#   COCO builders and the chainer/fcn dataset helpers. For annotations_trainval2014.zip
#   the md5 also equals the S3 ETag that a HEAD request returns (a single-part S3
#   upload's ETag is the object's md5). No sha256 is published for any of them.
COCO2014_FILES: dict[str, dict] = {
    "train2014.zip": {
        "url": "http://images.cocodataset.org/zips/train2014.zip",
        "size": 13_510_573_713,
        "md5": "0da8c0bd3d6becc4dcb32757491aca88",
        "sha256": None,
    },
    "val2014.zip": {
        "url": "http://images.cocodataset.org/zips/val2014.zip",
        "size": 6_645_013_297,
        "md5": "a3d79f5ed8d289b7a7554ce06a5782b3",
        "sha256": None,
    },
    "annotations_trainval2014.zip": {
        "url": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        "size": 252_872_794,
        "md5": "0a379cfc70b0e71301e0f377548639bd",
        "sha256": None,
    },
}

_MAX_BACKOFF = 60.0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Retryable(Exception):
    """Transient failure: connection error, truncated body or 5xx answer."""


def verify_file(
    path: Path | str,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
) -> None:
    """Raise :class:`DownloadError` unless ``path`` exists and matches every given check.

    Size is checked first because it is free and catches truncated files without
    hashing gigabytes.
    """
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{path} does not exist (or is not a regular file)")
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        raise DownloadError(
            f"size mismatch for {path}: expected {size} bytes, got {got_size} bytes"
        )
    expected = {a: h.lower() for a, h in (("sha256", sha256), ("md5", md5)) if h}
    if not expected:
        return
    got = file_digests(path, list(expected))
    bad = [a for a in expected if got[a] != expected[a]]
    if bad:
        details = "; ".join(f"expected {a} {expected[a]}, got {got[a]}" for a in bad)
        raise DownloadError(f"checksum mismatch for {path}: {details}")


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _fetch_once(
    url: str,
    part: Path,
    *,
    size: int | None,
    timeout: float,
    chunk_size: int,
    progress: bool,
    desc: str,
) -> None:
    """One HTTP request that appends to (or restarts) ``part``.

    Returns when the server has sent everything it announced; raises :class:`_Retryable`
    for anything worth another attempt and :class:`DownloadError` for permanent errors.
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        # More bytes than the file should have: the .part belongs to something else.
        log.warning("%s is larger than the expected %d bytes; restarting", part, size)
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # already complete; verification decides whether it is good
    response = _open(url, part, offset, timeout)
    if response is None:
        return
    with response:
        mode, offset = _write_mode(response, part, offset, url)
        length_hdr = response.headers.get("Content-Length")
        length = int(length_hdr) if length_hdr and length_hdr.isdigit() else None
        total = offset + length if length is not None else size
        if size is not None and total is not None and total != size:
            log.warning("server reports %d bytes for %s, expected %d", total, url, size)
        bar = run_progress(total=total, initial=offset, desc=desc, disable=not progress,
                           unit="B", unit_scale=True, unit_divisor=1024, leave=False)
        try:
            received = _stream(response, part, mode, chunk_size, bar)
        finally:
            bar.close()
        # http.client returns b"" instead of raising when the peer closes early.
        if length is not None and received < length:
            raise _Retryable(f"connection closed after {received} of {length} bytes")


def _open(url: str, part: Path, offset: int, timeout: float):
    """The response of a (Range) request from ``offset``, or None when a 416 says the
    ``.part`` is already complete."""
    # identity encoding: byte offsets in Range must refer to the stored file.
    headers = {"User-Agent": "cliptune-download/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            # Nothing left to send past our offset: the .part is most likely complete.
            # If the server tells us the real total and it differs, start over.
            m = re.match(r"bytes\s+\*/(\d+)", err.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"HTTP 416 with total {m.group(1)} != local {offset}") from err
            return None
        if err.code >= 500 or err.code in (408, 429):
            raise _Retryable(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise _Retryable(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from err


def _write_mode(response, part: Path, offset: int, url: str) -> tuple[str, int]:
    """("ab", offset) when the server honoured the Range request, else ("wb", 0)."""
    if offset and response.status == 206:
        m = _CONTENT_RANGE.match(response.headers.get("Content-Range", "") or "")
        if not m or int(m.group(1)) != offset:
            # A range we did not ask for; appending it would corrupt the file.
            part.unlink(missing_ok=True)
            raise _Retryable(f"unexpected Content-Range {m and m.group(0)!r}")
        return "ab", offset
    if offset:
        log.info("server ignored the Range request for %s; restarting from zero", url)
    return "wb", 0


def _stream(response, part: Path, mode: str, chunk_size: int, bar) -> int:
    """Copy the body into ``part``; returns the bytes received."""
    received = 0
    with open(part, mode) as f:
        while True:
            try:
                chunk = response.read(chunk_size)
            except (http.client.HTTPException, OSError) as err:
                # Bytes already written stay in .part so the retry resumes.
                raise _Retryable(f"{type(err).__name__}: {err}") from err
            if not chunk:
                return received
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))


def download(
    url: str,
    dest: Path | str,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` with resume, retries and verification; return ``dest``.

    Data are written to ``<dest>.part``; an existing ``.part`` is resumed with a
    ``Range`` request. Transient failures are retried ``retries`` times, sleeping
    ``backoff * 2**attempt`` seconds (capped at 60 s) in between. The file is renamed
    to ``dest`` only after ``size``/``sha256``/``md5`` (whichever are given) match.
    If ``dest`` already exists and verifies, nothing is downloaded.
    """
    dest = Path(dest)
    part = _part_path(dest)
    if not (sha256 or md5):
        log.warning("no checksum given for %s: %s will be unverified", url, dest)
    if _already_there(dest, sha256=sha256, md5=md5, size=size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fetch = functools.partial(_fetch_once, url, part, size=size, timeout=timeout,
                              chunk_size=chunk_size, progress=progress, desc=dest.name)
    _with_retries(fetch, url, part, dest, retries, backoff)
    try:
        verify_file(part, sha256=sha256, md5=md5, size=size)
    except DownloadError as err:
        # A complete-but-wrong file cannot be fixed by resuming; drop it.
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{err}. Source: {url}. The bad download was deleted; re-run to fetch it "
            f"again. If it keeps failing, the server's file changed or the expected "
            f"checksum is wrong: check the source, or place a verified copy at "
            f"{dest.resolve()}."
        ) from err
    os.replace(part, dest)
    log.info("downloaded %s -> %s", url, dest)
    return dest


def _already_there(dest: Path, **checks) -> bool:
    """True when ``dest`` exists and verifies; a file that fails is deleted."""
    if not dest.exists():
        return False
    try:
        verify_file(dest, **checks)
    except DownloadError as err:
        # A file under the final name that fails verification must not be used.
        log.warning("existing %s failed verification (%s); downloading again", dest, err)
        dest.unlink()
        return False
    log.info("%s already present and verified", dest)
    return True


def _with_retries(fetch, url: str, part: Path, dest: Path, retries: int,
                  backoff: float) -> None:
    """Call ``fetch`` until it completes, sleeping with exponential backoff after each
    transient failure; after ``retries`` retries, a DownloadError naming the way out."""
    attempt = 0
    while True:
        try:
            fetch()
            return
        except _Retryable as err:
            if attempt >= retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"could not download {url} after {attempt + 1} attempt(s): {err}. "
                    + (f"{kept} bytes are kept in {part}; re-run to resume. " if kept else "")
                    + f"If this machine is offline or the host is unreachable, fetch the "
                    f"file elsewhere and place it manually at {dest.resolve()} "
                    f"(it is verified before use)."
                ) from err
            delay = min(backoff * 2**attempt, _MAX_BACKOFF)
            log.warning("download of %s failed (%s); retry %d/%d in %.1fs", url, err,
                        attempt + 1, retries, delay)
            time.sleep(delay)
            attempt += 1
