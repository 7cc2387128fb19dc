"""The caption-embedding cache: every caption of a split through a frozen text tower.

Embeddings are L2-normalised and stored in the captions Parquet's row order,
with the caption ids so readers can prove the order matches.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from cliptune.files.atomic import atomic_path
from cliptune.files.integrity import verify
from cliptune.models.text_encoder import TextEncoder, encode_texts
from cliptune.runtime import pick_device

log = logging.getLogger(__name__)


def build_text_cache(
    captions_parquet: Path,
    output: Path,
    model: str,
    pooling: str = "auto",
    max_length: int = 77,
    batch_size: int = 256,
    device: str = "auto",
) -> dict:
    captions = pd.read_parquet(captions_parquet, columns=["caption_id", "caption"])
    dev = pick_device(device)
    encoder = TextEncoder(model, pooling=pooling, max_length=max_length)
    log.info("encoding %d captions with %s (%s pooling) on %s", len(captions), model,
             encoder.pooling, dev)
    emb = encode_texts(encoder, captions["caption"].tolist(), batch_size=batch_size, device=dev)
    tensors = {
        "embeddings": emb.contiguous(),
        # Stored so readers can prove the row order matches the Parquet they load.
        "caption_id": torch.from_numpy(captions["caption_id"].to_numpy(np.int64, copy=True)),
    }
    metadata = {"model": model, "pooling": encoder.pooling, "max_length": str(encoder.max_length)}
    with atomic_path(output, seal=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return {"n": len(captions), "dim": encoder.dim}


def load_text_cache(path: Path, captions: pd.DataFrame) -> torch.Tensor:
    """Embeddings aligned with ``captions`` (which may be a filtered subset of the cache)."""
    if captions["caption_id"].duplicated().any():  # a Parquet from before caption_tidy
        dup = captions.loc[captions["caption_id"].duplicated(), "caption_id"].head(5).tolist()
        raise RuntimeError(
            f"captions table has duplicate caption ids (e.g. {dup}); rerun the captions rule "
            f"(snakemake --forcerun captions), which makes them unique, then {path.name}"
        )
    verify(path)
    data = load_file(str(path))
    ids = data["caption_id"].numpy()
    pos = pd.Series(np.arange(len(ids)), index=ids)
    try:
        rows = pos.loc[captions["caption_id"].to_numpy()].to_numpy()
    except KeyError as exc:
        raise RuntimeError(
            f"text cache {path} does not match the captions table (missing caption ids); "
            "delete it and rerun so Snakemake rebuilds it"
        ) from exc
    return data["embeddings"][torch.from_numpy(np.array(rows, dtype=np.int64))]
