"""Train one variant: image tower against frozen, cached caption embeddings (InfoNCE).

Resumable: a full training state is written atomically each epoch to a path
that is not a Snakemake output, so a killed or failed job loses at most one
epoch and the rerun continues from it.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from cliptune.config import short_hash
from cliptune.data.batch_loader import BatchLoader, loader_settings
from cliptune.data.feature_cache import check_features_match
from cliptune.data.pairs import PairData, plan_epoch, validation_batches
from cliptune.io_utils import atomic_path, write_json
from cliptune.models.factory import build_model
from cliptune.models.image_tower import ClipHead
from cliptune.runtime import (
    autocast_dtype,
    device_name,
    pick_device,
    progress,
    seed_everything,
)
from cliptune.training.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    gather_batch,
    prepare_model,
    shard_micro,
    sync_gradients,
)
from cliptune.training.hard_negatives import build_index
from cliptune.training.losses import batch_loss
from cliptune.training.optim import build_optimizer, describe_param_groups, warmup_steps
from cliptune.training.preemption import CheckpointTimer, PreemptedError, SignalGuard
from cliptune.training.schedule import warmup_cosine
from cliptune.training.step import StepContext, accumulated_backward, embed, prepare
from cliptune.training.train_log import TrainLogger

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "temperature", "images_per_s",
                   "skipped_steps", "seconds", "val_recall", "grad_norm", "restarts"]
# train.monitor -> (history column, +1 when higher is better)
MONITORS = {"val_loss": ("val_loss", -1.0), "val_recall": ("val_recall", 1.0)}


class DivergenceError(RuntimeError):
    pass


@torch.no_grad()
def validate(ctx: StepContext, data: PairData, batch_size: int,
             max_images: int | None = None) -> tuple[float, float]:
    """Validation loss (the training loss without mined negatives) and recall: the mean
    of image->text and text->image R@1 over the first caption of each image."""
    ctx.model.eval()
    total, count, images, texts = 0.0, 0, [], []
    for rows in validation_batches(data, batch_size):
        if max_images and count >= max_images:
            break
        img, txt = embed(ctx, *prepare(ctx, data, rows, *data.fetch(rows), train=False))
        total += float(batch_loss(ctx.tcfg, img, txt, ctx.model.scale())) * len(rows)
        count += len(rows)
        images.append(img)
        texts.append(txt)
    img, txt = torch.cat(images), torch.cat(texts)
    hits = 0
    for start in range(0, len(img), 4096):  # blocked: 40k x 40k would not fit
        target = torch.arange(start, min(start + 4096, len(img)), device=img.device)
        hits += int((((img[start:start + 4096] @ txt.T).argmax(1)) == target).sum())
        hits += int((((txt[start:start + 4096] @ img.T).argmax(1)) == target).sum())
    return total / max(1, count), 100.0 * hits / (2 * len(img))


def validation_images(data: PairData, tcfg: dict) -> int:
    """Images :func:`validate` scores: whole batches until train.val_max_images is reached."""
    used, cap = 0, tcfg["val_max_images"]
    for rows in validation_batches(data, tcfg["batch_size"] * tcfg["accum_steps"]):
        if cap and used >= cap:
            break
        used += len(rows)
    return used


def _snapshot(model, optimizer, scheduler, scaler) -> dict:
    """The last good state (CPU copies) that divergence recovery restores."""
    return {"model": _state_dict_cpu(model), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}


def _restore(snapshot, model, optimizer, scheduler, scaler, lr_factor: float) -> None:
    model.load_state_dict(snapshot["model"])
    optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
    scheduler.load_state_dict(snapshot["scheduler"])
    scaler.load_state_dict(snapshot["scaler"])
    scheduler.base_lrs = [lr * lr_factor for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= lr_factor


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"numpy_rng": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_rng_pos": int(np_state[2]), "python_rng": repr(random.getstate())}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import ast

    if "numpy_rng" in state:
        np.random.set_state(("MT19937", state["numpy_rng"].numpy().astype(np.uint32),
                             state["numpy_rng_pos"], 0, 0.0))
    if "python_rng" in state:
        random.setstate(ast.literal_eval(state["python_rng"]))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _maybe_compile(model, enabled: bool, device: torch.device) -> None:
    """torch.compile the towers in place (state_dict keys unchanged); CUDA only, because
    on the CPU it needs a C++ toolchain and buys little for these models."""
    if not enabled:
        return
    if device.type != "cuda":
        log.info("train.compile: skipped on %s (CUDA only)", device)
        return
    towers = ([model.image] if isinstance(model, ClipHead)
              else [model.clip.vision_model, model.clip.text_model])
    for tower in towers:
        tower.compile()


def _state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def train_variant(variant: dict, train_data: PairData, val_data: PairData, out_dir: Path,
                  state_path: Path, show_progress: bool = True, log_dir: Path | None = None,
                  write_outputs: bool = True, dist_ctx: DistContext | None = None) -> dict:
    """Train, then write model.safetensors (best by validation loss), history.csv,
    train_report.json into ``out_dir``.

    ``dist_ctx`` of several ranks (cliptune.training.distributed, under torchrun): each rank
    takes its slice of every global micro-batch, the loss sees the global batch,
    only rank 0 writes. SIGTERM/SIGUSR1 save a mid-epoch state, then raise
    PreemptedError; a rerun resumes at that step (cliptune.training.preemption)."""
    out_dir = Path(out_dir)
    tcfg = variant["train"]
    seed_everything(tcfg["seed"])
    dist_ctx = dist_ctx or DistContext.single(pick_device(tcfg["device"]))
    device = dist_ctx.device
    amp_dtype = autocast_dtype(tcfg["precision"], device)
    embed_dim = train_data.text.shape[1]
    model = build_model(variant, embed_dim).to(device)
    if isinstance(model, ClipHead) and tcfg["channels_last"]:
        model.image.trunk.to(memory_format=torch.channels_last)
    check_features_match(model, train_data, val_data)
    prepare_model(model, dist_ctx)
    _maybe_compile(model, tcfg["compile"], device)
    if tcfg["batch_size"] % dist_ctx.world_size:
        raise ValueError(f"train.batch_size = {tcfg['batch_size']} is the global (micro-)batch "
                         f"and must be a multiple of the {dist_ctx.world_size} processes "
                         "(train.devices x train.nodes)")
    if not dist_ctx.is_main:
        write_outputs, log_dir, show_progress = False, None, False

    # batch_size is the micro-batch; accum_steps micro-batches make one optimiser step
    # whose negatives span all of them.
    batch_size, accum = tcfg["batch_size"], tcfg["accum_steps"]
    steps_per_epoch = train_data.n_images // (batch_size * accum)
    if tcfg["epochs"] > 0 and steps_per_epoch == 0:
        raise ValueError(
            f"train.batch_size x accum_steps = {batch_size * accum} is larger than the "
            f"{train_data.n_images} training images; lower the batch size or accum_steps"
        )
    total_steps = steps_per_epoch * tcfg["epochs"]
    optimizer = build_optimizer(model, tcfg)
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps(tcfg, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    config_hash = resume_hash(variant)
    history: list[dict] = []
    best = {"val_loss": math.inf, "epoch": 0, "state": _state_dict_cpu(model),
            "score": -math.inf}
    start_epoch, partial = 0, None
    # Training progress beyond the model: divergence restarts, early stopping.
    prog = {"step": 0, "restarts": 0, "bad_epochs": 0, "stopped": False}
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
                    "state": state["best_model"],
                    "score": state.get("best_score", -state["best_val_loss"])}
            start_epoch = state["epoch"]
            prog.update(state.get("progress", {}))
            _set_rng_state(state)
            partial = state.get("partial")
            log.info("resuming %s from %s at epoch %d step %d (%d of %d epochs complete)",
                     variant["name"], state_path, start_epoch + 1,
                     partial["step"] if partial else 0, start_epoch, tcfg["epochs"])
        else:
            log.warning("ignoring %s: it was written for a different configuration", state_path)

    train_seconds, train_images = 0.0, 0
    logger = TrainLogger(log_dir, resume_step=prog["step"] if start_epoch else None,
                         resume_epoch=start_epoch, tensorboard=tcfg["tensorboard"],
                         every=tcfg["log_every_steps"])
    ctx = StepContext(model, tcfg, device, amp_dtype,
                      gather=gather_batch if dist_ctx.distributed else None)
    column, sign = MONITORS[tcfg["monitor"]]
    timer = CheckpointTimer(tcfg.get("checkpoint_every_steps", 0),
                            tcfg.get("checkpoint_every_minutes", 0))
    guard = SignalGuard().__enter__()
    if tcfg["caption_augment"]["variations"] and model.text_from_cache:
        raise ValueError(
            f"{variant['name']}: train.caption_augment.variations is set but this variant's "
            "captions come from the frozen text cache, which never sees the words; set it to "
            "0, or train the text tower (model.clip.lock_text: false or LoRA on text)")
    hn = tcfg["hard_negatives"]
    negatives = None
    epoch = start_epoch
    # An opening line, so a log is never empty until the first epoch ends.
    log.info("training %s on %s (%s): %d epochs x %d steps = %d optimizer steps; batch plan: "
             "%d images/step (%d micro-batches of %d, %s sampler) over %d process(es), "
             "%d train images", variant["name"], device, device_name(device), tcfg["epochs"],
             steps_per_epoch, total_steps, batch_size * accum, accum, batch_size,
             tcfg["sampler"], dist_ctx.world_size, train_data.n_images)
    while epoch < tcfg["epochs"] and not prog["stopped"]:
        good = _snapshot(model, optimizer, scheduler, scaler)
        if tcfg["loss"] == "hard_negative" and (
                negatives is None or (epoch - start_epoch) % hn["refresh_epochs"] == 0):
            # Random negatives depend on (seed, epoch) only: a resumed run redraws the same.
            negatives = build_index(model, train_data, hn["k"], device, amp_dtype,
                                    tcfg["batch_size"], hn["strategy"],
                                    torch.Generator().manual_seed(tcfg["seed"] * 7919 + epoch))
        model.train()
        t0 = time.perf_counter()
        losses, norms, skipped, causes = [], [], 0, Counter()
        # Augmentation draws depend on (seed, epoch) only: a resumed epoch repeats them.
        ctx.image_gen = torch.Generator().manual_seed(tcfg["seed"] * 100_003 + epoch)
        ctx.caption_rng = np.random.default_rng([tcfg["seed"], epoch, 7])
        batches = plan_epoch(train_data, batch_size * accum, tcfg["sampler"], tcfg["seed"],
                             epoch)
        first, prior_seconds = 0, 0.0
        if partial is not None:
            # Mid-epoch resume: the saved plan (data order) and generators, minus the steps done.
            batches, first = list(partial["plan"].numpy()), partial["step"]
            losses, norms, skipped = list(partial["losses"]), list(partial["norms"]), partial["skipped"]
            ctx.image_gen.set_state(partial["image_gen"])
            ctx.caption_rng.bit_generator.state = partial["caption_rng"]
            prior_seconds, partial = partial["seconds"], None
        # Each rank reads only its slice of every global micro-batch.
        local_batch = batch_size // dist_ctx.world_size
        # Next batches are read from the cache in a background thread while this one trains.
        loader = BatchLoader.from_settings(
            lambda rows: (rows, *train_data.fetch(shard_micro(rows, batch_size, dist_ctx))),
            batches[first:], loader_settings(torch.get_num_threads(), device))
        bar = progress(loader, desc=f"{variant['name']} epoch {epoch + 1}/{tcfg['epochs']}",
                       initial=first, total=len(batches), disable=not show_progress, unit="batch")
        diverged = None
        for step, (rows, images, text) in enumerate(bar, start=first):
            t_step = time.perf_counter()
            local = shard_micro(rows, batch_size, dist_ctx)
            micro = [prepare(ctx, train_data, local[i:i + local_batch],
                             images[i:i + local_batch], text[i:i + local_batch], train=True)
                     for i in range(0, len(local), local_batch)]
            mined = negatives.lookup(rows) if negatives is not None else None
            optimizer.zero_grad(set_to_none=True)
            loss = accumulated_backward(ctx, micro, scaler, mined)
            sync_gradients(model, dist_ctx)
            norm = None
            if not torch.isfinite(loss):
                skipped += 1
                causes["loss"] += 1
                optimizer.zero_grad(set_to_none=True)
                log.warning("epoch %d step %d: non-finite loss %s, step skipped", epoch + 1,
                            prog["step"], loss.item())
            else:
                scaler.unscale_(optimizer)
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                            tcfg["grad_clip"] or math.inf))
                if not math.isfinite(norm):
                    skipped += 1
                    causes["gradients"] += 1
                    log.warning("epoch %d step %d: non-finite gradient norm, step skipped",
                                epoch + 1, prog["step"])
                    optimizer.zero_grad(set_to_none=True)
                    scaler.update()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                    losses.append(loss.item())
                    norms.append(norm)
                model.clamp_()
            scheduler.step()
            prog["step"] += 1
            logger.step({"step": prog["step"], "epoch": epoch + 1, "loss": loss.item(),
                         "lr": optimizer.param_groups[0]["lr"],
                         "temperature": float(1.0 / model.scale().detach()), "grad_norm": norm,
                         "images_per_s": len(rows) / max(1e-9, time.perf_counter() - t_step),
                         "skipped": int(norm is None or not math.isfinite(norm))})
            if skipped > tcfg["max_nonfinite_steps"]:
                cause = causes.most_common(1)[0][0]
                diverged = f"{skipped} steps with NaN/Inf {cause}"
                break
            bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "nan")
            # One tiny collective a step so that every rank stops/checkpoints together.
            stop, due = all_reduce_sum([float(guard.requested), float(timer.step())], dist_ctx)
            if stop or due:
                if dist_ctx.is_main:
                    _save_state(state_path, model, optimizer, scheduler, scaler, epoch, history,
                                best, config_hash, prog, partial={
                                    "step": step + 1, "plan": torch.from_numpy(np.stack(batches)),
                                    "losses": losses, "norms": norms, "skipped": skipped,
                                    "image_gen": ctx.image_gen.get_state(),
                                    "caption_rng": ctx.caption_rng.bit_generator.state,
                                    "seconds": prior_seconds + time.perf_counter() - t0})
                timer.reset()
                log.info("checkpoint at epoch %d step %d/%d: %s", epoch + 1, step + 1,
                         len(batches), state_path)
                if stop:
                    barrier(dist_ctx)  # no rank exits before rank 0 has written the state
                    guard.__exit__()
                    raise PreemptedError(
                        f"{variant['name']}: stopped by signal at epoch {epoch + 1} step "
                        f"{step + 1}; state saved to {state_path}, rerun to resume")
        if hasattr(bar, "close"):
            bar.close()
        current = _state_dict_cpu(model) if diverged is None else None
        if current is not None and not _all_finite(current):
            diverged = "NaN/Inf weights"
        if diverged is not None:
            # Never checkpoint a diverged state: go back to the epoch's start, lower the LR.
            prog["restarts"] += 1
            div = tcfg["divergence"]
            if prog["restarts"] > div["max_restarts"]:
                raise DivergenceError(
                    f"{variant['name']}: training diverged in epoch {epoch + 1} ({diverged}; "
                    f"gave up after {div['max_restarts']} restarts with the learning rate "
                    f"scaled by {div['lr_factor']} each). Lower train.lr, keep grad_clip on, "
                    "or use precision: bf16/fp32 instead of fp16; no checkpoint was written "
                    "from the diverged state")
            log.warning("epoch %d diverged (%s): restoring the epoch's start state with "
                        "learning rate x%s (restart %d of %d)", epoch + 1, diverged,
                        tcfg["divergence"]["lr_factor"], prog["restarts"], div["max_restarts"])
            _restore(good, model, optimizer, scheduler, scaler, div["lr_factor"])
            continue
        seconds = prior_seconds + time.perf_counter() - t0
        train_seconds += time.perf_counter() - t0
        train_images += (len(batches) - first) * batch_size * accum
        # train.eval_every: validate every N epochs and always after the last one; the
        # epochs between select nothing and count nothing towards patience.
        validating = (epoch + 1) % tcfg["eval_every"] == 0 or epoch + 1 == tcfg["epochs"]
        val_loss, val_recall = (validate(ctx, val_data, batch_size * accum,
                                         tcfg["val_max_images"]) if validating
                                else (math.nan, math.nan))
        row = {
            "epoch": epoch + 1,
            "train_loss": sum(losses) / len(losses) if losses else math.nan,
            "val_loss": val_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "temperature": float(1.0 / model.scale().detach()),
            "images_per_s": len(batches) * batch_size * accum / seconds,
            "skipped_steps": skipped,
            "seconds": seconds,
            "val_recall": val_recall,
            "grad_norm": sum(norms) / len(norms) if norms else math.nan,
            "restarts": prog["restarts"],
        }
        history.append(row)
        logger.epoch(row, HISTORY_COLUMNS, prog["step"])
        log.info("epoch %d: train %.4f val %.4f R@1 %.1f T %.4f %.0f img/s", row["epoch"],
                 row["train_loss"], val_loss, val_recall, row["temperature"],
                 row["images_per_s"])
        score = sign * row[column]
        if validating and score > best["score"] + tcfg["min_delta"]:
            best = {"val_loss": val_loss, "epoch": epoch + 1, "state": current, "score": score}
            prog["bad_epochs"] = 0
        elif validating:
            prog["bad_epochs"] += 1
        if validating and tcfg["patience"] and prog["bad_epochs"] >= tcfg["patience"]:
            prog["stopped"] = True
            log.info("early stopping after epoch %d: %s did not improve for %d validations "
                     "(best epoch %d)", epoch + 1, tcfg["monitor"], prog["bad_epochs"],
                     best["epoch"])
        last_epoch = epoch + 1 == tcfg["epochs"] or prog["stopped"]
        if (last_epoch or (epoch + 1) % tcfg["checkpoint_every_epochs"] == 0) and dist_ctx.is_main:
            _save_state(state_path, model, optimizer, scheduler, scaler, epoch + 1, history,
                        best, config_hash, prog)
        timer.reset()
        epoch += 1
    guard.__exit__()
    logger.close()
    barrier(dist_ctx)

    if not write_outputs:
        return {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                "best_score": best["score"], "history": history}
    _write_outputs(variant, model, best, history, out_dir, device, train_seconds, train_images,
                   train_data, val_data, describe_param_groups(optimizer))
    return {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "best_score": best["score"], "history": history}


# Settings that change how training runs, not what it computes: a state written
# under other values still resumes.
RUNTIME_KEYS = ("devices", "nodes", "checkpoint_every_steps", "checkpoint_every_minutes",
                "checkpoint_every_epochs")


def resume_hash(variant: dict) -> str:
    v = copy.deepcopy(variant)
    for key in RUNTIME_KEYS:
        v["train"].pop(key, None)
    return short_hash(v)


def _save_state(path, model, optimizer, scheduler, scaler, epoch, history, best, config_hash,
                prog=None, partial=None):
    """``epoch`` epochs are complete; ``partial`` (step, batch plan, losses and
    generators so far) describes the epoch in progress for a mid-epoch state."""
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
        "best_score": best["score"],
        "config_hash": config_hash,
        "progress": dict(prog or {}),
        "partial": partial,
        **_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    # The last weights as a plain checkpoint next to the resume state (best is the output).
    with atomic_path(Path(path).with_name("last.safetensors")) as tmp:
        save_file(state["model"], str(tmp), metadata={"epoch": str(epoch)})


def _write_outputs(variant, model, best, history, out_dir, device, seconds, images,
                   train_data, val_data, param_groups) -> None:
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
        # What chose the saved epoch (train.monitor, early stopping): never the reported split.
        "selected_on": {"split": variant.get("select_split"),
                        "images": validation_images(val_data, variant["train"]),
                        "monitor": variant["train"]["monitor"]},
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_loss": None if math.isinf(best["val_loss"]) else best["val_loss"],
        "wall_seconds": seconds,
        "images_per_s": images / seconds if seconds else None,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "param_groups": param_groups,  # name, parameters, lr, weight_decay of each
    })
