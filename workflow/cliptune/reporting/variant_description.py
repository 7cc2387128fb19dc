"""What one variant is, in words, derived from its resolved config alone.

The summary, its hyperparameter table, the loss explanation, the HTML report's captions
and the loss-curve plot all describe variants; they take every fact from here, so a
LoRA, hard-negative or from-scratch study is never described as the ResNet lab's. Pure
config logic: importing this module loads no torch (the Snakefile imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cliptune.models.towers import lora_towers, reads_text_cache

# model.kind -> the ways a variant of that kind is built (``kind`` below).
TRUNK_HEAD = "trunk + head"
CLIP_FINE_TUNED = "fine-tuned CLIP"
CLIP_LORA = "CLIP with LoRA"
CLIP_AS_IS = "pretrained CLIP, evaluated as is"
DUAL_ENCODER = "dual encoder from scratch"

NOT_APPLICABLE = "n/a"

LOSS_NAMES = {"infonce": "symmetric InfoNCE", "hard_negative": "hard-negative InfoNCE",
              "triplet": "bidirectional triplet hinge"}
CLIP_BPE = "clip-bpe"


@dataclass(frozen=True)
class VariantDescription:
    """One variant's facts; every field is a short phrase for a table cell."""
    name: str
    kind: str          # one of the kind constants above
    model: str         # the architecture and where its weights come from
    image_tower: str   # what of the image tower trains, or "frozen"
    text_tower: str    # what of the text tower trains, or "frozen ..."
    loss: str          # the loss with its settings
    temperature: str   # fixed/learned and its start, or n/a for the triplet loss
    tokenizer: str     # whose tokenizer turns captions into tokens

    @property
    def sentence(self) -> str:
        """The variant in one sentence (summary, HTML report captions)."""
        return (f"`{self.name}`: {self.model}; image tower: {self.image_tower}; text tower: "
                f"{self.text_tower}; loss: {self.loss}; temperature: {self.temperature}; "
                f"tokenizer: {self.tokenizer}.")


def trains(variant: Mapping) -> bool:
    """False for a variant that is only evaluated (``train.epochs: 0``)."""
    return variant["train"]["epochs"] > 0


def model_kind(variant: Mapping) -> str:
    kind = variant["model"]["kind"]
    if kind == "resnet":
        return TRUNK_HEAD
    if kind == "dual_encoder":
        return DUAL_ENCODER
    if not trains(variant):
        return CLIP_AS_IS
    return CLIP_LORA if lora_towers(variant["model"]["clip"]["lora"]) else CLIP_FINE_TUNED


def _model(variant: Mapping) -> str:
    mcfg = variant["model"]
    kind = mcfg["kind"]
    if kind == "resnet":
        weights = mcfg["weights"]
        init = f"`{weights}` weights" if weights else "random init"
        text = (f"{mcfg['backbone']} trunk ({init}) + `{mcfg['pooling']}` pooling + "
                f"{mcfg['head']['depth']}-layer projection head (norm `{mcfg['head']['norm']}`)")
    elif kind == "clip":
        text = f"CLIP `{mcfg['clip']['model']}`"
        towers = lora_towers(mcfg["clip"]["lora"])
        if towers:
            lora = mcfg["clip"]["lora"]
            text += (f" with LoRA on the {' and '.join(towers)} tower"
                     f"{'s' if len(towers) > 1 else ''} (r {lora['r']}, alpha {lora['alpha']:g}, "
                     f"{', '.join(lora['target_modules'])})")
    else:
        dcfg = mcfg["dual_encoder"]
        vis, txt = dcfg["vision"], dcfg["text"]
        text = (f"dual encoder from random init: ViT (patch {vis['patch_size']}, width "
                f"{vis['width']}, {vis['depth']} layers) + text transformer (width "
                f"{txt['width']}, {txt['depth']} layers), {dcfg['embed_dim']}-d joint space")
    if not trains(variant):
        text += ", not trained (0 epochs)"
    return text


def _frozen_projection(variant: Mapping) -> str:
    return ", projection frozen" if variant["model"]["clip"]["freeze_projections"] else ""


def image_tower(variant: Mapping) -> str:
    """What of the image tower training updates."""
    if not trains(variant):
        return "not trained"
    mcfg = variant["model"]
    if mcfg["kind"] == "resnet":
        stages = mcfg["trainable_stages"]
        if mcfg["freeze_backbone"] or stages == 0:
            return "trunk frozen; pooling and head train"
        if stages is not None:
            return f"last {stages} trunk stages, pooling and head train"
        return "trunk, pooling and head train"
    if mcfg["kind"] == "dual_encoder":
        return "trains from scratch"
    ccfg = mcfg["clip"]
    towers = lora_towers(ccfg["lora"])
    if towers:
        return "frozen, LoRA adapters train" if "vision" in towers else "frozen"
    return "frozen" if ccfg["lock_image"] else "trains" + _frozen_projection(variant)


def text_tower(variant: Mapping) -> str:
    """What of the text tower training updates, and which tower embeds the captions."""
    mcfg = variant["model"]
    if mcfg["kind"] == "resnet":
        return f"frozen `{variant['text_encoder']['model']}` (cached caption embeddings)"
    if not trains(variant):
        return "not trained"
    if mcfg["kind"] == "dual_encoder":
        return "trains from scratch"
    ccfg = mcfg["clip"]
    towers = lora_towers(ccfg["lora"])
    cached = " (cached caption embeddings)" if reads_text_cache(variant) else ""
    if towers:
        return "frozen, LoRA adapters train" if "text" in towers else "frozen" + cached
    return "frozen" + cached if ccfg["lock_text"] else "trains" + _frozen_projection(variant)


def loss(variant: Mapping) -> str:
    """The training loss with the settings that shape it; n/a when nothing trains."""
    if not trains(variant):
        return NOT_APPLICABLE + " (not trained)"
    tcfg = variant["train"]
    name = tcfg["loss"]
    if name == "hard_negative":
        hn = tcfg["hard_negatives"]
        every = ("every epoch" if hn["refresh_epochs"] == 1
                 else f"every {hn['refresh_epochs']} epochs")
        text = (f"{LOSS_NAMES[name]} with k = {hn['k']} {hn['strategy']} negatives per anchor "
                f"from an index rebuilt {every}")
        if hn["hardest_weight"] > 0:
            text += (f", plus a hinge on the hardest in-batch negative (margin {hn['margin']:g},"
                     f" weight {hn['hardest_weight']:g})")
        return text
    if name == "triplet":
        tri = tcfg["triplet"]
        return f"{LOSS_NAMES[name]}, margin {tri['margin']:g}, {tri['mining']} mining"
    return LOSS_NAMES[name]


def uses_temperature(variant: Mapping) -> bool:
    """The triplet loss compares cosine similarities with a margin: no temperature."""
    return trains(variant) and variant["train"]["loss"] != "triplet"


def temperature(variant: Mapping) -> str:
    tcfg = variant["train"]
    start = ("the checkpoint's" if tcfg["temperature"] is None
             else f"{tcfg['temperature']:g}")
    if not trains(variant):
        return f"{start} (scales zero-shot probabilities only)"
    if not uses_temperature(variant):
        return NOT_APPLICABLE + " (the triplet loss has none)"
    return f"{start}, {'learned' if tcfg['learnable_temperature'] else 'fixed'}"


def _tokenizer_name(source: str) -> str:
    if source == CLIP_BPE:
        return "CLIP byte-level BPE (open_clip's merges)"
    return f"`{source}`'s"


def tokenizer(variant: Mapping) -> str:
    """Whose tokenizer reads the captions: the frozen text encoder's when the captions
    come from the text cache, else the variant's own text tower's."""
    mcfg = variant["model"]
    if reads_text_cache(variant):
        return f"`{variant['text_encoder']['model']}`'s (text cache)"
    if mcfg["kind"] == "clip":
        return f"`{mcfg['clip']['model']}`'s"
    source = mcfg["dual_encoder"]["tokenizer"] or variant["text_encoder"]["model"]
    return _tokenizer_name(source)


def describe(variant: Mapping) -> VariantDescription:
    """Every fact the report states about ``variant`` (a resolved run config)."""
    return VariantDescription(
        name=variant["name"], kind=model_kind(variant), model=_model(variant),
        image_tower=image_tower(variant), text_tower=text_tower(variant),
        loss=loss(variant), temperature=temperature(variant), tokenizer=tokenizer(variant))


# Hyperparameter columns that exist only for one model kind: shown as n/a for the others.
RESNET_COLUMNS = ("backbone", "pooling", "head norm")


def resnet_columns(variant: Mapping) -> list[str]:
    """backbone, pooling and head norm of a trunk + head variant, n/a for the others."""
    mcfg = variant["model"]
    if mcfg["kind"] != "resnet":
        return [NOT_APPLICABLE] * len(RESNET_COLUMNS)
    return [mcfg["backbone"], mcfg["pooling"], mcfg["head"]["norm"]]
