"""CLIP's byte-level BPE tokenizer (49,408 tokens), built offline from the merges file
that the ``open_clip_torch`` package ships (``open_clip/bpe_simple_vocab_16e6.txt.gz``,
MIT, the same file as OpenAI's CLIP repository).

The vocabulary is derived the way OpenAI's tokenizer derives it: the 256 byte symbols,
the same with the end-of-word marker ``</w>``, one token per merge (the first
49,152 - 256 - 2 merges of the file), then ``<|startoftext|>`` and ``<|endoftext|>``.
The result is a Hugging Face ``CLIPTokenizerFast`` (padding with ``<|endoftext|>``, as
CLIP's EOS pooling expects) whose ids equal ``open_clip.tokenize``'s for ordinary text;
unlike OpenAI's, it does not run ftfy / HTML unescaping on the text first.

Config value: ``model.dual_encoder.tokenizer: clip-bpe`` (CLIP_BPE). Nothing is
downloaded, so the ``weights`` rule skips it (cliptune.models.weights.hub_repo).
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import cache
from pathlib import Path

CLIP_BPE = "clip-bpe"
VOCAB_SIZE = 49408
MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
START, END = "<|startoftext|>", "<|endoftext|>"
# Merges that make tokens: the vocabulary holds 512 byte symbols, the merges and the two
# special tokens, 49,408 in all (the file lists more merges than CLIP uses).
N_MERGES = VOCAB_SIZE - 2 * 256 - 2


class TokenizerUnavailableError(RuntimeError):
    """The CLIP BPE merges file cannot be found (open_clip_torch not installed)."""


def merges_path() -> Path:
    """The merges file inside the installed open_clip package (without importing it:
    importing open_clip pulls in timm and takes seconds)."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.submodule_search_locations[0]) / MERGES_FILE if spec else None
    if path is None or not path.is_file():
        raise TokenizerUnavailableError(
            f"model.dual_encoder.tokenizer = {CLIP_BPE} reads {MERGES_FILE} from the PyPI "
            "package open_clip_torch, which is not installed here; `pip install "
            "open_clip_torch` (a cliptune dependency), or set the tokenizer to a local CLIP "
            "checkpoint directory holding vocab.json and merges.txt")
    return path


def byte_symbols() -> list[str]:
    """One printable character per byte value, in CLIP's vocabulary order.

    Bytes that are printable Latin-1 characters stand for themselves and come first;
    the rest (control characters, space, ...) are mapped, in byte order, to the
    characters from U+0100 upwards, so no byte turns into whitespace the BPE splits on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    n_other = 256 - len(printable)
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(n_other)]


def vocab_and_merges(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token -> id mapping and merge list from the merges file (first line: a
    version header)."""
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + N_MERGES]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise TokenizerUnavailableError(f"{path}: expected {N_MERGES} merge pairs after the "
                                        "header; the file is truncated or not CLIP's")
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges),
              START, END]
    return {token: i for i, token in enumerate(tokens)}, merges


@cache
def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return vocab_and_merges(merges_path())


def clip_bpe_tokenizer():
    """CLIP's tokenizer (``CLIPTokenizerFast``, 49,408 tokens, pad = eos = <|endoftext|>);
    a new object per call (tokenizers keep per-call settings), the vocabulary read once."""
    from transformers import CLIPTokenizerFast

    vocab, merges = _clip_vocab()
    tokenizer = CLIPTokenizerFast(vocab=vocab, merges=merges, unk_token=END, bos_token=START,
                                  eos_token=END, pad_token=END)
    if len(tokenizer) != VOCAB_SIZE:
        raise TokenizerUnavailableError(f"the CLIP BPE tokenizer has {len(tokenizer)} tokens, "
                                        f"expected {VOCAB_SIZE}")
    return tokenizer
