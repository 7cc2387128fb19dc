"""Which text tower embeds a variant's captions, decided from its config alone.

Training, evaluation, the report and the Snakemake rules (does a job that encodes
text need the trained model, and a GPU?) all ask the same question, so the answer
lives here once. Pure config logic: importing this module loads no torch.
"""

from __future__ import annotations

from collections.abc import Mapping


def lora_towers(lora: Mapping | None) -> list[str]:
    """The towers ``model.clip.lora`` adapts (``text``, ``vision``); empty: no LoRA."""
    return [t for t in ("text", "vision") if (lora or {}).get(t)]


def text_tower_trains(variant: Mapping) -> bool:
    """True when training updates the variant's text tower (a LoRA text adapter, an
    unlocked CLIP text tower, or a from-scratch dual encoder)."""
    mcfg = variant["model"]
    if mcfg["kind"] == "resnet":
        return False
    if mcfg["kind"] == "dual_encoder":
        return True
    ccfg = mcfg["clip"]
    towers = lora_towers(ccfg["lora"])
    # With LoRA every base weight is frozen and only the adapted towers change.
    return "text" in towers if towers else not ccfg["lock_text"]


def reads_text_cache(variant: Mapping) -> bool:
    """True when the variant's captions are embedded by the frozen ``text_encoder`` (the
    text cache) rather than by the variant's own text tower.

    A frozen pretrained CLIP text tower gives exactly what the cache holds when the cache
    was built from the same checkpoint with CLIP pooling, so it is reused (no tokenizing).
    """
    mcfg = variant["model"]
    if mcfg["kind"] == "resnet":
        return True
    if mcfg["kind"] != "clip" or text_tower_trains(variant):
        return False
    te = variant["text_encoder"]
    return te["model"] == mcfg["clip"]["model"] and te["pooling"] in ("auto", "clip")


def text_tower_gpus(variant: Mapping) -> int:
    """GPUs a job that encodes text with the variant's text tower (the folder search's
    queries) asks for: one when it runs the variant's own tower on the variant's
    (non-CPU) device, as evaluate does; none for the frozen encoder (run on the CPU)."""
    return int(not reads_text_cache(variant) and variant["train"]["device"] != "cpu")
