"""Tests for cliptune.data.fetch.http and cliptune.data.fetch.extract.

A threaded http.server on 127.0.0.1 (random port) stands in for the COCO host; it
honours Range requests and can be told to misbehave (drop the connection mid-body,
ignore Range, serve the wrong bytes, answer 5xx). No test touches the network.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import stat
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cliptune.data.fetch import http as dl
from cliptune.data.fetch.extract import UnsafeArchiveError, safe_extract
from cliptune.data.fetch.http import COCO2014_FILES, DownloadError, download, verify_file

DATA = os.urandom(256 * 1024 + 123)  # odd size so chunk boundaries never line up exactly
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
FAST = {"backoff": 0.001, "timeout": 5, "chunk_size": 16 * 1024, "progress": False}


# ---------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so "close mid-body" is just returning early.
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests.append(dict(self.headers))
            fail_5xx = srv.fail_5xx > 0
            srv.fail_5xx -= fail_5xx
            drop = srv.drop_first > 0
            srv.drop_first -= drop
        if fail_5xx:
            self.send_error(503, "try later")
            return
        body = srv.body
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Content-Type", "application/zip")
        self.end_headers()
        if drop:
            # Announce the full length, deliver half, hang up.
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.requests = []
    srv.body = DATA
    srv.fail_5xx = 0
    srv.drop_first = 0
    srv.ignore_range = False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/train2014.zip"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _ranges(srv) -> list[str | None]:
    return [r.get("Range") for r in srv.requests]


# ---------------------------------------------------------------------------- download


def test_happy_path_sha256_and_md5(server, tmp_path):
    dest = tmp_path / "sub" / "file.zip"
    out = download(server.url, dest, sha256=SHA256, md5=MD5, size=len(DATA), **FAST)
    assert out == dest
    assert dest.read_bytes() == DATA
    assert not dest.with_name("file.zip.part").exists()
    # Already present and verified: no second request.
    download(server.url, dest, sha256=SHA256, md5=MD5, **FAST)
    assert len(server.requests) == 1
    # md5 alone (the form COCO's published values take) also works.
    download(server.url, tmp_path / "m.zip", md5=MD5.upper(), **FAST)


def test_progress_bar_enabled_does_not_break(server, tmp_path):
    dest = tmp_path / "p.zip"
    download(server.url, dest, sha256=SHA256, **{**FAST, "progress": True})
    assert dest.read_bytes() == DATA


def test_drop_mid_file_retries_with_range(server, tmp_path):
    server.drop_first = 1
    dest = tmp_path / "f.zip"
    download(server.url, dest, sha256=SHA256, retries=3, **FAST)
    assert dest.read_bytes() == DATA
    assert _ranges(server) == [None, f"bytes={len(DATA) // 2}-"]


def test_process_dies_then_resumes(server, tmp_path):
    server.drop_first = 1
    dest = tmp_path / "f.zip"
    part = tmp_path / "f.zip.part"
    with pytest.raises(DownloadError) as exc:
        download(server.url, dest, sha256=SHA256, retries=0, **FAST)
    assert server.url in str(exc.value)
    assert part.stat().st_size == len(DATA) // 2 and not dest.exists()
    # A fresh call (new "process") picks up the .part.
    download(server.url, dest, sha256=SHA256, retries=0, **FAST)
    assert server.requests[-1].get("Range") == f"bytes={len(DATA) // 2}-"
    assert dest.read_bytes() == DATA and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.drop_first = 1
    server.ignore_range = True
    dest = tmp_path / "f.zip"
    download(server.url, dest, sha256=SHA256, size=len(DATA), retries=2, **FAST)
    assert dest.read_bytes() == DATA
    assert _ranges(server)[1] is not None  # we asked to resume; server sent 200 anyway


def test_complete_part_and_416(server, tmp_path):
    dest = tmp_path / "f.zip"
    (tmp_path / "f.zip.part").write_bytes(DATA)
    download(server.url, dest, sha256=SHA256, **FAST)  # size unknown -> asks, gets 416
    assert dest.read_bytes() == DATA
    assert _ranges(server) == [f"bytes={len(DATA)}-"]


def test_5xx_is_retried(server, tmp_path):
    server.fail_5xx = 2
    dest = tmp_path / "f.zip"
    download(server.url, dest, md5=MD5, retries=2, **FAST)
    assert dest.read_bytes() == DATA and len(server.requests) == 3


def test_wrong_checksum_deletes_and_explains(server, tmp_path):
    server.body = bytes(reversed(DATA))  # same size, different content
    dest = tmp_path / "f.zip"
    with pytest.raises(DownloadError) as exc:
        download(server.url, dest, sha256=SHA256, size=len(DATA), **FAST)
    msg = str(exc.value)
    assert SHA256 in msg and hashlib.sha256(server.body).hexdigest() in msg
    assert server.url in msg
    assert not dest.exists() and not (tmp_path / "f.zip.part").exists()


def test_existing_corrupt_dest_is_replaced(server, tmp_path):
    dest = tmp_path / "f.zip"
    dest.write_bytes(b"garbage")
    download(server.url, dest, md5=MD5, **FAST)
    assert dest.read_bytes() == DATA


def test_unreachable_host_fails_fast_with_manual_hint(tmp_path):
    with socket.socket() as s:  # grab a free port, then leave it unbound
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/val2014.zip"
    dest = tmp_path / "val2014.zip"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as exc:
        download(url, dest, md5=MD5, retries=2, **FAST)
    assert time.monotonic() - t0 < 30  # a hang (no timeout) would take minutes
    msg = str(exc.value)
    assert url in msg and str(dest.resolve()) in msg and "manually" in msg
    assert not dest.exists()


def test_http_404_is_not_retried(server, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(dl.time, "sleep", calls.append)

    def fail(request, timeout):
        raise dl.urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(dl.urllib.request, "urlopen", fail)
    with pytest.raises(DownloadError, match="404"):
        download(server.url, tmp_path / "x", md5=MD5, retries=3, **FAST)
    assert calls == []


def test_missing_checksum_warns(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cliptune.data.fetch.http"):
        download(server.url, tmp_path / "f.zip", **FAST)
    assert "unverified" in caplog.text


def test_verify_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    verify_file(p, sha256=hashlib.sha256(b"abc").hexdigest(), md5=hashlib.md5(b"abc").hexdigest())
    with pytest.raises(DownloadError, match="expected 4 bytes, got 3"):
        verify_file(p, size=4)
    with pytest.raises(DownloadError, match="expected md5 0+, got"):
        verify_file(p, md5="0" * 32)
    with pytest.raises(DownloadError):
        verify_file(tmp_path / "missing")


def test_coco_table_shape():
    assert set(COCO2014_FILES) == {
        "train2014.zip",
        "val2014.zip",
        "annotations_trainval2014.zip",
    }
    for name, info in COCO2014_FILES.items():
        assert info["url"].endswith("/" + name)
        assert isinstance(info["size"], int) and info["size"] > 0
        assert info["md5"] is None or len(info["md5"]) == 32


# ---------------------------------------------------------------------------- extract


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, link_target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, link_target)
    return path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_zip_dotdot_rejected_before_writing(tmp_path):
    arc = _zip(tmp_path / "a.zip", {"ok.txt": b"ok", "../evil.txt": b"x"})
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.txt"):
        safe_extract(arc, target)
    assert not (tmp_path / "evil.txt").exists()
    assert not target.exists()  # not even the safe member


@pytest.mark.parametrize(
    "name", ["/abs/evil.txt", "C:/evil.txt", "sub/../../evil.txt", "..\\evil.txt"]
)
def test_zip_bad_names_rejected(tmp_path, name):
    arc = _zip(tmp_path / "a.zip", {name: b"x"})
    with pytest.raises(UnsafeArchiveError):
        safe_extract(arc, tmp_path / "out")
    assert _files(tmp_path / "out") == []


def test_zip_symlink_entry_rejected(tmp_path):
    arc = _zip(tmp_path / "a.zip", {"a.txt": b"a"}, symlinks={"link": "/etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="link.*symlink"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_symlink_in_target_rejected(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "sub").symlink_to(outside)
    arc = _zip(tmp_path / "a.zip", {"sub/x.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(arc, target)
    assert list(outside.iterdir()) == []


def _tar(path: Path, kind: bytes) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("fine.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"fine"))
        bad = tarfile.TarInfo("link")
        bad.type = kind
        bad.linkname = "/etc/passwd"
        tf.addfile(bad)
    return path


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_rejected(tmp_path, kind):
    arc = _tar(tmp_path / "a.tar.gz", kind)
    with pytest.raises(UnsafeArchiveError, match="'link'"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_gz_extracts(tmp_path):
    arc = tmp_path / "a.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        f = tarfile.TarInfo("dir/x.txt")
        f.size = 3
        tf.addfile(f, io.BytesIO(b"xyz"))
    marker = safe_extract(arc, tmp_path / "out")
    assert (tmp_path / "out" / "dir" / "x.txt").read_bytes() == b"xyz"
    assert marker == tmp_path / "out" / ".a.tar.gz.complete"


def test_zip_extract_marker_skip_and_redo(tmp_path):
    arc = _zip(tmp_path / "ann.zip", {"annotations/": b"", "annotations/c.json": b"{}"})
    target = tmp_path / "out"
    marker = safe_extract(arc, target)
    extracted = target / "annotations" / "c.json"
    assert extracted.read_bytes() == b"{}"
    assert marker == target / ".ann.zip.complete" and marker.is_file()

    # Marker present and matching: skipped (the tampered file is left alone).
    extracted.write_bytes(b"tampered")
    assert safe_extract(arc, target) == marker
    assert extracted.read_bytes() == b"tampered"

    # Marker missing (interrupted run): everything is extracted again.
    marker.unlink()
    safe_extract(arc, target)
    assert extracted.read_bytes() == b"{}" and marker.is_file()

    # Archive replaced (new size/mtime): marker no longer matches -> re-extract.
    extracted.write_bytes(b"tampered")
    _zip(arc, {"annotations/c.json": b'{"v": 2}'})
    safe_extract(arc, target)
    assert extracted.read_bytes() == b'{"v": 2}'

    custom = safe_extract(arc, target, marker_name="done.flag")
    assert custom == target / "done.flag" and custom.is_file()


def test_not_an_archive(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"not an archive")
    with pytest.raises(ValueError):
        safe_extract(p, tmp_path / "out")
