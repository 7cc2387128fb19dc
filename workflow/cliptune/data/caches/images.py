"""Decode and resize every image once into a memory-mapped uint8 array.

The notebooks decode each JPEG every epoch; on two cores that caps training
at about 170 img/s, while reading this cache runs at thousands. Images follow
CLIP preprocessing up to the tensor: RGB, shorter side resized to ``size``
(bicubic), centre crop. Normalisation happens on the batch in the model's
device, so the cache stays a compact uint8 NHWC array.
"""

from __future__ import annotations

import logging
import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from cliptune.files.atomic import atomic_path, reserve, write_parquet
from cliptune.files.integrity import verify
from cliptune.runtime import progress

log = logging.getLogger(__name__)


class TooManyBadImagesError(RuntimeError):
    pass


def load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode any PIL image (grey, CMYK, palette, RGBA, EXIF-rotated) as size×size RGB."""
    with Image.open(path) as img:
        # JPEG draft decodes at a reduced scale directly: most of the resize for free.
        img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(base, rgba)
        img = img.convert("RGB")
        w, h = img.size
        if w == 0 or h == 0:
            raise ValueError("zero-size image")
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        img = img.resize(new, Image.BICUBIC)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def _decode(job: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    row, path, size = job
    return (row, *try_load_rgb(path, size))


def try_load_rgb(path: str | Path, size: int) -> tuple[np.ndarray | None, str]:
    """``(pixels, "")`` or ``(None, why)`` with why one of missing, zero-size, not an
    image, truncated, unreadable: the dataset cache and the folder search share it."""
    try:
        return load_rgb(Path(path), size), ""
    except FileNotFoundError:
        return None, "missing"
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a data problem
        detail = f"{type(exc).__name__}: {exc}"
        try:
            empty = os.path.getsize(path) == 0
        except OSError:
            empty = False
        if empty:
            return None, "zero-size: the file has 0 bytes"
        if str(exc) == "zero-size image":
            return None, "zero-size: the image has 0 pixels"
        if isinstance(exc, UnidentifiedImageError):
            return None, f"not an image: {detail}"
        if "truncated" in str(exc).lower():
            return None, f"truncated: {detail}"
        return None, f"unreadable: {detail}"


def build_image_cache(
    captions_parquet: Path,
    root: Path,
    size: int,
    array_out: Path,
    index_out: Path,
    workers: int = 2,
    max_bad_fraction: float = 0.001,
) -> pd.DataFrame:
    captions = pd.read_parquet(captions_parquet, columns=["image_id", "file_name"])
    images = captions.drop_duplicates("image_id").reset_index(drop=True)
    n = len(images)
    index = pd.DataFrame({
        "row": np.arange(n, dtype=np.int64),
        "image_id": images["image_id"].to_numpy(np.int64),
        "file_name": images["file_name"].astype(str),
        "ok": True,
        "problem": "",
    })
    jobs = [(i, str(Path(root) / f), size) for i, f in enumerate(index["file_name"])]
    with atomic_path(array_out, seal=True, expected_bytes=n * size * size * 3) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        reserve(tmp)
        ctx = get_context("fork") if workers > 1 else None
        pool = ctx.Pool(workers) if ctx else None
        try:
            results = pool.imap_unordered(_decode, jobs, chunksize=64) if pool else map(_decode,
                                                                                      jobs)
            for row, pixels, problem in progress(results, total=n, desc=f"cache {size}px",
                                             unit="img"):
                if pixels is None:
                    index.loc[row, ["ok", "problem"]] = [False, problem]
                else:
                    arr[row] = pixels
        finally:
            if pool:
                pool.close()
                pool.join()
        arr.flush()
        del arr
        bad = index[~index["ok"]]
        if len(bad):
            for rec in bad.head(20).itertuples():
                log.warning("problem image %s: %s", rec.file_name, rec.problem)
            log.warning("%d of %d images are unusable and excluded", len(bad), n)
        if n and len(bad) / n > max_bad_fraction:
            raise TooManyBadImagesError(
                f"{len(bad)} of {n} images could not be read (more than "
                f"dataset.max_bad_image_fraction = {max_bad_fraction}); first: "
                f"{bad['file_name'].iloc[0]} ({bad['problem'].iloc[0]}). Fix or re-download "
                "those files, or raise the threshold to exclude them"
            )
    write_parquet(index_out, index, seal=True)
    return index


def open_cache(array_path: Path, index_path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    verify(array_path)
    verify(index_path)
    arr = np.load(array_path, mmap_mode="r")
    index = pd.read_parquet(index_path)
    if len(index) != arr.shape[0]:
        raise RuntimeError(
            f"image cache {array_path} has {arr.shape[0]} rows but its index {index_path} "
            f"has {len(index)}; delete both and rerun"
        )
    return arr, index


def cache_rows(index: pd.DataFrame) -> pd.Series:
    """image id -> row of the cache array, for the index rows given."""
    return pd.Series(index["row"].to_numpy(), index=index["image_id"].to_numpy())
