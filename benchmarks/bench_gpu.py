"""The GPU check: cliptune's training step vs a bare PyTorch loop, loader rate, memory, evaluation.

    python benchmarks/bench_gpu.py [--mode auto|gpu|cpu-tiny] [--budget-s 480] [--out PATH]

``make bench-gpu`` runs it. On a CUDA device (``--mode auto`` picks it) it measures, with
random weights and generated data (nothing is downloaded):

* three models at the lab's sizes: the lab baseline (config/config.yaml ``baseline``:
  ResNet50 at 224 px, whole trunk fine-tuned, bf16 autocast, channels_last), a CLIP
  ViT-B/32-shaped ``model.kind: clip`` full fine-tune (transformers' default
  ``CLIPConfig`` is ViT-B/32, saved locally with random weights) and the ViT-B/16 dual
  encoder from scratch (config/flickr30k_scratch.yaml);
* for each, at batch 128 and 256: images/s of cliptune's training step (one epoch of
  ``Trainer.run_epoch``: BatchLoader prefetch from the memory-mapped cache, the real
  step, NaN guards, clipping, scheduler, logging) against a bare loop of the same model
  and batch in the same process (fetch, normalise, forward, InfoNCE, backward, clip,
  AdamW step), and cliptune's peak GPU memory;
* the rate at which the memory-mapped cache and BatchLoader deliver batches, which must
  exceed the fastest step rate, or the GPU waits for data;
* evaluation (``retrieval_metrics_and_ranks`` on random unit vectors) at 5k x 25k and
  40k x 200k, beside the bare matrix product computing the same scores.

Without a GPU it runs the same sections in a tiny CPU mode (small models, images and
batches) so the script is exercised by the test suite and is never broken when a GPU
appears. A section that fails records its error and the run continues; a section that
would start past ``--budget-s`` is recorded as skipped.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from bench_common import (
    REPO,
    RESULTS,
    WORK,
    TinyClip,
    command_line,
    header,
    load_average,
    random_image_cache,
    save_random_clip,
    write_result,
)

WORDS = np.array(["a", "man", "woman", "dog", "cat", "two", "three", "red", "blue", "green",
                  "small", "large", "on", "in", "with", "the", "of", "near", "street", "table",
                  "plate", "pizza", "bus", "train", "sitting", "standing", "holding", "riding",
                  "beach", "field", "kitchen", "room", "white", "black", "young", "people"])

# Per mode: sizes of every section. gpu = the lab's real shapes; cpu-tiny = the same code
# paths at sizes a CPU finishes in seconds.
MODES = {
    "gpu": {"image_size": 224, "batches": (128, 256), "steps": 12, "warmup_epochs": 1,
            "eval_sizes": ((5000, 25000), (40504, 202654)), "precision": "bf16",
            "clip": {"tiny": False}, "loader_batches": 60},
    "cpu-tiny": {"image_size": 32, "batches": (2, 4), "steps": 2, "warmup_epochs": 0,
                 "eval_sizes": ((100, 500), (400, 2000)), "precision": "fp32",
                 "clip": {"tiny": True}, "loader_batches": 8},
}


# cpu-tiny's CLIP; gpu mode uses transformers' default CLIPConfig (ViT-B/32).
TINY_CLIP = TinyClip(width=32, intermediate=64, heads=2, image_size=32, projection_dim=16)


def resolved(config_file: str, variant: str) -> dict:
    from cliptune.config.load import load_config, resolve_variant

    cfg = load_config(yaml.safe_load((REPO / "config" / config_file).read_text()))
    return resolve_variant(cfg, variant)


def variants(mode: dict, device: torch.device, scratch: Path) -> dict[str, dict]:
    """The three models, resolved from the shipped configs, with random weights."""
    out = {}
    lab = resolved("config.yaml", "baseline")
    lab["model"]["weights"] = None  # random init: speed only, nothing to download
    out["lab baseline (ResNet50, fine-tuned)"] = lab

    clip = copy.deepcopy(lab)
    clip["name"] = "clip_b32_finetune"
    tiny = mode["clip"]["tiny"]
    clip["model"]["kind"] = "clip"
    checkpoint = save_random_clip(scratch / f"clip_b32_{tiny}", TINY_CLIP if tiny else None)
    clip["model"]["clip"].update(model=str(checkpoint), lock_image=False, lock_text=False,
                                 lora={})
    clip["train"].update(temperature=None)
    out["CLIP ViT-B/32 (full fine-tune)"] = clip

    scratch_v = resolved("flickr30k_scratch.yaml", "clip_scratch")
    if tiny:
        de = scratch_v["model"]["dual_encoder"]
        de["embed_dim"] = 16
        de["vision"].update(patch_size=8, width=32, depth=2, heads=2)
        de["text"].update(width=32, depth=2, heads=2)
    out["ViT-B/16 dual encoder (from scratch)"] = scratch_v

    for v in out.values():
        v["image_size"] = mode["image_size"]
        v["train"].update(device=device.type, precision=mode["precision"], epochs=1,
                          channels_last=True, compile=False, accum_steps=1,
                          checkpoint_every_steps=0, checkpoint_every_minutes=0,
                          tensorboard=False, warmup_steps=None)
    return out


def synthetic_pairs(folder: Path, n: int, size: int, dim: int, seed: int = 0):
    """A memory-mapped uint8 image cache (the image_cache stage's .npy layout) with one
    caption per image (random words) and random unit text embeddings, as PairData."""
    from cliptune.data.loading.pairs import PairData

    pixels = random_image_cache(folder / f"pixels_{n}_{size}.npy", n, size, seed)
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64)
    captions = pd.DataFrame({
        "image_id": ids, "caption_id": ids,
        "caption": [" ".join(rng.choice(WORDS, rng.integers(8, 16))) for _ in range(n)]})
    text = torch.nn.functional.normalize(torch.from_numpy(
        rng.standard_normal((n, dim)).astype(np.float32)), dim=1)
    return PairData(pixels, captions, text, ids.copy(), ids.copy(), ids.copy())


def text_dim(variant: dict) -> int:
    from cliptune.models.factory import build_model

    if variant["model"]["kind"] == "resnet":
        return 512  # the lab's cached CLIP text embeddings
    return build_model(variant, 512).clip.config.projection_dim


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cliptune_epoch(variant: dict, data, device: torch.device, scratch: Path,
                   warmup_epochs: int) -> dict:
    """One epoch of cliptune's Trainer (after warm-up epochs of the same trainer)."""
    from cliptune.training.distributed import DistContext
    from cliptune.training.train_log import TrainLogger
    from cliptune.training.trainer import Trainer

    trainer = Trainer(variant, data, data, scratch / "state.pt", DistContext.single(device),
                      show_progress=False, log_dir=None)
    trainer.logger = TrainLogger(None, resume_step=None, tensorboard=False,
                                 every=variant["train"]["log_every_steps"])
    for _ in range(warmup_epochs):  # cuDNN/cuBLAS selection, allocator, page cache
        trainer.run_epoch()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run = trainer.run_epoch()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if run.diverged is not None or len(run.losses) != len(run.batches):
        raise RuntimeError(f"cliptune epoch did not train every step: {run.diverged}, "
                           f"{len(run.losses)} of {len(run.batches)} steps")
    return {"seconds": seconds, "images": len(run.batches) * variant["train"]["batch_size"],
            "peak": peak}


def bare_epoch(variant: dict, data, device: torch.device, warmup_epochs: int) -> dict:
    """The loop a tutorial would write around the same model: fetch, normalise,
    forward, InfoNCE, backward, clip, AdamW step; same autocast and memory format."""
    from cliptune.data.loading.pairs import plan_epoch
    from cliptune.models.factory import build_model
    from cliptune.models.image_tower import to_unit_float
    from cliptune.runtime import autocast_dtype, seed_everything
    from cliptune.training.losses import clip_loss

    tcfg = variant["train"]
    seed_everything(tcfg["seed"])
    model = build_model(variant, data.text.shape[1]).to(device)
    if variant["model"]["kind"] == "resnet":
        model.image.trunk.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg["lr"],
                            weight_decay=tcfg["weight_decay"])
    amp = autocast_dtype(tcfg["precision"], device)
    plan = plan_epoch(data, tcfg["batch_size"], tcfg["sampler"], tcfg["seed"], 0)
    captions = data.captions["caption"].to_numpy()

    def epoch() -> float:
        t0 = time.perf_counter()
        for rows in plan:
            images, text = data.fetch(rows)
            x = to_unit_float(images, device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                img = model.embed_images(x)
                txt = (text.to(device, non_blocking=True) if model.text_from_cache
                       else model.embed_texts(captions[rows].tolist()))
            loss = clip_loss(img.float(), txt.float(), model.scale())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            opt.step()
        sync(device)
        return time.perf_counter() - t0

    for _ in range(warmup_epochs):
        epoch()
    return {"seconds": epoch(), "images": len(plan) * tcfg["batch_size"]}


def loader_rate(data, batch: int, n_batches: int, device: torch.device) -> float:
    """Images/s the training loop's BatchLoader delivers from the memory-mapped cache
    (its settings for this device: prefetch threads, pinned memory on CUDA)."""
    from cliptune.data.loading.batch_loader import BatchLoader, loader_settings

    rng = np.random.default_rng(1)
    plan = [rng.choice(data.n_images, batch, replace=False) for _ in range(n_batches)]
    loader = BatchLoader.from_settings(data.fetch, plan,
                                       loader_settings(torch.get_num_threads(), device))
    t0 = time.perf_counter()
    for images, _text in loader:
        if device.type == "cuda":
            images.to(device, non_blocking=True)
    sync(device)
    return n_batches * batch / (time.perf_counter() - t0)


def evaluation(n_img: int, n_txt: int, device: torch.device) -> dict:
    """cliptune's blocked retrieval on random unit vectors vs the bare score product."""
    from cliptune.evaluation.retrieval_metrics import retrieval_metrics_and_ranks

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_img, 512, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(n_txt, 512, generator=g), dim=1)
    idx = torch.arange(n_txt) % n_img
    img_d, txt_d = img.to(device), txt.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    metrics, _, _ = retrieval_metrics_and_ranks(img_d, txt_d, idx, device=device)
    sync(device)
    t_eval = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    # The limit: every score of both directions once (i2t and t2i each score all pairs),
    # block by block so nothing else competes for memory.
    t0 = time.perf_counter()
    for q, c in ((img_d, txt_d), (txt_d, img_d)):
        for s in range(0, len(q), 1024):
            (q[s:s + 1024] @ c.T).max()
    sync(device)
    t_mm = time.perf_counter() - t0
    return {"seconds": t_eval, "matmul": t_mm, "peak": peak, "r1": metrics["i2t_R@1"]}


def _images_per_s(r: dict | None) -> float | None:
    return r["images"] / r["seconds"] if r else None


def _rate(r: float | None) -> str:
    return "failed" if r is None else f"{r:.3g}"


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["auto", "gpu", "cpu-tiny"], default="auto",
                    help="auto: gpu when CUDA is available, else cpu-tiny")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="sections that would start later than this are skipped (8 min)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: results/gpu.md (gpu), results/gpu_cpu_mode.md (cpu-tiny)")
    args = ap.parse_args(argv)
    start, load_start = time.perf_counter(), load_average()
    mode_name = args.mode if args.mode != "auto" else (
        "gpu" if torch.cuda.is_available() else "cpu-tiny")
    mode = MODES[mode_name]
    device = torch.device("cuda" if mode_name == "gpu" else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # see results/train_epoch.md: 2 threads on a busy VM stall
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    WORK.mkdir(exist_ok=True)
    errors: list[str] = []

    def section(name: str, fn):
        if time.perf_counter() - start > args.budget_s:
            errors.append(f"- {name}: skipped, the {args.budget_s:.0f} s budget was spent")
            return None
        t0 = time.perf_counter()
        try:
            got = fn()
            print(f"[bench_gpu] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
            return got
        except Exception as exc:  # noqa: BLE001 - recorded, and the next section runs
            errors.append(f"- {name}: **failed**: `{type(exc).__name__}: {exc}`")
            traceback.print_exc()
            return None

    rows, step_rates, loader_rows = [], [], []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        scratch = Path(tmp)
        models = section("build variants", lambda: variants(mode, device, WORK)) or {}
        for name, variant in models.items():
            dim = section(f"{name}: text dim", lambda v=variant: text_dim(v))
            if dim is None:
                continue
            for batch in mode["batches"]:
                v = copy.deepcopy(variant)
                v["train"]["batch_size"] = batch
                data = section(f"{name} batch {batch}: data", lambda b=batch, d=dim: synthetic_pairs(
                    scratch, b * mode["steps"], mode["image_size"], d))
                if data is None:
                    continue
                ours = section(f"{name} batch {batch}: cliptune step",
                               lambda v=v, d=data: cliptune_epoch(v, d, device, scratch,
                                                              mode["warmup_epochs"]))
                bare = section(f"{name} batch {batch}: bare loop",
                               lambda v=v, d=data: bare_epoch(v, d, device, mode["warmup_epochs"]))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                r_ours, r_bare = _images_per_s(ours), _images_per_s(bare)
                if r_ours:
                    step_rates.append(r_ours)
                ratio = f"{r_ours / r_bare:.2f}" if r_ours and r_bare else "-"
                rows.append(f"| {name} | {batch} | "
                            f"{_rate(r_ours)} | {_rate(r_bare)} | {ratio} | "
                            f"{_gib(ours['peak']) if ours else '-'} |")
        big = mode["batches"][-1]
        loader_data = section("loader data", lambda: synthetic_pairs(
            scratch, big * mode["steps"], mode["image_size"], 512))
        if loader_data is not None:
            got = section("loader rate", lambda: loader_rate(loader_data, big,
                                                             mode["loader_batches"], device))
            if got is not None:
                loader_rows.append(got)
    eval_rows = []
    for n_img, n_txt in mode["eval_sizes"]:
        r = section(f"evaluation {n_img}x{n_txt}", lambda a=n_img, b=n_txt: evaluation(a, b, device))
        if r is not None:
            eval_rows.append(f"| {n_img:,} x {n_txt:,} | {r['seconds']:.2f} | {r['matmul']:.2f} | "
                             f"{r['seconds'] / r['matmul']:.1f}x | {_gib(r['peak'])} |")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    lines = header(f"GPU check ({mode_name} mode on {device_name})", command_line(), load_start)
    if mode_name == "cpu-tiny":
        lines += ["**CPU mode**: no GPU was present, so every section ran at tiny sizes "
                  "(small models, 32 px, batches 2 and 4) to prove the script works; these "
                  "numbers say nothing about GPU speed. Run `make bench-gpu` on a GPU for "
                  "`results/gpu.md`.", ""]
    lines += [
        f"Device: **{device_name}**. Random weights, generated data ({mode['image_size']} px), "
        f"{mode['steps']} steps per timed epoch after {mode['warmup_epochs']} warm-up "
        f"epoch(s) of the same loop, precision "
        f"{mode['precision']}, channels_last. cliptune = `Trainer.run_epoch` (BatchLoader "
        "prefetch from the memory-mapped cache, the real step with NaN guards, clipping, "
        "scheduler, logging); bare = fetch, normalise, forward, InfoNCE, backward, clip, AdamW "
        "step on the same model and batches. Peak = `torch.cuda.max_memory_allocated` during "
        "cliptune's timed epoch.",
        "",
        "| model | batch | cliptune images/s | bare loop images/s | cliptune / bare | "
        "peak GPU memory (GiB) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if loader_rows:
        fastest = max(step_rates) if step_rates else float("nan")
        lines += [f"- Memory-mapped cache + BatchLoader deliver **{loader_rows[0]:.0f} "
                  f"images/s** at batch {big} ({mode['image_size']} px); fastest training "
                  f"step above: {fastest:.0f} images/s: the loader "
                  f"{'keeps up' if loader_rows[0] > fastest else '**does not keep up**'}.", ""]
    lines += [
        "## Evaluation (cliptune.evaluation.retrieval_metrics, random unit vectors, D = 512)",
        "",
        "| images x captions | evaluate (s) | bare score product (s) | ratio | peak GPU "
        "memory (GiB) |",
        "|---|---|---|---|---|",
        *eval_rows,
        "",
        "The bare product scores every pair of both directions in blocks of 1,024 queries "
        "(what any exact retrieval must compute); evaluate adds ranks, every metric and the "
        "top-K lists.",
        "",
    ]
    if errors:
        lines += ["## Sections that failed or were skipped", "", *errors, ""]
    lines.append(f"Total wall time: {time.perf_counter() - start:.0f} s.")
    out = args.out or RESULTS / ("gpu.md" if mode_name == "gpu" else "gpu_cpu_mode.md")
    if args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    else:
        write_result(out.name, lines)
    return 1 if errors and mode_name == "cpu-tiny" else 0


if __name__ == "__main__":
    raise SystemExit(main())
