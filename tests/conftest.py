"""Shared fixtures. Tests never download: HF is forced offline for the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def snakemake_batch(requests: list[dict], workdir: Path) -> list[subprocess.CompletedProcess]:
    """Run several `snakemake <args>` (each {"args", "cwd", optional "env"}) in one
    process that imports torch and the rules' modules once, then forks per command
    (tests/snakemake_batch.py): a dry run costs its parse, not its imports. Returns one
    CompletedProcess per request, stdout holding its stdout and stderr."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = [{"args": [str(a) for a in r["args"]], "cwd": str(r["cwd"]),
             "env": r.get("env", env), "log": str(workdir / f"{i}.log")}
            for i, r in enumerate(requests)]
    (workdir / "requests.json").write_text(json.dumps(full))
    subprocess.run([sys.executable, str(REPO / "tests" / "snakemake_batch.py"),
                    str(workdir / "requests.json"), str(workdir / "results.json")],
                   check=True, env=env)
    codes = json.loads((workdir / "results.json").read_text())
    return [subprocess.CompletedProcess(["snakemake", *r["args"]], code,
                                        Path(r["log"]).read_text(errors="replace"), "")
            for r, code in zip(full, codes, strict=True)]
