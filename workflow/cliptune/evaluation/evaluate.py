"""Evaluate one variant: embed every image of the split, rank against every caption.

Recall@K follows the standard definition (image->text hits when ANY of the
image's captions is in the top K; text->image per caption), over all images
and all their captions, never one caption per image. With one model load the
same job also ranks the report queries and classifies zero-shot
(cliptune.evaluation.prompt_results), so reporting never loads a model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from cliptune.data.loading.pairs import PairData
from cliptune.evaluation.bootstrap import Ranks, save_ranks
from cliptune.evaluation.prompt_results import Evaluated, PromptSpec, write_prompt_results
from cliptune.evaluation.retrieval_metrics import retrieval_metrics_and_ranks
from cliptune.files.atomic import atomic_path, write_json
from cliptune.models.factory import load_variant_model
from cliptune.models.text_encoder import frozen_encoder_fn
from cliptune.models.towers import reads_text_cache
from cliptune.retrieval import score_memory_bytes
from cliptune.runtime import autocast_dtype, embed_all, pick_device, progress

log = logging.getLogger(__name__)


def embed_images(model, data: PairData, batch_size: int, device, amp_dtype,
                 show_progress: bool = True) -> torch.Tensor:
    starts = progress(range(0, data.n_images, batch_size), desc="embed images",
                      disable=not show_progress, unit="batch")
    return embed_all(
        lambda s: encode_pixels(model, data.pixels[data.image_rows[s:s + batch_size]]),
        starts, device, amp_dtype)


def encode_pixels(model, pixels: np.ndarray) -> torch.Tensor:
    """One uint8 NHWC batch through the variant's image tower: float32 [n, D] on the CPU.
    Evaluation and the folder search both embed this way (inside runtime.embed_all)."""
    # Every model kind (cliptune.models.factory.build_model) embeds uint8 NHWC batches.
    return model.encode_images(torch.from_numpy(np.ascontiguousarray(pixels))).float().cpu()


@torch.inference_mode()
def encode_with_tower(model, texts: list[str], batch_size: int, device,
                      amp_dtype) -> torch.Tensor:
    """``texts`` through the variant's own text tower (LoRA / unlocked CLIP, dual encoder)
    at evaluation precision: float32 [n, D] on the CPU. The one path evaluation (captions,
    report queries, zero-shot prompts) and the folder search (variant_text_encoder) take,
    so their embeddings agree."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        return model.encode_texts(list(texts), batch_size).float().cpu()


def embed_texts(model, data: PairData, batch_size: int, device, amp_dtype) -> torch.Tensor:
    """The cached caption embeddings, or the model's own (trained) text tower."""
    if model.text_from_cache:
        return data.text.float()
    return encode_with_tower(model, data.captions["caption"].tolist(), batch_size, device,
                             amp_dtype)


def text_encoder_of(variant: dict, model, device, amp_dtype
                    ) -> Callable[[list[str]], torch.Tensor]:
    """``encode(list[str]) -> [n, D]`` with the text tower that embeds this variant's
    captions: the frozen text encoder that built the text cache when the model reads it
    (run on the CPU: a few hundred prompts), else the loaded ``model``'s own tower."""
    if reads_text_cache(variant):
        return frozen_encoder_fn(variant["text_encoder"], torch.device("cpu"))
    batch_size = variant["eval"]["batch_size"]
    return lambda texts: encode_with_tower(model, texts, batch_size, device, amp_dtype)


def variant_text_encoder(variant: dict, weights: Path, embed_dim: int,
                         ) -> Callable[[list[str]], torch.Tensor]:
    """text_encoder_of a variant's trained ``weights``, loaded on the variant's device and
    precision exactly as evaluate_variant does (the folder search's queries)."""
    if reads_text_cache(variant):
        return text_encoder_of(variant, None, None, None)
    device = pick_device(variant["train"]["device"])
    amp_dtype = autocast_dtype(variant["train"]["precision"], device)
    model = load_variant_model(variant, weights, embed_dim, device)
    return text_encoder_of(variant, model, device, amp_dtype)


def evaluate_variant(variant: dict, weights: Path, data: PairData, out_dir: Path,
                     show_progress: bool = True, prompts: PromptSpec | None = None) -> dict:
    """metrics.json, recall.csv, embeddings and per-query ranks; with ``prompts`` also the
    report queries' ranking and the zero-shot results (cliptune.evaluation.prompt_results).

    Bootstrap intervals are not computed here: the aggregate rule draws them from the saved
    ranks, so changing the ``bootstrap`` section never re-scores a variant.
    """
    out_dir = Path(out_dir)
    ecfg = variant["eval"]
    device = pick_device(variant["train"]["device"])
    amp_dtype = autocast_dtype(variant["train"]["precision"], device)
    model = load_variant_model(variant, weights, data.text.shape[1], device)
    image_emb = embed_images(model, data, ecfg["batch_size"], device, amp_dtype, show_progress)
    text_emb = embed_texts(model, data, ecfg["batch_size"], device, amp_dtype)
    # caption m -> position of its image in image_emb (image_rows is sorted and unique).
    text_image = torch.from_numpy(np.searchsorted(data.image_rows, data.caption_image_row))
    metrics, r_i2t, r_t2i = retrieval_metrics_and_ranks(
        image_emb, text_emb, text_image, ks=tuple(ecfg["ks"]),
        score_memory=score_memory_bytes(ecfg["score_memory_mb"]), device=device)
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics.update({"variant": variant["name"], "split": ecfg["split"],
                    "reported_on": {"split": ecfg["split"], "images": data.n_images},
                    "temperature": float(1.0 / model.scale().detach())})
    # Per-query ranks: bootstrap intervals and paired comparisons come from these alone.
    caption_ids = data.captions["caption_id"].to_numpy(np.int64, copy=True)
    ranks = Ranks.of(r_i2t, r_t2i, text_image, data.image_ids, caption_ids)
    save_ranks(out_dir / "ranks.safetensors", ranks)
    write_json(out_dir / "metrics.json", metrics)
    rows = [{"direction": d, "K": k, "recall": metrics[f"{d}_R@{k}"]}
            for d in ("i2t", "t2i") for k in ecfg["ks"]]
    with atomic_path(out_dir / "recall.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    # Saved so figures and reports never recompute embeddings.
    with atomic_path(out_dir / "embeddings.safetensors") as tmp:
        save_file({
            "image": image_emb.contiguous(),
            "text": text_emb.contiguous(),
            "image_id": torch.from_numpy(data.image_ids.copy()),
            "caption_id": torch.from_numpy(caption_ids),
            "text_image_index": text_image.contiguous(),
        }, str(tmp))
    log.info("%s: i2t R@1 %.2f  t2i R@1 %.2f  rsum %.1f", variant["name"], metrics["i2t_R@1"],
             metrics["t2i_R@1"], metrics["rsum"])
    if prompts is not None:
        evaluated = Evaluated(image_emb, data.image_ids, data.captions["caption"].tolist(),
                              text_image.numpy(), metrics["temperature"],
                              score_memory_bytes(ecfg["score_memory_mb"]))
        write_prompt_results(variant["name"], prompts,
                             text_encoder_of(variant, model, device, amp_dtype), evaluated,
                             out_dir)
    return metrics
