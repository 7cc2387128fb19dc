"""Train one variant: image tower against frozen, cached caption embeddings (InfoNCE).

Resumable: a full training state is written atomically each epoch to a path
that is not a Snakemake output, so a killed or failed job loses at most one
epoch and the rerun continues from it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from cliptune.config import short_hash
from cliptune.io_utils import atomic_path, write_json
from cliptune.losses import clip_loss
from cliptune.models import ClipHead
from cliptune.pairs import PairData, plan_epoch, validation_batches
from cliptune.plots import plot_loss_curves
from cliptune.runtime import (
    autocast_dtype,
    device_name,
    pick_device,
    progress,
    seed_everything,
)
from cliptune.schedule import param_groups, warmup_cosine

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "temperature", "images_per_s",
                   "skipped_steps", "seconds"]


class DivergenceError(RuntimeError):
    pass


def build_model(variant: dict, embed_dim: int) -> ClipHead:
    return ClipHead(variant["model"], variant["train"], embed_dim, variant["image_size"])


def _loss(model: ClipHead, images, text, device, amp_dtype) -> torch.Tensor:
    pixels = model.image.normalize_uint8(images)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        emb = model(pixels)
    return clip_loss(emb, text.to(device, non_blocking=True), model.scale())


@torch.no_grad()
def validation_loss(model: ClipHead, data: PairData, batch_size: int, device,
                    amp_dtype) -> float:
    model.eval()
    total, count = 0.0, 0
    for rows in validation_batches(data, batch_size):
        images, text = data.fetch(rows)
        total += float(_loss(model, images, text, device, amp_dtype)) * len(rows)
        count += len(rows)
    return total / max(1, count)


def _state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def train_variant(variant: dict, train_data: PairData, val_data: PairData, out_dir: Path,
                  state_path: Path, show_progress: bool = True) -> dict:
    """Train, then write model.safetensors (best by validation loss), history.csv,
    train_report.json and loss_curves.png into ``out_dir``."""
    out_dir = Path(out_dir)
    tcfg = variant["train"]
    seed_everything(tcfg["seed"])
    device = pick_device(tcfg["device"])
    amp_dtype = autocast_dtype(tcfg["precision"], device)
    embed_dim = train_data.text.shape[1]
    model = build_model(variant, embed_dim).to(device)
    model.image.trunk.to(memory_format=torch.channels_last)

    batch_size = tcfg["batch_size"]
    steps_per_epoch = train_data.n_images // batch_size
    if tcfg["epochs"] > 0 and steps_per_epoch == 0:
        raise ValueError(
            f"train.batch_size = {batch_size} is larger than the {train_data.n_images} training "
            "images; lower the batch size"
        )
    total_steps = steps_per_epoch * tcfg["epochs"]
    optimizer = torch.optim.AdamW(param_groups(model, tcfg["weight_decay"]), lr=tcfg["lr"])
    scheduler = warmup_cosine(optimizer, total_steps, int(tcfg["warmup_fraction"] * total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    config_hash = short_hash(variant)
    history: list[dict] = []
    best = {"val_loss": math.inf, "epoch": 0, "state": _state_dict_cpu(model)}
    start_epoch = 0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("config_hash") == config_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            history = state["history"]
            best = {"val_loss": state["best_val_loss"], "epoch": state["best_epoch"],
                    "state": state["best_model"]}
            start_epoch = state["epoch"]
            log.info("resuming %s from %s at epoch %d of %d", variant["name"], state_path,
                     start_epoch, tcfg["epochs"])
        else:
            log.warning("ignoring %s: it was written for a different configuration", state_path)

    train_seconds, train_images = 0.0, 0
    for epoch in range(start_epoch, tcfg["epochs"]):
        model.train()
        t0 = time.perf_counter()
        losses, skipped = [], 0
        batches = plan_epoch(train_data, batch_size, tcfg["sampler"], tcfg["seed"], epoch)
        bar = progress(batches, desc=f"{variant['name']} epoch {epoch + 1}/{tcfg['epochs']}",
                   disable=not show_progress, unit="batch")
        for rows in bar:
            images, text = train_data.fetch(rows)
            loss = _loss(model, images, text, device, amp_dtype)
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1
                log.warning("epoch %d: non-finite loss %s, step skipped", epoch + 1, loss.item())
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                      tcfg["grad_clip"] or math.inf)
                if not torch.isfinite(norm):
                    skipped += 1
                    log.warning("epoch %d: non-finite gradient norm, step skipped", epoch + 1)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.update()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                    losses.append(loss.item())
                model.clamp_()
            scheduler.step()
            if skipped > tcfg["max_nonfinite_steps"]:
                raise DivergenceError(
                    f"{variant['name']}: training diverged in epoch {epoch + 1} ({skipped} "
                    "steps with NaN/Inf loss or gradients). Lower train.lr, keep grad_clip on, "
                    "or use precision: bf16/fp32 instead of fp16; no checkpoint was written "
                    "from the diverged state"
                )
            bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "nan")
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        train_images += len(batches) * batch_size
        val_loss = validation_loss(model, val_data, batch_size, device, amp_dtype)
        row = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / len(losses) if losses else math.nan,
            "val_loss": val_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "temperature": float(1.0 / model.scale()),
            "images_per_s": len(batches) * batch_size / seconds,
            "skipped_steps": skipped,
            "seconds": seconds,
        }
        history.append(row)
        log.info("epoch %d: train %.4f val %.4f T %.4f %.0f img/s", row["epoch"],
                 row["train_loss"], val_loss, row["temperature"], row["images_per_s"])
        current = _state_dict_cpu(model)
        if not _all_finite(current):
            raise DivergenceError(f"{variant['name']}: weights became NaN/Inf in epoch "
                                  f"{epoch + 1}; lower train.lr")
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch + 1, "state": current}
        last_epoch = epoch + 1 == tcfg["epochs"]
        if last_epoch or (epoch + 1) % tcfg["checkpoint_every_epochs"] == 0:
            _save_state(state_path, model, optimizer, scheduler, scaler, epoch + 1, history,
                        best, config_hash)

    _write_outputs(variant, model, best, history, out_dir, device, train_seconds, train_images,
                   train_data, val_data)
    return {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"]}


def _save_state(path, model, optimizer, scheduler, scaler, epoch, history, best, config_hash):
    state = {
        "model": _state_dict_cpu(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "history": history,
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "best_model": best["state"],
        "config_hash": config_hash,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _write_outputs(variant, model, best, history, out_dir, device, seconds, images,
                   train_data, val_data) -> None:
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(best["state"], str(tmp), metadata={"variant": variant["name"],
                                                      "config_hash": short_hash(variant)})
    hist = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_path(out_dir / "history.csv") as tmp:
        hist.to_csv(tmp, index=False)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    write_json(out_dir / "train_report.json", {
        "variant": variant["name"],
        "config": variant,
        "device": device_name(device),
        "torch": torch.__version__,
        "train_images": train_data.n_images,
        "train_captions": len(train_data.captions),
        "val_images": val_data.n_images,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_loss": None if math.isinf(best["val_loss"]) else best["val_loss"],
        "wall_seconds": seconds,
        "images_per_s": images / seconds if seconds else None,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
    })
    plot_loss_curves(hist, out_dir / "loss_curves.png", title=variant["name"])


def load_variant_model(variant: dict, weights: Path, embed_dim: int,
                       device: torch.device) -> ClipHead:
    from safetensors.torch import load_file

    # Evaluating must never download backbone weights: they come from the checkpoint.
    arch = copy.deepcopy(variant)
    arch["model"]["weights"] = None
    model = build_model(arch, embed_dim)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()
