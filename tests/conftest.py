"""Shared fixtures. Tests never download: HF is forced offline for the session."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
# Subprocesses (snakemake, torchrun) must import this checkout's package too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "workflow"), *filter(None, [os.environ.get("PYTHONPATH")])]
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Under pytest-xdist (`make test` runs two workers on two cores) each worker keeps to one
# torch thread, so the workers do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "shipped_rule_all: each shipped config's own toy `rule all` (make test-all)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests of the shared finished toy run go first and to one xdist worker (``--dist
    loadgroup``), which builds it once while the other worker runs the rest."""
    uses = [item for item in items if "toy_run" in getattr(item, "fixturenames", ())]
    for item in uses:
        item.add_marker(pytest.mark.xdist_group("toy_run"))
    used = {id(item) for item in uses}
    items[:] = uses + [item for item in items if id(item) not in used]


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` xdist marks a grouped test by suffixing its node id; a
    pytest whose node ids ignore that would let both workers build the toy run."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    loose = [item.nodeid for item in session.items
             if "toy_run" in getattr(item, "fixturenames", ())
             and not item.nodeid.endswith("@toy_run")]
    if loose:
        raise pytest.UsageError(
            f"pytest-xdist did not group {loose[0]} with the other toy-run tests (this "
            "pytest ignores xdist's node-id suffix); install the dev extra's pytest "
            "(pip install 'pytest<9.2') or run with TEST_WORKERS=1")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP (text + vision) saved with save_pretrained, built offline."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPTokenizerFast,
        CLIPVisionConfig,
    )

    out = tmp_path_factory.mktemp("tiny_clip")
    # A word-level vocab is enough for a tokenizer: build it from the demo's words.
    vocab_words = ["a", "an", "the", "of", "and", "on", "in", "with", "is", "there", "are", "two", "three", "one", "shape", "shapes", "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "circle", "square", "triangle", "star", "cross", "ring", "small", "large", "big", "tiny", "striped", "dotted", "solid", "left", "right", "top", "bottom", "center", "middle", "background", "grey", "gray", "sky", "sand", "dark", "picture", "image", "photo"]
    # Character tokens plus left-to-right merges that build each whole word, so the
    # demo's words become single tokens (transformers 5 takes vocab/merges in memory).
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz.,":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = []
    for word in vocab_words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    tok = CLIPTokenizerFast(vocab=vocab, merges=merges)
    assert len(tok("a red circle")["input_ids"]) == 5, "tiny tokenizer lost its vocabulary"
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8)
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    import torch

    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------- Snakemake in tests

# A tiny demo study: the base of the workflow tests' own configs.
TINY = {
    "dataset": {
        "name": "tiny",
        "source": "demo",
        "demo": {"train_images": 96, "val_images": 40, "image_size": 40, "seed": 1},
    },
    "image_size": 32,
    "text_encoder": {"model": "offline-minilm", "max_length": 32},
    "model": {"backbone": "resnet18", "weights": None, "attention_heads": 4,
              "head": {"hidden_dim": 64}},
    "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3},
    "eval": {"score_memory_mb": 0.01},
    "variants": {"baseline": {}, "bn_head": {"model": {"head": {"norm": "batchnorm"}}}},
}
# The one finished toy run the suite shares (``toy_run``): TINY plus what makes it run
# every rule a shipped config's DAG has (tests/test_shipped_configs.py checks that):
# a frozen-trunk variant (cached trunk features) and a one-trial HPO search; and a
# replicate seed of the baseline (tests/test_seeds_workflow.py). Each variant costs its
# train, evaluate, figures and loss-curve jobs (a Python and torch start each).
TOY_RUN = {
    **TINY,
    "variants": {"baseline": {"train": {"seeds": [0, 1]}},
                 "frozen": {"model": {"freeze_backbone": True}}},
    "hpo": {"trials": 1, "epochs": 1,
            "space": {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}},
}
TOY_HPO_TARGET = "results/tiny/hpo/baseline/best_overlay.yaml"
# Jobs that summarise all variants: they legitimately rerun when any variant changes
# (current_study: the top-level copies of the study's aggregates).
AGGREGATES = {"aggregate", "loss_overlay", "queries_across_variants", "summary", "current_study",
              "all"}


class SnakemakeServer:
    """tests/snakemake_server.py, started on first use: runs each `snakemake` command
    line in a fork of one process that imported torch and the rules' modules once, so a
    dry run costs its parse, not its imports."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.logs: Path | None = None
        self.count = 0

    def run(self, args: list, cwd: Path | str, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        env = env or {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.logs = self.logs or Path(tempfile.mkdtemp(prefix="snakemake_server_"))
                self.proc = subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "snakemake_server.py")],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.count += 1
            out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
            args = [str(a) for a in args]
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out),
                       "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
            if not answer:
                raise RuntimeError("tests/snakemake_server.py stopped; its stderr is above")
            proc = subprocess.CompletedProcess(["snakemake", *args], json.loads(answer),
                                               out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))
            out.unlink()
            err.unlink()
            return proc

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()
        if self.logs is not None:
            shutil.rmtree(self.logs, ignore_errors=True)


SNAKEMAKE = SnakemakeServer()


def pytest_unconfigure(config):
    SNAKEMAKE.close()


def snakemake(workdir: Path, repo: Path, *args: str, check=True) -> subprocess.CompletedProcess:
    """`snakemake --cores 2 <args>` on ``workdir``/config.yaml."""
    cmd = ["-s", repo / "Snakefile", "--directory", workdir, "--configfile",
           workdir / "config.yaml", "--cores", "2", *args]
    proc = SNAKEMAKE.run(cmd, os.getcwd())
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def snakemake_batch(requests: list[dict]) -> list[subprocess.CompletedProcess]:
    """`snakemake <args>` for each request ({"args", "cwd", optional "env"}), in order."""
    return [SNAKEMAKE.run(r["args"], r["cwd"], r.get("env")) for r in requests]


def write_config(workdir: Path, cfg: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def dry_run_of_toy_run_with(workdir: Path, repo: Path, cfg: dict,
                            *targets: str) -> subprocess.CompletedProcess:
    """`snakemake -n` of the finished toy run in ``workdir`` with ``cfg`` as its config;
    TOY_RUN is put back afterwards, so the run stays as the other tests expect it."""
    write_config(workdir, cfg)
    try:
        return snakemake(workdir, repo, "-n", *targets)
    finally:
        write_config(workdir, TOY_RUN)


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("Reasons:")[0]
    jobs = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def planned(proc: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run plans."""
    jobs, rule = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            if rule:
                jobs.append((rule, ""))
            rule = m.group(1)
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and rule:
            jobs.append((rule, m.group(1)))
            rule = None
    if rule:
        jobs.append((rule, ""))
    return jobs


def caption_table(split: str, cfg: dict = TINY) -> str:
    """The shared caption cache of one split of ``cfg`` (cliptune.data.caches.keys)."""
    from cliptune.config.load import load_config
    from cliptune.data.caches.keys import captions_paths

    return captions_paths(load_config(cfg)["dataset"], split)["captions"]


@dataclass(frozen=True)
class ToyRun:
    workdir: Path
    rules_run: frozenset[str]  # every rule a job of the run executed


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> ToyRun:
    """TOY_RUN finished: `rule all`, then its HPO search. Tests that change its
    config.yaml put TOY_RUN back."""
    workdir = tmp_path_factory.mktemp("toy_run")
    write_config(workdir, TOY_RUN)
    rules = set()
    for targets in (["all"], [TOY_HPO_TARGET]):
        proc = snakemake(workdir, REPO, *targets)
        rules |= {rule for rule, _ in planned(proc)}
    return ToyRun(workdir, frozenset(rules))


def check_hpo_outputs(out: Path, full: dict) -> None:
    """The search ran its trials over the configured space on the baseline, and the best
    overlay sets every searched key (tied keys each) to the best trial's value."""
    from cliptune.config.hpo_space import expand

    trials = (out / "trials.csv").read_text().strip().splitlines()
    assert len(trials) - 1 == full["hpo"]["trials"], trials
    best = json.loads((out / "best_params.json").read_text())
    assert set(best["params"]) == set(full["hpo"]["space"]), best
    overlay = yaml.safe_load((out / "best_overlay.yaml").read_text())
    variant = overlay["variants"][f"{full['baseline']}_hpo"]
    for key, value in best["params"].items():
        for path in expand(key):
            node = variant
            for part in path.split("."):
                node = node[part]
            assert node == value, (path, node, value)


# ------------------------------------------------- a local stand-in for the HF hub

REPO_ID = "acme/tiny-clip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sibling(name: str, data: bytes, lfs: bool) -> dict:
    entry = {"rfilename": name, "size": len(data),
             "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    if lfs:
        entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "pointerSize": 134}
    return entry


class FakeHub(ThreadingHTTPServer):
    """Answers the three calls huggingface_hub makes: repo info, HEAD and GET of a file."""

    def __init__(self, files: dict[str, bytes], served: dict[str, bytes] | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.served, self.requests = files, served or files, []
        self.info = {"id": REPO_ID, "modelId": REPO_ID, "sha": COMMIT, "private": False,
                     "siblings": [_sibling(n, d, n.endswith((".safetensors", ".h5", ".pth")))
                                  for n, d in files.items()]}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _file(self):
        prefix = f"/{REPO_ID}/resolve/"
        if not self.path.startswith(prefix):
            return None
        name = self.path[len(prefix):].split("/", 1)[1].split("?")[0]
        return name, self.server.served.get(name)

    def _send(self, body: bytes | None, headers: dict, head: bool):
        self.send_response(200 if body is not None else 404)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        if body is not None and not head:
            self.wfile.write(body)

    def do_HEAD(self, head=True):  # noqa: N802 - http.server naming
        self.server.requests.append((self.command, self.path))
        if self.path.startswith(f"/api/models/{REPO_ID}/revision/"):
            return self._send(json.dumps(self.server.info).encode(),
                              {"Content-Type": "application/json"}, head)
        found = self._file()
        if found is None or found[1] is None:
            return self._send(None, {}, head)
        name, body = found
        etag = hashlib.sha256(self.server.files[name]).hexdigest()
        return self._send(body, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, head)

    def do_GET(self):  # noqa: N802
        return self.do_HEAD(head=False)
