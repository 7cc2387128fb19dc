"""The one place a variant's model is built: for training, evaluation and figures."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from cliptune.models.image_tower import ClipHead


def build_model(variant: dict, embed_dim: int):
    """The variant's model (``model.kind``): a ResNet tower over cached text (ClipHead),
    a pretrained HF CLIP, or a from-scratch dual encoder (cliptune.models.hf_clip.HFClip).
    All expose encode_images / embed_texts / text_from_cache / scale()."""
    kind = variant["model"]["kind"]
    if kind == "resnet":
        return ClipHead(variant["model"], variant["train"], embed_dim, variant["image_size"])
    from cliptune.models.hf_clip import HFClip

    model = HFClip(variant)
    if model.text_from_cache and model.clip.config.projection_dim != embed_dim:
        raise ValueError(
            f"{variant['name']}: the text cache holds {embed_dim}-d embeddings but the CLIP "
            f"model projects to {model.clip.config.projection_dim}; set text_encoder.model to "
            "the same checkpoint as model.clip.model")
    return model


def load_variant_model(variant: dict, weights: Path, embed_dim: int,
                       device: torch.device) -> ClipHead:
    from safetensors.torch import load_file

    from cliptune.files.integrity import verify

    # Evaluating must never download backbone weights: they come from the checkpoint.
    # (A CLIP variant rebuilds its architecture from the local HF cache.)
    arch = copy.deepcopy(variant)
    arch["model"]["weights"] = None
    model = build_model(arch, embed_dim)
    verify(weights)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()
