"""The weights step: what the variants need, fetched from a local stand-in for the
hub (HF_ENDPOINT) and a torchvision URL, verified, then loaded with the hub offline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import COMMIT, REPO_ID, FakeHub

from cliptune.models.weights import (
    WeightsError,
    fetch_torchvision_file,
    hub_files,
    hub_repo,
    needed_weights,
    weight_key,
)


@pytest.fixture
def hub(tiny_clip_dir):
    def start(tamper: str | None = None):
        files = {p.name: p.read_bytes() for p in tiny_clip_dir.iterdir() if p.is_file()}
        files["tf_model.h5"] = b"a second copy of the weights nobody loads"
        served = dict(files)
        if tamper:
            served[tamper] = served[tamper][:-1] + b"\0"
        server = FakeHub(files, served)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    servers = []
    yield start
    for server in servers:
        server.shutdown()


FETCH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from cliptune.models.weights import fetch_weights
    spec = {"source": "hf", "repo": sys.argv[1], "revision": "main"}
    fetch_weights(spec, Path(sys.argv[2]) / "marker.json", sys.argv[2])
""")

LOAD_OFFLINE = textwrap.dedent("""
    import sys
    from cliptune.models.weights import use_local_weights
    use_local_weights(sys.argv[2])          # what every model-loading job does first
    from transformers import CLIPModel
    model = CLIPModel.from_pretrained(sys.argv[1])
    print("loaded", model.config.projection_dim)
""")


def _python(code: str, *args: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=300)


def test_fetch_from_hub_then_load_offline(hub, tmp_path):
    server = hub()
    root = tmp_path / "weights"
    proc = _python(FETCH, REPO_ID, str(root), HF_ENDPOINT=server.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    marker = json.loads((root / "marker.json").read_text())
    assert marker["commit"] == COMMIT and "model.safetensors" in marker["files"]
    # One weight format only: the h5 copy is neither listed nor requested.
    assert "tf_model.h5" not in marker["files"]
    assert not [p for _, p in server.requests if p.endswith("tf_model.h5")]
    # With the hub unreachable (a dead endpoint, offline mode on) the model still loads.
    proc = _python(LOAD_OFFLINE, REPO_ID, str(root), HF_ENDPOINT="http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded" in proc.stdout


def test_a_corrupt_download_is_refused(hub, tmp_path):
    server = hub(tamper="model.safetensors")
    proc = _python(FETCH, REPO_ID, str(tmp_path / "w"), HF_ENDPOINT=server.url)
    assert proc.returncode != 0
    assert "model.safetensors" in proc.stderr and ("hash" in proc.stderr
                                                   or "consistency" in proc.stderr.lower())
    assert not (tmp_path / "w" / "marker.json").exists()


def test_unreachable_hub_names_the_fix(tmp_path):
    proc = _python(FETCH, REPO_ID, str(tmp_path / "w"), HF_ENDPOINT="http://127.0.0.1:9")
    assert proc.returncode != 0
    assert "weights rule runs on the submit host" in proc.stderr
    assert f"hf download {REPO_ID}" in proc.stderr


def test_torchvision_file_is_checked_against_its_name(tmp_path):
    data = b"pretend state dict"
    good = f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / good).write_bytes(data)
    (tmp_path / "srv" / "bad-00000000.pth").write_bytes(data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _static(tmp_path / "srv"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        record = fetch_torchvision_file(f"{url}/{good}", tmp_path / "torch")
        assert Path(record["file"]) == tmp_path / "torch/hub/checkpoints" / good
        with pytest.raises(WeightsError):
            fetch_torchvision_file(f"{url}/bad-00000000.pth", tmp_path / "torch")
    finally:
        server.shutdown()


def _static(folder: Path):
    class Static(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            path = folder / self.path.lstrip("/")
            body = path.read_bytes() if path.is_file() else None
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    return Static


def test_needed_weights_per_variant(tmp_path):
    base = {"text_encoder": {"model": "openai/clip-vit-base-patch32"},
            "model": {"kind": "resnet", "backbone": "resnet50", "weights": "IMAGENET1K_V2"}}
    specs = needed_weights(base)
    assert [weight_key(s) for s in specs] == ["hf/openai--clip-vit-base-patch32@main",
                                              "torchvision/resnet50.IMAGENET1K_V2"]
    offline = {"text_encoder": {"model": "offline-minilm"},
               "model": {"kind": "resnet", "backbone": "resnet18", "weights": None}}
    assert needed_weights(offline) == []
    clip = {"text_encoder": {"model": str(tmp_path)},
            "model": {"kind": "clip", "clip": {"model": "acme/clip"}}}
    assert [s["repo"] for s in needed_weights(clip)] == ["acme/clip"]
    # CLIP's BPE is built from a file in the open_clip_torch package: nothing to fetch.
    scratch = {"text_encoder": {"model": "offline-minilm"},
               "model": {"kind": "dual_encoder", "dual_encoder": {"tokenizer": "clip-bpe"}}}
    assert needed_weights(scratch) == [] and hub_repo("clip-bpe") is None
    scratch["model"]["dual_encoder"]["tokenizer"] = "openai/clip-vit-base-patch32"
    assert [s["repo"] for s in needed_weights(scratch)] == ["openai/clip-vit-base-patch32"]
    assert hub_repo("./local/dir") is None and hub_repo("bert-base-uncased") == "bert-base-uncased"
    assert hub_files(["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5",
                      ".gitattributes", "onnx/model.onnx"]) == ["config.json",
                                                                "model.safetensors"]
    assert hub_files(["config.json", "pytorch_model.bin"]) == ["config.json",
                                                               "pytorch_model.bin"]


def test_packaged_names_match_their_modules_without_importing_torch():
    import subprocess
    import sys

    from cliptune.models import text_encoder, weights

    assert weights.OFFLINE_ALIAS == text_encoder.OFFLINE_ALIAS
    # The Snakefile imports weights while it is parsed: torch must stay out of that.
    code = "import sys, cliptune.models.weights; sys.exit(2 * ('torch' in sys.modules))"
    workflow_dir = str(Path(weights.__file__).parents[2])
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ,
                          "PYTHONPATH": workflow_dir}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr or "importing weights imported torch"
