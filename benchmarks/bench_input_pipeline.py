"""Training input pipeline, images/s delivered to the model: cliptune's cache vs per-epoch JPEG decode.

    python benchmarks/bench_input_pipeline.py [--images 1000] [--size 224] [--batch-size 64]
                                              [--threads 2] [--epochs 3]

Generates COCO-sized 640x480 JPEGs (photo-like: smooth structure + texture, ~q90),
then delivers training batches (float, CLIP-normalised, NCHW, ``--size`` px) two ways:

* reference (the course notebooks): an ImageFolder-like Dataset that opens each JPEG
  with PIL every epoch, Resize + CenterCrop + ToTensor + Normalize, through a
  torch DataLoader with ``--threads`` worker processes;
* cliptune: the image cache (decoded once at the training size, uint8 NHWC memmap),
  PairData.fetch (one fancy-index read per batch) through BatchLoader (prefetch
  thread, settings from the rule's threads), then the uint8 -> float normalisation
  (PixelNormalize) as training does with its default ``train.augment.enabled: false``
  (with augmentation on, ``augment_images`` adds its warp on the training device).

Both run in this process on the same files; the one-time cache build is reported too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd
import torch
from bench_common import WORK, command_line, header, load_average, write_result
from PIL import Image


def make_jpegs(folder, n: int, seed: int = 0) -> list[str]:
    """640x480 photo-like JPEGs: low-frequency colour fields + mid-frequency texture + noise."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"COCO_bench_{i:06d}.jpg" for i in range(n)]
    todo = [i for i, f in enumerate(names) if not (folder / f).exists()]
    rng = np.random.default_rng(seed)
    for i in todo:
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((640, 480), Image.BICUBIC), np.float32)
        mid = rng.normal(0, 1, (60, 80, 1)).astype(np.float32)
        tex = np.asarray(Image.fromarray(((mid[..., 0] + 3) * 40).clip(0, 255).astype(np.uint8))
                         .resize((640, 480), Image.BILINEAR), np.float32)[..., None]
        img = base * 0.7 + tex * 0.3 + rng.normal(0, 6, (480, 640, 1))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / names[i], quality=90)
    return names


class JpegDataset(torch.utils.data.Dataset):
    """The notebook approach: decode + resize + tensorise one image per __getitem__."""

    def __init__(self, files, size):
        from torchvision import transforms as T

        from cliptune.models.image_tower import CLIP_MEAN, CLIP_STD

        self.files = files
        self.tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                             T.CenterCrop(size), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as img:
            return self.tf(img.convert("RGB"))


def reference_epoch(files, size, batch_size, workers, seed) -> tuple[float, int]:
    loader = torch.utils.data.DataLoader(
        JpegDataset(files, size), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, generator=torch.Generator().manual_seed(seed))
    n, t0 = 0, time.perf_counter()
    for x in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, size, size)
        n += x.shape[0]
    return time.perf_counter() - t0, n


def cliptune_epoch(data, size, batch_size, threads, seed, prefetch=True) -> tuple[float, int]:
    """What training does by default (train.augment off): BatchLoader fetches the next
    planned batch from the memmap in a background thread; the consumer turns uint8 NHWC
    into normalised float NCHW with PixelNormalize, the model's own first op."""
    from cliptune.data.loading.batch_loader import BatchLoader, loader_settings
    from cliptune.data.loading.pairs import plan_epoch
    from cliptune.models.image_tower import PixelNormalize

    norm = PixelNormalize()
    settings = loader_settings(threads, torch.device("cpu"))
    n, t0 = 0, time.perf_counter()
    plan = plan_epoch(data, batch_size, "one_caption_per_image", seed, 0)
    loader = (BatchLoader.from_settings(data.fetch, plan, settings) if prefetch
              else BatchLoader(data.fetch, plan, workers=0, prefetch=0))
    for images, _text in loader:
        x = norm.from_uint8(images)
        assert x.dtype == torch.float32 and x.shape[1:] == (3, size, size)
        n += x.shape[0]
    return time.perf_counter() - t0, n


def build_cache(root, names, cache_size, threads):
    from cliptune.data.caches.images import build_image_cache
    from cliptune.data.loading.pairs import PairData
    from cliptune.files.atomic import write_parquet

    caps = root / "captions.parquet"
    write_parquet(caps, pd.DataFrame({"image_id": np.arange(len(names)), "file_name": names}))
    arr, idx = root / f"cache_{cache_size}.npy", root / f"cache_{cache_size}.index.parquet"
    t0 = time.perf_counter()
    build_image_cache(caps, root / "jpeg", cache_size, arr, idx, workers=threads)
    seconds = time.perf_counter() - t0
    pixels = np.load(arr, mmap_mode="r")
    n = len(names)
    data = PairData(pixels, pd.DataFrame({"caption_id": np.arange(n), "image_id": np.arange(n)}),
                    torch.zeros(n, 8), np.arange(n), np.arange(n), np.arange(n))
    return data, seconds, arr.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224, help="training resolution")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="the rule's threads: DataLoader "
                    "workers for the reference, torch threads + BatchLoader for cliptune")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per method")
    args = ap.parse_args(argv)
    load_start = load_average()
    torch.set_num_threads(args.threads)
    root = WORK / "input_pipeline"
    t0 = time.perf_counter()
    names = make_jpegs(root / "jpeg", args.images)
    print(f"{len(names)} JPEGs ready in {time.perf_counter() - t0:.1f}s", flush=True)
    files = [str(root / "jpeg" / f) for f in names]
    jpeg_kib = np.mean([os.path.getsize(f) for f in files]) / 1024
    cache_size = args.size  # the image cache is built at the training resolution
    data, build_s, cache_bytes = build_cache(root, names, cache_size, args.threads)

    # Interleave the methods so background load hits all of them alike.
    times: dict[str, list[float]] = {"reference": [], "cliptune": [], "cliptune_noprefetch": []}
    counts = {}
    for epoch in range(args.epochs):
        for name in times:
            if name == "reference":
                s, n = reference_epoch(files, args.size, args.batch_size, args.threads, epoch)
            else:
                s, n = cliptune_epoch(data, args.size, args.batch_size, args.threads, epoch,
                                      prefetch=name == "cliptune")
            times[name].append(s)
            counts[name] = n
            print(f"epoch {epoch} {name}: {n / s:.0f} img/s", flush=True)
    rate = {k: counts[k] / statistics.median(v) for k, v in times.items()}
    speedup = rate["cliptune"] / rate["reference"]
    met = speedup >= 5
    lines = header("Training input pipeline: image cache vs per-epoch JPEG decode",
                   command_line(), load_start)
    lines += [
        f"{args.images} generated 640x480 JPEGs (mean {jpeg_kib:.0f} KiB, quality 90), "
        f"batches of {args.batch_size} at {args.size} px, {args.threads} threads, median of "
        f"{args.epochs} interleaved epochs. Images/s = images delivered to the model as "
        "normalised float NCHW batches per second of wall time (DataLoader start-up included).",
        "",
        "| pipeline | per-epoch work | images/s | vs reference |",
        "|---|---|---|---|",
        f"| reference: PIL Dataset + DataLoader({args.threads} workers) | decode JPEG, "
        f"Resize, CenterCrop, ToTensor, Normalize | {rate['reference']:.0f} | 1.0x |",
        f"| cliptune cache, no prefetch | fetch from memmap, uint8 -> float normalise "
        f"(PixelNormalize) | {rate['cliptune_noprefetch']:.0f} | "
        f"{rate['cliptune_noprefetch'] / rate['reference']:.1f}x |",
        f"| **cliptune cache + BatchLoader** | same, next batch fetched in a background thread "
        f"| **{rate['cliptune']:.0f}** | **{speedup:.1f}x** |",
        "",
        f"- Target >= 5x on {args.threads} cores: **{'met' if met else 'NOT met'}** "
        f"({speedup:.1f}x).",
        f"- One-time cost: building the {cache_size} px cache took {build_s:.1f} s "
        f"({args.images / build_s:.0f} img/s with JPEG draft mode and {args.threads} "
        f"processes; {cache_bytes / 2**20:.0f} MiB on disk), i.e. "
        f"{build_s * rate['reference'] / args.images:.2f} reference epochs; every later epoch, "
        "variant and evaluation reads the cache.",
        "- Per-epoch timings (s): " + "; ".join(
            f"{k} " + ", ".join(f"{s:.2f}" for s in v) for k, v in times.items()),
        "",
    ]
    write_result("input_pipeline.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
