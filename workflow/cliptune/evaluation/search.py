"""Search a folder of your own images with one trained variant.

Two steps with different inputs, so Snakemake caches them apart (workflow/rules/search.smk):
``embed_folder`` runs the variant's image tower over the folder once (it depends on the
folder's contents and the model, never on the queries); ``text_to_image_hits`` and
``image_to_text_hits`` rank those cached embeddings against query embeddings from the
variant's own text tower, or the evaluation split's captions as ``evaluate`` embedded them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from cliptune.config.load import short_hash
from cliptune.data.caches.images import try_load_rgb
from cliptune.data.sources.image_folder import FolderEntry, ImageFolderError, scan_folder
from cliptune.evaluation.evaluate import encode_pixels
from cliptune.evaluation.retrieval_metrics import topk_images, topk_texts
from cliptune.files.atomic import atomic_path, write_text
from cliptune.files.hashing import file_sha256
from cliptune.models.factory import load_variant_model
from cliptune.retrieval import DEFAULT_SCORE_MEMORY
from cliptune.runtime import autocast_dtype, embed_all, pick_device, progress

log = logging.getLogger(__name__)

EMBEDDINGS, MANIFEST, SKIPPED = "image_embeddings.safetensors", "image_manifest.csv", "skipped.txt"
DECODE_WINDOW = 512  # images decoded ahead of the model at most
# Last run's embeddings, kept beside the outputs because Snakemake removes a job's outputs
# before it reruns: a changed folder re-embeds only its new and edited files.
REUSE_DIR = ".reuse"


def _decoded(folder: Path, entries: list[FolderEntry], size: int, workers: int,
             ) -> Iterator[tuple[FolderEntry, np.ndarray | None, str]]:
    """(entry, pixels or None, why not) in folder order. Threads, not processes: Pillow
    releases the GIL while decoding and resizing, and nothing is forked after torch.
    Submitted a window at a time: imap would otherwise decode the whole folder ahead of
    a slower model and hold every decoded image in memory."""
    def job(e: FolderEntry):
        return (e, *try_load_rgb(folder / e.file, size))

    with ThreadPool(max(1, workers)) as pool:
        for start in range(0, len(entries), DECODE_WINDOW):
            yield from pool.imap(job, entries[start:start + DECODE_WINDOW], chunksize=4)


def _embed_entries(model, folder: Path, entries: list[FolderEntry], size: int,
                   batch_size: int, device, amp_dtype, workers: int, show_progress: bool,
                   ) -> tuple[torch.Tensor, list[FolderEntry], list[tuple[str, str]]]:
    """Embeddings of every decodable file, the files kept, and (file, reason) skipped."""
    kept, skipped = [], []

    def batches() -> Iterator[np.ndarray]:
        batch = []
        for entry, pixels, problem in progress(_decoded(folder, entries, size, workers),
                                               total=len(entries), desc="embed folder",
                                               unit="img", disable=not show_progress):
            if pixels is None:
                skipped.append((entry.file, problem))
                continue
            kept.append(entry)
            batch.append(pixels)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    emb = embed_all(lambda b: encode_pixels(model, b), batches(), device, amp_dtype)
    return emb, kept, skipped


def write_skipped(path: Path, folder: Path, skipped: list[tuple[str, str]]) -> None:
    lines = [f"# files in {folder} that were not embedded: {len(skipped)} (file<TAB>reason)"]
    lines += [f"{file}\t{reason}" for file, reason in skipped]
    write_text(path, "\n".join(lines) + "\n")


def _model_key(variant: dict, weights: Path, embed_dim: int, folder: Path) -> str:
    """Identity of everything an embedding depends on besides the file itself: the
    weights' bytes, the variant's settings (preprocessing included), the folder."""
    return short_hash({"weights": file_sha256(weights), "variant": variant, "dim": embed_dim,
                       "folder": str(folder)}, 16)


def _reusable(reuse: Path) -> dict[FolderEntry, torch.Tensor]:
    """Embedding per file (name, size, mtime) from the last run with the same model key."""
    if not (reuse / EMBEDDINGS).exists() or not (reuse / MANIFEST).exists():
        return {}
    try:
        emb = load_file(str(reuse / EMBEDDINGS))["image"]
        table = pd.read_csv(reuse / MANIFEST, keep_default_na=False)
        entries = [FolderEntry(str(f), int(n), int(m)) for f, n, m in
                   zip(table["file"], table["size"], table["mtime_ns"], strict=True)]
        if len(entries) != len(emb):
            raise ValueError(f"{len(emb)} embeddings for {len(entries)} files")
    except Exception as err:  # a damaged leftover only costs a full re-embed
        log.warning("not reusing %s (%s): embedding every file", reuse, err)
        return {}
    return dict(zip(entries, emb, strict=True))


def _keep_for_reuse(out_dir: Path, key: str) -> None:
    """Hard-link this run's outputs under REUSE_DIR/key (copy where links fail); other
    keys' leftovers go: only the current model's embeddings can be reused."""
    root = out_dir / REUSE_DIR
    if root.exists():
        shutil.rmtree(root)
    (root / key).mkdir(parents=True)
    for name in (EMBEDDINGS, MANIFEST):
        try:
            os.link(out_dir / name, root / key / name)
        except OSError:
            shutil.copy2(out_dir / name, root / key / name)


def embed_folder(variant: dict, weights: Path, embed_dim: int, folder: Path, out_dir: Path,
                 batch_size: int = 64, workers: int = 2, show_progress: bool = True) -> dict:
    """Embed every readable image below ``folder`` with the variant's image tower, as
    evaluate does (same preprocessing as the dataset cache: RGB, shorter side to
    ``image_size``, centre crop). Files unchanged since the last run with the same model
    (name, size, mtime) keep their embeddings. Writes EMBEDDINGS, MANIFEST (row, file, size,
    mtime_ns) and SKIPPED into ``out_dir``; returns counts and the measured images/s."""
    out_dir, entries = Path(out_dir), scan_folder(Path(folder))
    key = _model_key(variant, Path(weights), embed_dim, Path(folder))
    previous = _reusable(out_dir / REUSE_DIR / key)
    todo = [e for e in entries if e not in previous]
    device = pick_device(variant["train"]["device"])
    new_emb, new_kept, skipped, seconds = torch.empty(0), [], [], 0.0
    if todo:
        amp_dtype = autocast_dtype(variant["train"]["precision"], device)
        model = load_variant_model(variant, weights, embed_dim, device)
        start = time.perf_counter()
        new_emb, new_kept, skipped = _embed_entries(model, Path(folder), todo,
                                                    variant["image_size"], batch_size,
                                                    device, amp_dtype, workers, show_progress)
        seconds = time.perf_counter() - start
    rows = {**previous, **dict(zip(new_kept, new_emb, strict=True))}
    kept = [e for e in entries if e in rows]
    emb = torch.stack([rows[e] for e in kept]) if kept else torch.empty(0)
    write_skipped(out_dir / SKIPPED, folder, skipped)
    for file, why in skipped[:50]:  # also in the log: a failed job's outputs are removed
        log.warning("skipped %s: %s", file, why)
    if not kept:
        first = "; ".join(f"{f}: {why}" for f, why in skipped[:3])
        raise ImageFolderError(
            f"search.images: none of the {len(entries)} files in {folder} is a readable "
            f"image (first: {first}); the job's log lists the others")
    manifest = pd.DataFrame({"row": np.arange(len(kept)), "file": [e.file for e in kept],
                             "size": [e.size for e in kept],
                             "mtime_ns": [e.mtime_ns for e in kept]})
    with atomic_path(out_dir / MANIFEST) as tmp:
        manifest.to_csv(tmp, index=False)
    meta = {"variant": variant["name"], "folder": str(folder),
            "image_size": str(variant["image_size"])}
    with atomic_path(out_dir / EMBEDDINGS) as tmp:
        save_file({"image": emb.contiguous()}, str(tmp), metadata=meta)
    _keep_for_reuse(out_dir, key)
    rate = len(new_kept) / max(seconds, 1e-9)  # decoding included: what a user waits for
    log.info("%s: %d images of %s: %d embedded in %.1f s (%.1f img/s on %s), %d unchanged "
             "since the last run reused, %d skipped", variant["name"], len(kept), folder,
             len(new_kept), seconds, rate, device, len(kept) - len(new_kept), len(skipped))
    return {"images": len(kept), "embedded": len(new_kept), "reused": len(kept) - len(new_kept),
            "skipped": len(skipped), "seconds": seconds, "images_per_second": rate}


def load_folder_embeddings(embeddings: Path, manifest: Path) -> tuple[torch.Tensor, list[str]]:
    """The cached folder embeddings [n, D] and the file of each row."""
    emb = load_file(str(embeddings))["image"].float()
    files = pd.read_csv(manifest, keep_default_na=False)["file"].astype(str).tolist()
    if len(files) != len(emb):
        raise RuntimeError(f"{embeddings} has {len(emb)} rows but {manifest} lists {len(files)} "
                           "files; delete both and rerun the search_embed job")
    return emb, files


def text_to_image_hits(encode: Callable[[list[str]], torch.Tensor], queries: list[str],
                       image_emb: torch.Tensor, files: list[str], k: int,
                       score_memory: int = DEFAULT_SCORE_MEMORY) -> pd.DataFrame:
    """Per query its top-``k`` folder images: columns query, rank (1 = best), file, score
    (cosine similarity); ``score_memory`` bytes of scores at once."""
    scores, idx = topk_images(encode(list(queries)), image_emb, k, score_memory=score_memory)
    rows = [{"query": q, "rank": j + 1, "file": files[int(i)], "score": float(s)}
            for q, srow, irow in zip(queries, scores, idx, strict=True)
            for j, (s, i) in enumerate(zip(srow, irow, strict=True))]
    return pd.DataFrame(rows, columns=["query", "rank", "file", "score"])


def eval_captions(eval_embeddings: Path, captions_parquet: Path,
                  ) -> tuple[torch.Tensor, pd.DataFrame]:
    """The evaluation split's caption embeddings exactly as ``evaluate`` saved them (the
    variant's own text tower or the frozen encoder), one row per distinct caption text:
    a repeated caption would fill several of an image's top-K slots with the same words."""
    data = load_file(str(eval_embeddings))
    table = pd.read_parquet(captions_parquet, columns=["caption_id", "image_id", "caption"])
    ids = pd.Series(data["caption_id"].numpy(), name="caption_id")
    caps = table.set_index("caption_id").reindex(ids)
    if caps["caption"].isna().any():
        raise RuntimeError(f"{eval_embeddings} does not match {captions_parquet} (unknown "
                           "caption ids); rerun evaluate for this variant")
    caps = caps.reset_index()
    first = ~caps["caption"].duplicated()
    keep = torch.from_numpy(np.flatnonzero(first.to_numpy()))
    return data["text"].float()[keep], caps[first].reset_index(drop=True)


def image_to_text_hits(image_emb: torch.Tensor, files: list[str], text_emb: torch.Tensor,
                       captions: pd.DataFrame, k: int,
                       score_memory: int = DEFAULT_SCORE_MEMORY) -> pd.DataFrame:
    """Per folder image its top-``k`` captions: columns file, rank, caption, score,
    caption_id, image_id (the evaluation image that caption describes); ``score_memory``
    bytes of scores at once."""
    scores, idx = topk_texts(image_emb, text_emb, k, score_memory=score_memory)
    picked = captions.iloc[idx.reshape(-1).numpy()].reset_index(drop=True)
    k_eff = idx.shape[1]
    return pd.DataFrame({
        "file": np.repeat(files, k_eff), "rank": np.tile(np.arange(1, k_eff + 1), len(files)),
        "caption": picked["caption"], "score": scores.reshape(-1).numpy().astype(float),
        "caption_id": picked["caption_id"].astype(np.int64),
        "image_id": picked["image_id"].astype(np.int64)})
