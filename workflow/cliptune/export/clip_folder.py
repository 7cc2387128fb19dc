"""CLIP variants (zero-shot, fine-tuned, LoRA) and the from-scratch dual encoder as a
Hugging Face folder: ``CLIPModel.from_pretrained(folder)`` and
``CLIPProcessor.from_pretrained(folder)`` load it with transformers alone."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from cliptune.models.image_tower import CLIP_MEAN, CLIP_STD
from cliptune.models.towers import lora_towers


def merged_clip(clip: nn.Module) -> nn.Module:
    """A copy of ``clip`` (a CLIPModel, maybe with LoRA layers injected by
    cliptune.models.hf_clip.apply_lora) with every adapter merged into its base weight and
    the LoRA layer replaced by that plain layer: the state dict of a stock CLIPModel."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    clip = copy.deepcopy(clip)
    for name, module in list(clip.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)  # raises on a NaN/inf merged weight
            parent, _, child = name.rpartition(".")
            setattr(clip.get_submodule(parent), child, module.get_base_layer())
    if hasattr(clip, "peft_config"):  # set by inject_adapter_in_model; no adapter is left
        del clip.peft_config
    leftover = [n for n, _ in clip.named_parameters() if "lora_" in n]
    if leftover:
        raise RuntimeError(f"LoRA parameters left after merging: {leftover[:3]}")
    return clip


def clip_processor(tokenizer, input_size: int, max_length: int):
    """CLIPProcessor matching cliptune's evaluation path as far as a processor can:
    RGB, shorter side to ``input_size`` (bicubic), centre crop, /255, CLIP mean/std;
    captions truncated at ``max_length`` tokens."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_max_length = max_length
    # CLIPModel takes no token_type_ids (a BERT vocabulary of a dual encoder would add them).
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.init_kwargs["model_input_names"] = tokenizer.model_input_names
    images = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": input_size}, resample=3,  # PIL bicubic
        do_center_crop=True, crop_size={"height": input_size, "width": input_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def write_clip_folder(model, out: Path) -> None:
    """``model``: a cliptune.models.hf_clip.HFClip with its trained weights loaded."""
    out.mkdir(parents=True, exist_ok=True)
    merged_clip(model.clip).save_pretrained(out, safe_serialization=True)
    processor = clip_processor(model.tokenizer, model.input_size, model.max_length)
    processor.save_pretrained(out)
    # preprocessor_config.json too: transformers releases before 5 read the image
    # processor from it.
    processor.image_processor.save_pretrained(out)


def write_lora_adapter(model, lora: dict, base_model: str, out: Path) -> None:
    """The trained LoRA adapters as the folder ``peft.PeftModel.from_pretrained(base,
    out)`` loads onto the pretrained ``base_model`` (``model.clip.model``). Only the
    adapters: the trained temperature lives in the merged folder."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import CLIPModel

    from cliptune.models.hf_clip import lora_target_regex

    towers = lora_towers(lora)
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora_target_regex(towers, list(lora["target_modules"])),
                        bias="none", base_model_name_or_path=base_model)
    # Base weights are never saved with an adapter: a randomly initialised shell suffices.
    shell = get_peft_model(CLIPModel(model.clip.config), config)
    # peft's saved layout: the PeftModel prefix, no adapter name.
    trained = {"base_model.model." + k.replace(".default.", "."): v
               for k, v in model.clip.state_dict().items() if "lora_" in k}
    result = set_peft_model_state_dict(shell, trained)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing or not trained:
        raise RuntimeError(f"LoRA adapter state does not fit peft's layout: unexpected "
                           f"{unexpected[:3]}, missing {missing[:3]}, {len(trained)} tensors")
    shell.peft_config["default"].base_model_name_or_path = base_model
    shell.save_pretrained(out, safe_serialization=True)
