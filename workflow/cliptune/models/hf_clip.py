"""Whole-CLIP variants: a pretrained HF CLIPModel (zero-shot, full fine-tuning with
lock-image / lock-text, LoRA via peft) and a from-scratch dual encoder (a ViT + text
transformer sized by ``model.dual_encoder``, random init) with the same interface.

Interface shared with models.ClipHead (what train.py and evaluate.py use):
``embed_images(x01)``, ``encode_images(uint8 NHWC)``, ``embed_texts(list[str])``,
``encode_texts(list[str])``, ``text_from_cache``, ``scale()``, ``clamp_()``,
``param_role(name)``, ``NEW_ROLES``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cliptune.models.clip_bpe import CLIP_BPE, clip_bpe_tokenizer
from cliptune.models.image_tower import PixelNormalize, to_unit_float
from cliptune.models.text_encoder import EncoderUnavailableError, _fix_message, resolve_model_path
from cliptune.models.towers import lora_towers, reads_text_cache, text_tower_trains

log = logging.getLogger(__name__)


def lora_target_regex(towers: list[str], modules: list[str]) -> str:
    """peft full-match regex selecting ``modules`` (e.g. q_proj) inside the given towers."""
    tower = "|".join(f"{t}_model" for t in towers)
    mods = "|".join(modules)
    return rf"(?:{tower})\..*\.(?:{mods})"


def apply_lora(clip: nn.Module, lora: Mapping) -> list[str]:
    """Inject LoRA adapters into the chosen towers; every base weight is frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    towers = lora_towers(lora)
    if not towers:
        return []
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora_target_regex(towers, list(lora["target_modules"])),
                        bias="none")
    try:
        inject_adapter_in_model(config, clip)
    except ValueError as exc:
        raise ValueError(
            f"model.clip.lora.target_modules = {list(lora['target_modules'])} matched no layer "
            f"of the {'/'.join(towers)} tower ({exc}); CLIP attention layers are q_proj, "
            "k_proj, v_proj, out_proj and the MLP fc1, fc2"
        ) from exc
    for name, p in clip.named_parameters():
        p.requires_grad_("lora_" in name)
    return towers


def _load_pretrained(model: str):
    from transformers import AutoTokenizer, CLIPModel

    path = resolve_model_path(model)
    try:
        return CLIPModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EncoderUnavailableError(_fix_message(model, exc).replace(
            "cannot load text encoder", "cannot load CLIP model (model.clip.model)")) from exc


def _scratch_tokenizer(name: str):
    """The vocabulary of a from-scratch text tower: CLIP's BPE built offline
    (``clip-bpe``), or the tokenizer of a hub id / local checkpoint directory."""
    from transformers import AutoTokenizer, CLIPTokenizerFast

    if name == CLIP_BPE:
        return clip_bpe_tokenizer()
    source = resolve_model_path(name)
    folder = Path(source)
    # Only vocab.json + merges.txt (OpenAI's files): AutoTokenizer cannot tell the class.
    bare_bpe = all((folder / f).is_file() for f in ("vocab.json", "merges.txt")) and not any(
        (folder / f).is_file() for f in ("tokenizer_config.json", "config.json"))
    try:
        if bare_bpe:
            return CLIPTokenizerFast.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise EncoderUnavailableError(_fix_message(name, exc)) from exc


def _tower_config(tower: Mapping) -> dict:
    """Width, depth, heads, MLP width and attention dropout of one tower (heads dividing
    the width is checked with the config: cliptune.config.load.check_variant)."""
    return {"hidden_size": tower["width"], "num_hidden_layers": tower["depth"],
            "num_attention_heads": tower["heads"],
            "intermediate_size": round(tower["mlp_ratio"] * tower["width"]),
            "attention_dropout": tower["dropout"]}


class OutputDropout:
    """Forward hook: dropout on a module's output while the module is training. HF CLIP
    layers only drop attention probabilities; this adds the residual-branch dropout of
    ViT/GPT blocks without new modules, so state_dict keys stay those of CLIPModel."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return F.dropout(output, self.p, module.training)


def add_block_dropout(encoder: nn.Module, p: float) -> None:
    """Drop the attention and MLP outputs of every block of ``encoder`` (a CLIPEncoder)."""
    if p <= 0:
        return
    for layer in encoder.layers:
        layer.self_attn.out_proj.register_forward_hook(OutputDropout(p))
        layer.mlp.register_forward_hook(OutputDropout(p))


def scratch_config(dcfg: Mapping, tokenizer, image_size: int):
    """The ``CLIPConfig`` of a from-scratch dual encoder (``model.dual_encoder``) whose
    text tower reads ``tokenizer``'s ids. Pooling is CLIP's: the vision tower's class
    token, the text tower's first end-of-text token (the tokenizer's eos; pad may equal it)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    v, t = dcfg["vision"], dcfg["text"]
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    vocab = max([len(tokenizer), *(i + 1 for i in tokenizer.all_special_ids if i is not None)])
    text = CLIPTextConfig(vocab_size=vocab, max_position_embeddings=t["max_length"],
                          eos_token_id=eos, pad_token_id=pad,
                          bos_token_id=tokenizer.cls_token_id or tokenizer.bos_token_id or 0,
                          **_tower_config(t))
    vision = CLIPVisionConfig(image_size=image_size, patch_size=v["patch_size"],
                              **_tower_config(v))
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                      projection_dim=dcfg["embed_dim"])


def _build_from_scratch(dcfg: Mapping, tokenizer_name: str, image_size: int):
    """A CLIPModel with random init sized by ``model.dual_encoder``, and its tokenizer."""
    from transformers import CLIPModel

    tokenizer = _scratch_tokenizer(tokenizer_name)
    model = CLIPModel(scratch_config(dcfg, tokenizer, image_size))
    add_block_dropout(model.text_model.encoder, dcfg["text"]["dropout"])
    add_block_dropout(model.vision_model.encoder, dcfg["vision"]["dropout"])
    return model, tokenizer


class HFClip(nn.Module):
    """CLIPModel behind the cliptune model interface."""

    # Nothing is a freshly initialised add-on: LoRA adapters adapt a pretrained tower and,
    # like the towers and CLIP's learned temperature, train at train.lr; a from-scratch
    # dual encoder has no pretrained part to set a second rate against.
    NEW_ROLES: tuple[str, ...] = ()

    def __init__(self, variant: Mapping):
        super().__init__()
        mcfg, tcfg = variant["model"], variant["train"]
        self.kind = mcfg["kind"]
        if self.kind == "clip":
            ccfg = mcfg["clip"]
            self.clip, self.tokenizer = _load_pretrained(ccfg["model"])
            lock_image, lock_text, lora = ccfg["lock_image"], ccfg["lock_text"], ccfg["lora"]
            freeze_proj = ccfg["freeze_projections"]
            if tcfg["temperature"] is not None:  # null: the checkpoint's learned scale
                with torch.no_grad():
                    self.clip.logit_scale.fill_(math.log(1.0 / tcfg["temperature"]))
        else:
            dcfg = mcfg["dual_encoder"]
            tok = dcfg["tokenizer"] or variant["text_encoder"]["model"]
            self.clip, self.tokenizer = _build_from_scratch(dcfg, tok, variant["image_size"])
            lock_image, lock_text, lora, freeze_proj = False, False, {}, False
            with torch.no_grad():
                self.clip.logit_scale.fill_(math.log(1.0 / tcfg["temperature"]))
        self.lora_towers = apply_lora(self.clip, lora) if lora else []
        if not self.lora_towers:
            if lock_image:
                self.clip.vision_model.requires_grad_(False)
                self.clip.visual_projection.requires_grad_(False)
            if lock_text:
                self.clip.text_model.requires_grad_(False)
                self.clip.text_projection.requires_grad_(False)
        if freeze_proj:  # towers may train; the joint space they project into stays fixed
            self.clip.visual_projection.requires_grad_(False)
            self.clip.text_projection.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(tcfg["learnable_temperature"])
        self.max_log_scale = math.log(tcfg["max_logit_scale"])
        # Decided from the config (cliptune.models.towers), as the workflow rules do.
        self.text_trained = text_tower_trains(variant)
        self.text_from_cache = reads_text_cache(variant)
        tcfg_text = self.clip.config.text_config
        self.max_length = min(variant["text_encoder"]["max_length"],
                              tcfg_text.max_position_embeddings)
        self.input_size = self.clip.config.vision_config.image_size
        self.pixel_norm = PixelNormalize()

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def scale(self) -> torch.Tensor:
        return self.clip.logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.clip.logit_scale.clamp_(max=self.max_log_scale)

    def param_role(self, name: str) -> str:
        """Optimiser group: ``lora`` adapters, ``text_tower``, ``vision_tower`` (each with
        its projection) or ``temperature``."""
        if name.endswith("logit_scale"):
            return "temperature"
        if "lora_" in name:
            return "lora"
        return "text_tower" if name.startswith("clip.text_") else "vision_tower"

    def embed_images(self, x01: torch.Tensor) -> torch.Tensor:
        if x01.shape[-1] != self.input_size or x01.shape[-2] != self.input_size:
            x01 = F.interpolate(x01, size=(self.input_size, self.input_size), mode="bicubic",
                                align_corners=False, antialias=True).clamp_(0, 1)
        pixels = self.pixel_norm(x01)
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.clip.visual_projection(pooled).float(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_images(to_unit_float(images, self.pixel_norm.mean.device))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.pixel_norm.mean.device) for k, v in batch.items()
                 if k in ("input_ids", "attention_mask")}
        pooled = self.clip.text_model(**batch).pooler_output
        return F.normalize(self.clip.text_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Embeddings of all ``texts`` in input order (length-sorted batches)."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.clip.config.projection_dim)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self.embed_texts([texts[i] for i in idx]).float().cpu()
        return out
