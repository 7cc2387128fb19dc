"""Shared fixtures. Tests never download: HF is forced offline for the session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
# Subprocesses (snakemake, torchrun) must import this checkout's package too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "workflow"), *filter(None, [os.environ.get("PYTHONPATH")])]
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


def snakemake_batch(requests: list[dict]) -> list[subprocess.CompletedProcess]:
    """`snakemake <args>` for each request ({"args", "cwd", optional "env"}), in order,
    through the one SnakemakeServer."""
    return [SNAKEMAKE.run(r["args"], r["cwd"], r.get("env")) for r in requests]
