"""Export one trained variant (``snakemake export``): the folder its ecosystem loads,
checked against cliptune's own embeddings, with a model card."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from cliptune.data.loading.pairs import PairData
from cliptune.export.model_card import RunFiles, render_card
from cliptune.files.atomic import write_json
from cliptune.models.factory import load_variant_model
from cliptune.models.text_encoder import frozen_encoder_fn
from cliptune.models.towers import lora_towers

log = logging.getLogger(__name__)

# Exported embeddings must equal cliptune's own (fp32, CPU) to this absolute tolerance.
TOLERANCE = 1e-4
CHECK_ITEMS = 16  # images and captions of the evaluation split embedded both ways

CLIP_USAGE = """\
from PIL import Image
from transformers import CLIPModel, CLIPProcessor
model, processor = CLIPModel.from_pretrained("{folder}"), CLIPProcessor.from_pretrained("{folder}")
inputs = processor(text=["a photo of a dog"], images=Image.open("photo.jpg"), return_tensors="pt", padding=True)
out = model(**inputs); print(out.image_embeds @ out.text_embeds.T)  # both L2-normalised
"""

TOWER_USAGE = """\
import numpy as np, onnxruntime as ort, torch; from PIL import Image, ImageOps
from transformers import AutoTokenizer, {loader}
img = np.asarray(ImageOps.fit(Image.open("photo.jpg").convert("RGB"), ({size}, {size}), Image.BICUBIC))[None]
image_emb = ort.InferenceSession("{folder}/image_tower.onnx").run(None, {{"images": img}})[0]
tok, text = AutoTokenizer.from_pretrained("{folder}/text"), {loader}.from_pretrained("{folder}/text")
batch = tok(["a red circle"], padding=True, truncation=True, max_length={max_length}, return_tensors="pt")
{pool}
"""
# How cliptune pools the frozen text tower (cliptune.models.text_encoder.TextEncoder).
POOL_USAGE = {
    "clip": "text_emb = torch.nn.functional.normalize(text(**batch).text_embeds, dim=-1)",
    "mean": ("h, m = text(**batch).last_hidden_state, batch[\"attention_mask\"][..., None]\n"
             "text_emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)"),
}


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    diff = float((got.float() - want.float()).abs().max())
    if not diff <= TOLERANCE:  # also catches NaN
        raise RuntimeError(f"exported {name} embeddings differ from cliptune's by {diff:.2e} "
                           f"(> {TOLERANCE:.0e}); the export is not written as usable")
    return diff


def _sample(data: PairData) -> tuple[np.ndarray, list[str]]:
    pixels = np.ascontiguousarray(data.pixels[data.image_rows[:CHECK_ITEMS]])
    return pixels, data.captions["caption"].tolist()[:CHECK_ITEMS]


def hf_text_embeddings(folder: Path, loader: str, pooling: str, max_length: int,
                       texts: list[str]) -> torch.Tensor:
    """What a transformers-only user computes from an exported text folder."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = getattr(transformers, loader).from_pretrained(folder).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length,
                return_tensors="pt")
    with torch.no_grad():
        if pooling == "clip":
            out = model(input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"]).text_embeds
        else:
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(out.float(), dim=-1)


def export_trunk_head(variant: dict, model, data: PairData, out: Path) -> tuple[dict, list]:
    from cliptune.export.onnx_tower import image_preprocessing, write_image_onnx, write_text_folder

    size = variant["image_size"]
    pixels, captions = _sample(data)
    image_diff = write_image_onnx(model, size, out, pixels)
    _check("image (onnxruntime)", torch.tensor(image_diff), torch.tensor(0.0))
    text = write_text_folder(variant["text_encoder"], out / "text")
    want = frozen_encoder_fn(variant["text_encoder"], torch.device("cpu"))(captions)
    got = hf_text_embeddings(out / "text", text["loader"], text["pooling"], text["max_length"],
                             captions)
    text_diff = _check("text (transformers)", got, want)
    pre = image_preprocessing(variant["model"]["backbone"], size)
    manifest = {"format": "onnx", "image_tower": {"file": "image_tower.onnx", **pre},
                "text_tower": text}
    notes = [
        f"Images: RGB, shorter side resized to {size} px (bicubic), centre crop {size}x{size}, "
        f"fed as uint8 NHWC `images` [batch, {size}, {size}, 3]; the graph scales by 1/255, "
        f"normalises with mean {pre['in_graph']['mean']} / std {pre['in_graph']['std']} and "
        "L2-normalises its output `image_embeds`.",
        f"Captions: the frozen `{text['model']}` saved under `text/`; load it with "
        f"`{text['loader']}`, tokenize with truncation at {text['max_length']} tokens, pool "
        + ("with `text_embeds` (CLIP's projected end-of-text token)" if text["pooling"] == "clip"
           else "by the attention-mask-weighted mean of `last_hidden_state`")
        + ", then L2-normalise.",
        f"Checked at export: onnxruntime vs cliptune max |difference| {image_diff:.1e} on "
        f"{len(pixels)} evaluation images; transformers vs cliptune {text_diff:.1e} on "
        f"{len(captions)} captions (tolerance {TOLERANCE:.0e}).",
    ]
    contents = ["`image_tower.onnx`: the image tower (trunk, pooling, head), opset 17",
                f"`text/`: the frozen text tower `{text['model']}` (save_pretrained)",
                "`export.json`: preprocessing and pooling, machine-readable"]
    usage = TOWER_USAGE.format(folder=".", size=size, loader=text["loader"],
                               max_length=text["max_length"], pool=POOL_USAGE[text["pooling"]])
    return manifest, [contents, usage, notes]


def export_clip(variant: dict, model, data: PairData, out: Path) -> tuple[dict, list]:
    from transformers import CLIPModel, CLIPProcessor

    from cliptune.export.clip_folder import write_clip_folder, write_lora_adapter

    write_clip_folder(model, out)
    pixels, captions = _sample(data)
    exported = CLIPModel.from_pretrained(out).eval()
    processor = CLIPProcessor.from_pretrained(out)
    images = torch.from_numpy(pixels)
    with torch.no_grad():
        want_img = model.encode_images(images)
        want_txt = model.encode_texts(captions)
        # The model itself: pixel values exactly as cliptune normalises them.
        x01 = images.permute(0, 3, 1, 2).float() / 255.0
        if x01.shape[-1] != model.input_size:
            x01 = torch.nn.functional.interpolate(
                x01, size=(model.input_size,) * 2, mode="bicubic", align_corners=False,
                antialias=True).clamp_(0, 1)
        ids = processor.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        out_t = exported(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                         pixel_values=model.pixel_norm(x01))
        model_diff = max(_check("image (CLIPModel)", out_t.image_embeds, want_img),
                         _check("text (CLIPModel)", out_t.text_embeds, want_txt))
        # The processor from the uint8 cache images: resizes with PIL where cliptune uses torch.
        proc = processor(images=list(pixels), return_tensors="pt")
        proc_emb = exported(input_ids=ids["input_ids"][:1],
                            pixel_values=proc["pixel_values"]).image_embeds
        proc_diff = float((proc_emb - want_img).abs().max())
    size, input_size = variant["image_size"], model.input_size
    if size == input_size:
        proc_diff = _check("image (CLIPProcessor)", proc_emb, want_img)
    manifest = {"format": "transformers", "input_size": input_size,
                "cliptune_image_size": size, "max_length": model.max_length}
    notes = [
        f"Images: CLIPProcessor resizes the shorter side to {input_size} px (bicubic), "
        f"centre-crops {input_size}x{input_size}, scales by 1/255 and normalises with "
        "CLIP's mean/std, as cliptune's image cache does (shorter side, bicubic, centre "
        "crop) before its own normalisation.",
        f"cliptune first stores images at {size} px (a square crop)"
        + (f" and resizes them to {input_size} px in torch (bicubic, antialiased); from such "
           "a cached image the processor's PIL resize gives slightly different pixels"
           if size != input_size else "; the processor reproduces that input exactly")
        + f" (max embedding difference here {proc_diff:.1e}). JPEG decoding: cliptune uses "
        "PIL's draft mode for large JPEGs, a reduced-scale decode before the resize.",
        f"Captions: the tokenizer truncates at {model.max_length} tokens (cliptune's "
        "text_encoder.max_length, capped by the position table).",
        f"Checked at export: this folder vs cliptune max |difference| {model_diff:.1e} on "
        f"{len(pixels)} evaluation images and {len(captions)} captions "
        f"(tolerance {TOLERANCE:.0e}).",
    ]
    contents = ["`config.json`, `model.safetensors`: the CLIPModel"
                + (" (LoRA merged into the weights)" if model.lora_towers else ""),
                "`processor_config.json`, `preprocessor_config.json`, tokenizer files: the "
                "CLIPProcessor",
                "`export.json`: preprocessing settings, machine-readable"]
    lora = variant["model"]["clip"]["lora"] if variant["model"]["kind"] == "clip" else {}
    if lora_towers(lora):
        base = variant["model"]["clip"]["model"]
        write_lora_adapter(model, lora, base, out / "lora_adapter")
        manifest["lora_adapter"] = {"folder": "lora_adapter", "base_model": base}
        contents.append(f"`lora_adapter/`: the adapters alone, for "
                        f"`PeftModel.from_pretrained(CLIPModel.from_pretrained(\"{base}\"), "
                        "\"lora_adapter\")` (the trained temperature is in the merged model "
                        "only)")
    return manifest, [contents, CLIP_USAGE.format(folder="."), notes]


def export_variant(variant: dict, weights: Path, data: PairData, files: RunFiles,
                   baseline: str, out: Path) -> dict:
    """Write ``out`` (replaced whole): the exported model, export.json and README.md.
    ``data``: the evaluation split (its first images and captions check the export)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(0)
    model = load_variant_model(variant, weights, data.text.shape[1], torch.device("cpu"))
    if variant["model"]["kind"] == "resnet":
        manifest, (contents, usage, notes) = export_trunk_head(variant, model, data, out)
        library = "onnx"
    else:
        manifest, (contents, usage, notes) = export_clip(variant, model, data, out)
        library = "transformers"
    manifest = {"variant": variant["name"], "kind": variant["model"]["kind"], **manifest}
    write_json(out / "export.json", manifest)
    card = render_card(variant, baseline, files, library, contents, usage, notes)
    (out / "README.md").write_text(card)
    log.info("%s exported to %s (%s)", variant["name"], out, manifest["format"])
    return manifest
