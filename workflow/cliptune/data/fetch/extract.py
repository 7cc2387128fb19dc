"""Safe, restartable extraction of zip and tar archives.

Archives come from the network, so a member name is untrusted input: absolute paths,
``..`` components, drive letters, links and device files could write outside the
target or plant files that later writes follow. Every member is validated before
anything is written, so a rejected archive leaves the file system untouched. The
standard library does not cover this: ``zipfile`` silently rewrites unsafe names
(drops ``..``, ``/`` and drive letters) instead of refusing them and writes a symlink
member as a plain file, and ``tarfile``'s ``data`` filter refuses a bad member only
when it reaches it, after earlier members are written.

Extraction of the COCO zips takes minutes; a completion marker is written only after
the last member is in place. A missing marker means an interrupted run, and the next
call extracts everything again (overwriting); a marker matching the archive's size and
mtime means the work is done and the call returns at once.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from cliptune.files.atomic import write_json
from cliptune.runtime import progress

__all__ = ["UnsafeArchiveError", "safe_extract"]

_DRIVE = re.compile(r"^[A-Za-z]:")
_COPY_CHUNK = 1 << 20


class UnsafeArchiveError(RuntimeError):
    """An archive member could escape the target or is not a plain file/directory."""


def _member_path(name: str, target: Path, archive: Path) -> Path | None:
    """Return where ``name`` lands under ``target``, or raise if it could escape.

    Backslashes count as separators so an archive made on Windows cannot smuggle
    ``..\\`` past a POSIX-only check. Returns None for names that denote ``target``.
    """

    def bad(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"unsafe member {name!r} in {archive}: {why}")

    if "\x00" in name:
        raise bad("NUL byte in name")
    if name.startswith(("/", "\\")):
        raise bad("absolute path")
    if _DRIVE.match(name):
        raise bad("drive letter")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise bad("'..' path component")
    if not parts:
        return None
    dest = target.joinpath(*parts)
    # resolve() follows symlinks already present under target (e.g. from an older
    # extraction or another tool), which a name-only check would miss.
    root = target.resolve()
    if not dest.resolve().is_relative_to(root):
        raise bad(f"resolves outside {target}")
    return dest


def _plan_zip(zf: zipfile.ZipFile, target: Path, archive: Path) -> list[tuple]:
    plan = []
    for info in zf.infolist():
        mode = info.external_attr >> 16  # Unix st_mode for zips made on Unix; 0 otherwise
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"unsafe member {info.filename!r} in {archive}: symlink")
        if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArchiveError(
                f"unsafe member {info.filename!r} in {archive}: special file (mode {mode:o})"
            )
        dest = _member_path(info.filename, target, archive)
        if dest is not None:
            plan.append((info, dest, info.is_dir() or stat.S_ISDIR(mode)))
    return plan


def _plan_tar(tf: tarfile.TarFile, target: Path, archive: Path) -> list[tuple]:
    plan = []
    for member in tf.getmembers():
        if member.issym() or member.islnk():
            kind = "symlink" if member.issym() else "hardlink"
            raise UnsafeArchiveError(
                f"unsafe member {member.name!r} in {archive}: {kind} to {member.linkname!r}"
            )
        if not (member.isreg() or member.isdir()):
            raise UnsafeArchiveError(
                f"unsafe member {member.name!r} in {archive}: device/fifo/special file"
            )
        dest = _member_path(member.name, target, archive)
        if dest is not None:
            plan.append((member, dest, member.isdir()))
    return plan


def _write(src, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():  # never write through a link that appeared after validation
        dest.unlink()
    with src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, _COPY_CHUNK)


def _extract(plan: list[tuple], open_member, target: Path, marker: Path,
             archive: Path) -> int:
    """Write every planned member (``open_member(member)`` reads one); returns the count."""
    target.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # a stale marker must not outlive a crash below
    # train2014.zip: 82k files, 13 GB; show how far extraction has got.
    for member, dest, is_dir in progress(plan, desc=f"extract {archive.name}", unit="file"):
        if is_dir:
            dest.mkdir(parents=True, exist_ok=True)
        else:
            _write(open_member(member), dest)
    return len(plan)


def _stamp(archive: Path) -> dict:
    # size+mtime instead of a hash: hashing 13 GB on every workflow run costs minutes,
    # and download.py replaces the file (new mtime) whenever its content changes.
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _marker_matches(marker: Path, stamp: dict) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in stamp.items())


def safe_extract(
    archive: Path | str, target: Path | str, *, marker_name: str | None = None
) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) ``archive`` into ``target``; return the marker path.

    Raises :class:`UnsafeArchiveError` (naming the member) before writing anything if
    any member is unsafe. The marker defaults to ``target / f".{archive.name}.complete"``.
    """
    archive = Path(archive)
    target = Path(target)
    marker = target / (marker_name or f".{archive.name}.complete")
    stamp = _stamp(archive)
    if _marker_matches(marker, stamp):
        return marker

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            count = _extract(_plan_zip(zf, target, archive), zf.open, target, marker, archive)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            count = _extract(_plan_tar(tf, target, archive), tf.extractfile, target, marker,
                             archive)
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")

    write_json(marker, {**stamp, "members": count})  # atomic: never a half-written marker
    return marker
