"""Trunk + head variants: the image tower as ONNX (uint8 pixels in, L2-normalised
embedding out) and the frozen text tower as a Hugging Face folder, so images embed with
onnxruntime alone and captions with transformers alone."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cliptune.models.image_tower import input_stats

log = logging.getLogger(__name__)

ONNX_FILE = "image_tower.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "image_embeds"
OPSET = 17


class OnnxExtraMissingError(ImportError):
    pass


def require_onnx():
    """(onnx, onnxruntime), or an error naming the extra that installs them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise OnnxExtraMissingError(
            f"exporting a trunk + head variant needs onnx and onnxruntime ({exc.name} is "
            "missing). Fix: pip install 'cliptune[export]' (or pip install 'onnx>=1.16' "
            "'onnxruntime>=1.18') in the environment that runs `snakemake export`"
        ) from exc
    return onnx, onnxruntime


class PixelTower(nn.Module):
    """uint8 NHWC RGB (the image cache's layout) -> L2-normalised embedding: the
    normalisation runs inside the graph, exactly as ClipHead.encode_images does."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x01 = images.permute(0, 3, 1, 2).float() / 255.0
        return self.model.embed_images(x01)


def write_image_onnx(model: nn.Module, image_size: int, out: Path,
                     check_pixels: np.ndarray) -> float:
    """``model``: a cliptune.models.image_tower.ClipHead in eval mode. Writes
    ``out/image_tower.onnx`` and returns the largest absolute difference between
    onnxruntime's and torch's embeddings of ``check_pixels`` (uint8 N×S×S×3)."""
    onnx, ort = require_onnx()
    out.mkdir(parents=True, exist_ok=True)
    tower = PixelTower(model).eval()
    dummy = torch.zeros(2, image_size, image_size, 3, dtype=torch.uint8)
    path = out / ONNX_FILE
    # dynamo=False: the TorchScript exporter needs only `onnx`; the torch.export-based one
    # would add onnxscript to the extra. Deprecated in torch, present up to the 2.14 pin.
    with torch.no_grad():
        torch.onnx.export(tower, (dummy,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(check_pixels)})[0]
    with torch.no_grad():
        want = tower(torch.from_numpy(np.ascontiguousarray(check_pixels))).numpy()
    return float(np.abs(got - want).max())


def image_preprocessing(backbone: str, image_size: int) -> dict:
    """What a caller does before the ONNX graph, and what the graph does itself."""
    mean, std = input_stats(backbone)
    return {"input": INPUT_NAME, "output": OUTPUT_NAME, "layout": "NHWC", "dtype": "uint8",
            "channels": "RGB", "size": image_size,
            "resize": f"shorter side to {image_size} px, bicubic",
            "crop": f"centre {image_size}x{image_size}",
            "in_graph": {"scale": "1/255", "mean": list(mean), "std": list(std),
                         "output": "L2-normalised"}}


def write_text_folder(text_encoder: dict, out: Path) -> dict:
    """The frozen text tower that built the text cache, saved with save_pretrained, and
    how cliptune pools it: what ``text_tower`` in export.json records."""
    from cliptune.models.text_encoder import TextEncoder

    enc = TextEncoder(text_encoder["model"], text_encoder["pooling"], text_encoder["max_length"])
    out.mkdir(parents=True, exist_ok=True)
    enc.model.save_pretrained(out, safe_serialization=True)
    enc.tokenizer.save_pretrained(out)
    loader = "CLIPTextModelWithProjection" if enc.pooling == "clip" else "AutoModel"
    return {"model": text_encoder["model"], "folder": out.name, "loader": loader,
            "pooling": enc.pooling, "max_length": enc.max_length, "dim": enc.dim,
            "output": "L2-normalised"}
