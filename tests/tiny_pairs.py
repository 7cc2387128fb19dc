"""Tiny on-disk train/val splits in the workflow's cache formats (no encoders needed),
for tests that run the train stage in subprocesses (preemption, torchrun)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

VARIANT_BASE = {
    "name": "tiny",
    "select_split": "select",  # what config.resolve_variant adds
    "image_size": 32,
    "model": {"backbone": "resnet18", "weights": None, "pooling": "avg", "attention_heads": 4,
              "head": {"hidden_dim": 32, "depth": 2, "norm": "none", "dropout": 0.0},
              "freeze_backbone": False},
    "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.05,
              "warmup_fraction": 0.1, "grad_clip": 1.0, "temperature": 0.07,
              "learnable_temperature": True, "max_logit_scale": 100.0,
              "sampler": "one_caption_per_image", "seed": 0, "device": "cpu",
              "precision": "fp32", "max_nonfinite_steps": 20, "checkpoint_every_epochs": 1,
              "checkpoint_every_steps": 0, "checkpoint_every_minutes": 0, "devices": 1,
              "nodes": 1},
    "eval": {"split": "val", "ks": [1, 5], "score_memory_mb": 0.02, "batch_size": 16},
}


def tiny_variant(**train) -> dict:
    """The full resolved variant as train_variant sees it, with train overrides.

    Starts from the config DEFAULTS so keys other features add stay valid."""
    from cliptune.config.load import DEFAULTS, deep_merge

    base = deep_merge({"train": DEFAULTS["train"], "model": DEFAULTS["model"]}, VARIANT_BASE)
    return deep_merge(base, {"train": train})


def write_split(folder: Path, prefix: str, n_images: int, seed: int, dim: int = 16,
                size: int = 32) -> dict[str, str]:
    """Captions parquet, text cache, image array + index for ``n_images`` (2 captions each)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    image_ids = np.arange(n_images, dtype=np.int64) + 1000 * seed
    caps = pd.DataFrame({
        "image_id": np.repeat(image_ids, 2),
        "caption_id": np.arange(2 * n_images, dtype=np.int64) + 10_000 * seed,
        "caption": [f"caption {i}" for i in range(2 * n_images)],
        "file_name": [f"{prefix}/{i}.jpg" for i in np.repeat(image_ids, 2)],
        "split": prefix,
    })
    paths = {k: str(folder / f"{prefix}.{ext}") for k, ext in
             [("captions", "parquet"), ("text", "safetensors"), ("array", "npy"),
              ("index", "index.parquet")]}
    caps.to_parquet(paths["captions"], index=False)
    text = torch.nn.functional.normalize(torch.from_numpy(
        rng.standard_normal((len(caps), dim)).astype(np.float32)), dim=-1)
    save_file({"embeddings": text, "caption_id": torch.from_numpy(caps["caption_id"].to_numpy().copy())},
              paths["text"])
    np.save(paths["array"], rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8))
    pd.DataFrame({"row": np.arange(n_images), "image_id": image_ids,
                  "file_name": [f"{prefix}/{i}.jpg" for i in image_ids], "ok": True,
                  "problem": ""}).to_parquet(paths["index"], index=False)
    return {f"{role}_{k}": v for role in [prefix] for k, v in paths.items()}


def write_spec(tmp: Path, variant: dict, n_train: int = 32, n_val: int = 16,
               name: str = "run") -> Path:
    """Data (shared by all runs in ``tmp``) plus a launch spec for one run."""
    inputs = {}
    data = tmp / "data"
    inputs.update(write_split(data, "train", n_train, seed=1) if not (data / "train.npy").exists()
                  else _existing(data, "train"))
    inputs.update(write_split(data, "val", n_val, seed=2) if not (data / "val.npy").exists()
                  else _existing(data, "val"))
    run = tmp / name
    spec = {"variant": variant, "inputs": inputs, "out_dir": str(run / "out"),
            "state": str(run / "ckpt" / "state.pt"), "log": str(run / "train.log"),
            "log_dir": str(run / "logs"), "threads": 1}
    run.mkdir(parents=True, exist_ok=True)
    path = run / "launch.json"
    path.write_text(json.dumps(spec))
    return path


def _existing(folder: Path, prefix: str) -> dict[str, str]:
    return {f"{prefix}_{k}": str(folder / f"{prefix}.{ext}") for k, ext in
            [("captions", "parquet"), ("text", "safetensors"), ("array", "npy"),
             ("index", "index.parquet")]}


def load_train_val(folder: Path, n_train: int = 16, n_val: int = 8):
    """(train, val) PairData of tiny on-disk splits, as the train stage loads them."""
    from cliptune.data.loading.pairs import PairData

    out = {}
    for prefix, n, seed in (("train", n_train, 1), ("val", n_val, 2)):
        paths = write_split(folder, prefix, n, seed=seed)
        out[prefix] = PairData.load(*(paths[f"{prefix}_{k}"] for k in
                                      ("captions", "text", "array", "index")))
    return out["train"], out["val"]
