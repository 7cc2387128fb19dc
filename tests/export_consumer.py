"""A user of exported cliptune folders, run in a fresh interpreter that imports only
numpy, transformers, peft and onnxruntime (never cliptune): embeds the given images and
captions the way docs/export.md tells a user to, recomputes Recall@1 both ways, and runs
each folder's model-card usage snippet as written, inside the folder.

usage: python export_consumer.py JOBS.json
JOBS.json: a list of {"folder", "images" (.npy), "captions" (.json: {"captions": [...],
"image_of_caption": [...]}, an index into the images), "out" (.npz), "lora_base" (or
null), "card" (run the card's snippet)}. One interpreter serves all the folders (each
start imports torch and transformers); a folder that fails writes its traceback to
OUT.error and the rest still run.
"""

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np


def recall_at_1(image: np.ndarray, text: np.ndarray, image_of: np.ndarray) -> tuple:
    sims = image @ text.T
    i2t = np.mean([image_of[sims[i].argmax()] == i for i in range(len(image))]) * 100
    t2i = np.mean(sims.argmax(axis=0) == image_of) * 100
    return float(i2t), float(t2i)


def clip_embeddings(model, processor, images, captions):
    import torch

    inputs = processor(text=captions, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return out.image_embeds.numpy(), out.text_embeds.numpy()


def embed(folder, images_npy, captions_json, out_npz, lora_base=None):
    folder = Path(folder)
    images = np.load(images_npy)
    spec = json.loads(Path(captions_json).read_text())
    captions, image_of = spec["captions"], np.array(spec["image_of_caption"])
    manifest = json.loads((folder / "export.json").read_text())
    result = {}
    if manifest["format"] == "onnx":
        import onnxruntime as ort
        import torch
        import transformers

        session = ort.InferenceSession(str(folder / "image_tower.onnx"))
        image = session.run(None, {"images": images})[0]
        text_spec = manifest["text_tower"]
        text_dir = folder / text_spec["folder"]
        tok = transformers.AutoTokenizer.from_pretrained(text_dir)
        model = getattr(transformers, text_spec["loader"]).from_pretrained(text_dir).eval()
        batch = tok(captions, padding=True, truncation=True,
                    max_length=text_spec["max_length"], return_tensors="pt")
        with torch.no_grad():
            if text_spec["pooling"] == "clip":
                emb = model(**batch).text_embeds
            else:
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                emb = (hidden * mask).sum(1) / mask.sum(1)
        text = torch.nn.functional.normalize(emb, dim=-1).numpy()
    else:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(folder).eval()
        processor = CLIPProcessor.from_pretrained(folder)
        image, text = clip_embeddings(model, processor, images, captions)
        if lora_base:
            from peft import PeftModel

            base = CLIPModel.from_pretrained(lora_base)
            peft_model = PeftModel.from_pretrained(base, folder / "lora_adapter").eval()
            result["peft_image"], result["peft_text"] = clip_embeddings(
                peft_model, processor, images, captions)
    result["image"], result["text"] = image, text
    result["r1"] = np.array(recall_at_1(image, text, image_of))
    np.savez(out_npz, **result)


def run_card_usage(folder: Path) -> None:
    """The card's usage snippet as a user pastes it: in the folder (it reads photo.jpg
    there), in a namespace of its own, so it must import what it uses."""
    card = (folder / "README.md").read_text()
    snippet = card.split("## Usage")[1].split("```python\n")[1].split("```")[0]
    here = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(snippet, str(folder / "README.md"), "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(here)


def main(jobs_json):
    for job in json.loads(Path(jobs_json).read_text()):
        try:
            embed(job["folder"], job["images"], job["captions"], job["out"], job["lora_base"])
            if job["card"]:
                run_card_usage(Path(job["folder"]))
        except Exception:
            Path(job["out"] + ".error").write_text(traceback.format_exc())
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "cliptune")
    if leaked:
        raise SystemExit(f"the consumer imported cliptune: {leaked}")


if __name__ == "__main__":
    main(*sys.argv[1:])
