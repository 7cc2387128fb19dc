"""Train one variant and keep its best epoch.

The loss is ``train.loss`` (InfoNCE, triplet or InfoNCE with mined hard negatives,
cliptune.training.losses); the best epoch is chosen by ``train.monitor``
(validation loss or validation R@1), which also drives early stopping. The loop
is split the way open_clip's trainer is: a :class:`TrainState`
(cliptune.training.checkpoint) and a :class:`Trainer` whose ``resume``,
``run_epoch``, ``validate``, ``end_epoch`` and ``finish`` each do one thing. It is one
module (a little over 350 lines) because those methods share the Trainer's state; every
piece that stands alone lives in checkpoint, build, outputs, validation or step.

Resumable: the state is written atomically at the end of every
``checkpoint_every_epochs`` epochs and, mid-epoch, on SIGTERM/SIGUSR1 or every
``checkpoint_every_steps``/``_minutes``, so a killed job loses little and the
rerun continues from it. A diverged epoch (NaN/Inf) is never checkpointed: it is
restarted from its first state with a lower learning rate.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from cliptune.data.loading.batch_loader import BatchLoader, loader_settings
from cliptune.data.loading.pairs import PairData, plan_epoch
from cliptune.runtime import (
    autocast_dtype,
    device_name,
    pick_device,
    progress,
    seed_everything,
)
from cliptune.training.build import build_state
from cliptune.training.checkpoint import (
    Best,
    CheckpointTimer,
    EpochRun,
    PreemptedError,
    SignalGuard,
    TrainState,
    all_finite,
    drop_epochs_after,
    keep_epoch,
    keeps_epoch,
    load_state,
    restart_from_epoch,
    resume_hash,
    save_state,
    state_dict_cpu,
)
from cliptune.training.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    data_parallel,
    gather_batch,
    shard_micro,
)
from cliptune.training.hard_negatives import build_index
from cliptune.training.losses import LOSS_PARTS
from cliptune.training.outputs import write_train_outputs
from cliptune.training.step import (
    StepContext,
    TrainForward,
    accumulated_backward,
    apply_gradients,
    prepare,
    unused_temperature,
)
from cliptune.training.train_log import TrainLogger
from cliptune.training.validation import validate

log = logging.getLogger(__name__)

# train.monitor -> (history column, +1 when higher is better)
MONITORS = {"val_loss": ("val_loss", -1.0), "val_recall": ("val_recall", 1.0)}


class DivergenceError(RuntimeError):
    pass


class Trainer:
    """Runs the epochs of one variant on one rank (every rank of a torchrun job)."""

    def __init__(self, variant: dict, train_data: PairData, val_data: PairData,
                 state_path: Path, dist_ctx: DistContext, show_progress: bool,
                 log_dir: Path | None):
        self.variant, self.tcfg = variant, variant["train"]
        self.train_data, self.val_data = train_data, val_data
        self.state_path, self.dist = Path(state_path), dist_ctx
        self.show_progress, self.log_dir = show_progress, log_dir
        self.ts = build_state(variant, train_data, val_data, dist_ctx)
        if self.tcfg["caption_augment"]["variations"] and self.ts.model.text_from_cache:
            raise ValueError(
                f"{variant['name']}: train.caption_augment.variations is set but this "
                "variant's captions come from the frozen text cache, which never sees the "
                "words; set it to 0, or train the text tower (model.clip.lock_text: false or "
                "LoRA on text)")
        self.config_hash = resume_hash(variant)
        model = self.ts.model  # unwrapped: checkpoints and evaluation use its state_dict
        self.ctx = StepContext(model, self.tcfg, dist_ctx.device,
                               autocast_dtype(self.tcfg["precision"], dist_ctx.device),
                               gather=gather_batch if dist_ctx.distributed else None,
                               forward=data_parallel(TrainForward(model), dist_ctx,
                                                     unused_temperature(model, self.tcfg)))
        self.partial: dict | None = None  # mid-epoch state to resume from
        self.start_epoch = 0
        self.train_seconds, self.train_images = 0.0, 0
        self.negatives = None  # hard-negative index (train.loss: hard_negative)
        self.timer = CheckpointTimer(self.tcfg["checkpoint_every_steps"],
                                     self.tcfg["checkpoint_every_minutes"])
        self.guard = SignalGuard()

    @property
    def micro_batch(self) -> int:
        return self.tcfg["batch_size"]

    @property
    def step_batch(self) -> int:
        return self.tcfg["batch_size"] * self.tcfg["accum_steps"]

    def resume(self) -> None:
        """Continue from the state file when it was written for this configuration, else
        restart from the kept epoch ``train.resume_from`` names."""
        source = None
        if self.state_path.exists():
            restored, self.partial = load_state(self.state_path, self.ts, self.config_hash)
            source = self.state_path if restored else None
            if not restored:
                log.warning("ignoring %s: it was written for a different configuration (or "
                            "optimiser layout)", self.state_path)
        if source is None and self.tcfg["resume_from"] is not None:
            source = restart_from_epoch(self.state_path, self.ts, self.tcfg["resume_from"],
                                        self.variant["name"])
        if self.dist.is_main:  # kept epochs past the start belong to the run this replaces
            drop_epochs_after(self.state_path, self.ts.epoch)
        if source is None:
            return
        self.start_epoch = self.ts.epoch
        log.info("resuming %s from %s at epoch %d step %d (%d of %d epochs complete)",
                 self.variant["name"], source, self.ts.epoch + 1,
                 self.partial["step"] if self.partial else 0, self.ts.epoch,
                 self.tcfg["epochs"])

    def fit(self) -> None:
        """All remaining epochs; a diverged one restarts from its first state."""
        ts = self._log_plan()
        self.logger = TrainLogger(self.log_dir, resume_step=ts.step if self.start_epoch else None,
                                  tensorboard=self.tcfg["tensorboard"],
                                  every=self.tcfg["log_every_steps"])
        try:
            with self.guard:
                while ts.epoch < self.tcfg["epochs"] and not ts.stopped:
                    good = ts.snapshot()
                    run = self.run_epoch()
                    if run.diverged is not None:
                        self._recover(run, good)
                        continue
                    self.end_epoch(run, self.validate() if self._validating() else None)
        finally:
            self.logger.close()
        barrier(self.dist)

    def _log_plan(self) -> TrainState:
        """An opening line, so a log is never empty until the first epoch ends."""
        tcfg, dev = self.tcfg, self.dist.device
        steps = self.train_data.n_images // self.step_batch
        log.info("training %s on %s (%s): %d epochs x %d steps = %d optimizer steps; batch "
                 "plan: %d images/step (%d micro-batches of %d, %s sampler) over %d "
                 "process(es), %d train images", self.variant["name"], dev, device_name(dev),
                 tcfg["epochs"], steps, steps * tcfg["epochs"], self.step_batch,
                 tcfg["accum_steps"], tcfg["batch_size"], tcfg["sampler"],
                 self.dist.world_size, self.train_data.n_images)
        return self.ts

    def _start_epoch(self) -> EpochRun:
        """The epoch's batch plan and generators, or those saved mid-epoch."""
        tcfg, epoch = self.tcfg, self.ts.epoch
        if tcfg["loss"] == "hard_negative" and (
                self.negatives is None
                or (epoch - self.start_epoch) % tcfg["hard_negatives"]["refresh_epochs"] == 0):
            # Random negatives depend on (seed, epoch) only: a resumed run redraws the same.
            hn = tcfg["hard_negatives"]
            self.negatives = build_index(
                self.ts.model, self.train_data, hn["k"], self.dist.device, self.ctx.amp_dtype,
                tcfg["batch_size"], hn["strategy"],
                torch.Generator().manual_seed(tcfg["seed"] * 7919 + epoch))
        # Augmentation draws depend on (seed, epoch) only: a resumed epoch repeats them.
        self.ctx.image_gen = torch.Generator().manual_seed(tcfg["seed"] * 100_003 + epoch)
        self.ctx.caption_rng = np.random.default_rng([tcfg["seed"], epoch, 7])
        run = EpochRun(epoch, plan_epoch(self.train_data, self.step_batch, tcfg["sampler"],
                                         tcfg["seed"], epoch))
        if self.partial is not None:
            # Mid-epoch resume: the saved plan (data order) and generators, minus steps done.
            p, self.partial = self.partial, None
            run.batches, run.first = list(p["plan"].numpy()), p["step"]
            run.losses, run.norms, run.skipped = list(p["losses"]), list(p["norms"]), p["skipped"]
            run.accs, run.parts = list(p["accs"]), list(p["parts"])
            self.ctx.image_gen.set_state(p["image_gen"])
            self.ctx.caption_rng.bit_generator.state = p["caption_rng"]
            run.prior_seconds = p["seconds"]
        return run

    def run_epoch(self) -> EpochRun:
        """Train one epoch; stops early (``run.diverged``) after too many NaN/Inf steps."""
        run = self._start_epoch()
        data, mb, dist = self.train_data, self.micro_batch, self.dist
        self.ts.model.train()
        # Next batches are read from the cache in a background thread while this one trains;
        # each rank reads only its slice of every global micro-batch.
        loader = BatchLoader.from_settings(
            lambda rows: (rows, *data.fetch(shard_micro(rows, mb, dist))),
            run.batches[run.first:], loader_settings(torch.get_num_threads(), dist.device))
        bar = progress(loader, desc=f"{self.variant['name']} epoch {run.epoch + 1}/"
                       f"{self.tcfg['epochs']}", initial=run.first, total=len(run.batches),
                       disable=not self.show_progress, unit="batch")
        for step, (rows, images, text) in enumerate(bar, start=run.first):
            self._train_step(run, rows, images, text)
            if run.skipped > self.tcfg["max_nonfinite_steps"]:
                run.diverged = f"{run.skipped} steps with NaN/Inf {run.causes.most_common(1)[0][0]}"
                break
            # Shown at the bar's next timed redraw: refreshing here would write a line per
            # step into a job's log file.
            bar.set_postfix(loss=f"{run.losses[-1]:.3f}" if run.losses else "nan",
                            refresh=False)
            self._maybe_checkpoint(run, step)
        if hasattr(bar, "close"):
            bar.close()
        if run.diverged is None:
            run.weights = state_dict_cpu(self.ts.model)
            if not all_finite(run.weights):
                run.diverged = "NaN/Inf weights"
        # history.csv's seconds and images_per_s are the training throughput: validation,
        # which end_epoch receives already done, is not part of them.
        run.steps_seconds = run.seconds()
        return run

    def _train_step(self, run: EpochRun, rows, images, text) -> None:
        t_step, ts, local_batch = time.perf_counter(), self.ts, self.micro_batch // self.dist.world_size
        local = shard_micro(rows, self.micro_batch, self.dist)
        micro = [prepare(self.ctx, self.train_data, local[i:i + local_batch],
                         images[i:i + local_batch], text[i:i + local_batch], train=True)
                 for i in range(0, len(local), local_batch)]
        mined = self.negatives.lookup(rows) if self.negatives is not None else None
        ts.optimizer.zero_grad(set_to_none=True)
        loss, acc, parts = accumulated_backward(self.ctx, micro, ts.scaler, mined)
        parts = dict(zip(LOSS_PARTS, parts.tolist(), strict=True))
        acc = acc.tolist()
        lr_used = ts.optimizer.param_groups[0]["lr"]  # before the scheduler moves it
        norm, cause = apply_gradients(ts.model, ts.optimizer, ts.scaler, loss,
                                      self.tcfg["grad_clip"])
        loss_value = loss.item()
        if cause is None:
            run.losses.append(loss_value)
            run.norms.append(norm)
            run.accs.append(acc)
            run.parts.append(list(parts.values()))
        else:
            run.skipped += 1
            run.causes[cause] += 1
            log.warning("epoch %d step %d: non-finite %s (%s), step skipped", run.epoch + 1,
                        ts.step, cause, loss_value)
        ts.scheduler.step()
        ts.step += 1
        row = {"step": ts.step, "epoch": run.epoch + 1, "loss": loss_value, **parts,
               "lr": lr_used,
               "temperature": float(1.0 / ts.model.scale().detach()),
               "acc_i2t": 100.0 * acc[0], "acc_t2i": 100.0 * acc[1],
               "grad_norm": math.nan if norm is None else norm,
               "images_per_s": len(rows) / max(1e-9, time.perf_counter() - t_step),
               "skipped": int(cause is not None)}
        ts.step_log.append(row)
        self.logger.step(row)

    def _maybe_checkpoint(self, run: EpochRun, step: int) -> None:
        """Mid-epoch state on a signal or when the timer is due; on a signal, then stop."""
        # One tiny collective a step so that every rank stops/checkpoints together.
        stop, due = all_reduce_sum([float(self.guard.requested), float(self.timer.step())],
                                   self.dist)
        if not (stop or due):
            return
        if self.dist.is_main:
            save_state(self.state_path, self.ts, self.config_hash, partial={
                "step": step + 1, "plan": torch.from_numpy(np.stack(run.batches)),
                "losses": run.losses, "norms": run.norms, "skipped": run.skipped,
                "accs": run.accs, "parts": run.parts,
                "image_gen": self.ctx.image_gen.get_state(),
                "caption_rng": self.ctx.caption_rng.bit_generator.state,
                "seconds": run.seconds()})
        self.timer.reset()
        log.info("checkpoint at epoch %d step %d/%d: %s", run.epoch + 1, step + 1,
                 len(run.batches), self.state_path)
        if stop:
            barrier(self.dist)  # no rank exits before rank 0 has written the state
            raise PreemptedError(
                f"{self.variant['name']}: stopped by signal at epoch {run.epoch + 1} step "
                f"{step + 1}; state saved to {self.state_path}, rerun to resume")

    def _recover(self, run: EpochRun, good: dict) -> None:
        """Never checkpoint a diverged state: back to the epoch's start, lower the LR."""
        self.ts.restarts += 1
        div = self.tcfg["divergence"]
        if self.ts.restarts > div["max_restarts"]:
            raise DivergenceError(
                f"{self.variant['name']}: training diverged in epoch {run.epoch + 1} "
                f"({run.diverged}; gave up after {div['max_restarts']} restarts with the "
                f"learning rate scaled by {div['lr_factor']} each). Lower train.lr, keep "
                "grad_clip on, or use precision: bf16/fp32 instead of fp16; no checkpoint "
                "was written from the diverged state")
        log.warning("epoch %d diverged (%s): restoring the epoch's start state with "
                    "learning rate x%s (restart %d of %d)", run.epoch + 1, run.diverged,
                    div["lr_factor"], self.ts.restarts, div["max_restarts"])
        self.ts.restore(good, div["lr_factor"])

    def _validating(self) -> bool:
        """train.eval_every: validate every N epochs and always after the last one."""
        done = self.ts.epoch + 1
        return done % self.tcfg["eval_every"] == 0 or done == self.tcfg["epochs"]

    def validate(self) -> dict[str, float]:
        """Validation loss, in-batch accuracy both ways and mean R@1 of the current model."""
        return validate(self.ctx, self.val_data, self.step_batch, self.tcfg["val_max_images"])

    def end_epoch(self, run: EpochRun, val: dict[str, float] | None) -> None:
        """Record the epoch, update the best epoch and early stopping, checkpoint.
        ``val`` is None for an epoch train.eval_every skips: it selects nothing and does
        not count towards patience."""
        ts, tcfg = self.ts, self.tcfg
        validated = val is not None
        val = val if validated else dict.fromkeys(
            ("val_loss", "val_acc_i2t", "val_acc_t2i", "val_recall", "val_loss_infonce",
             "val_loss_hinge"), math.nan)
        seconds = run.steps_seconds
        self.train_seconds += time.perf_counter() - run.t0
        self.train_images += (len(run.batches) - run.first) * self.step_batch
        row = self._history_row(run, seconds, val)
        val_loss = val["val_loss"]
        ts.history.append(row)
        self.logger.epoch(row, ts.step)
        log.info("epoch %d: loss train %.4f val %.4f, in-batch acc i2t/t2i train %.1f/%.1f "
                 "val %.1f/%.1f, R@1 %.1f, T %.4f, %.0f img/s", row["epoch"], row["train_loss"],
                 val_loss, row["train_acc_i2t"], row["train_acc_t2i"], val["val_acc_i2t"],
                 val["val_acc_t2i"], val["val_recall"], row["temperature"], row["images_per_s"])
        column, sign = MONITORS[tcfg["monitor"]]
        score = sign * row[column]
        if validated and score > ts.best.score + tcfg["min_delta"]:
            ts.best, ts.bad_epochs = Best(val_loss, run.epoch + 1, run.weights, score), 0
        elif validated:
            ts.bad_epochs += 1
        if validated and tcfg["patience"] and ts.bad_epochs >= tcfg["patience"]:
            ts.stopped = True
            log.info("early stopping after epoch %d: %s did not improve for %d validations "
                     "(best epoch %d)", run.epoch + 1, tcfg["monitor"], ts.bad_epochs,
                     ts.best.epoch)
        ts.epoch += 1
        last = ts.epoch == tcfg["epochs"] or ts.stopped
        keep, every = tcfg["keep_epoch_checkpoints"], tcfg["keep_epoch_checkpoints_every"]
        kept = keeps_epoch(ts.epoch, keep, every)
        if (last or kept or ts.epoch % tcfg["checkpoint_every_epochs"] == 0) and self.dist.is_main:
            save_state(self.state_path, ts, self.config_hash)
            if kept:  # the state just written, kept as this epoch's checkpoint
                keep_epoch(self.state_path, ts.epoch, keep, every)
        self.timer.reset()

    def _history_row(self, run: EpochRun, seconds: float, val: dict[str, float]) -> dict:
        ts = self.ts
        train_acc = (100.0 * np.mean(run.accs, axis=0)).tolist() if run.accs else [math.nan] * 2
        train_parts = (np.mean(run.parts, axis=0).tolist() if run.parts
                       else [math.nan] * len(LOSS_PARTS))
        return {
            "epoch": run.epoch + 1,
            "train_loss": sum(run.losses) / len(run.losses) if run.losses else math.nan,
            "val_loss": val["val_loss"],
            "train_acc_i2t": train_acc[0],
            "train_acc_t2i": train_acc[1],
            "val_acc_i2t": val["val_acc_i2t"],
            "val_acc_t2i": val["val_acc_t2i"],
            "lr": ts.optimizer.param_groups[0]["lr"],
            "temperature": float(1.0 / ts.model.scale().detach()),
            "images_per_s": len(run.batches) * self.step_batch / seconds,
            "skipped_steps": run.skipped,
            "seconds": seconds,
            "val_recall": val["val_recall"],
            "grad_norm": sum(run.norms) / len(run.norms) if run.norms else math.nan,
            "grad_norm_min": min(run.norms) if run.norms else math.nan,
            "grad_norm_max": max(run.norms) if run.norms else math.nan,
            "restarts": ts.restarts,
            **{f"train_{p}": v for p, v in zip(LOSS_PARTS, train_parts, strict=True)},
            "val_loss_infonce": val["val_loss_infonce"],
            "val_loss_hinge": val["val_loss_hinge"],
        }

    def finish(self, out_dir: Path, write_outputs: bool) -> dict:
        """Write model.safetensors (the best epoch), history.csv, train_report.json."""
        best = self.ts.best
        if write_outputs:
            write_train_outputs(self.variant, self.ts, Path(out_dir), self.dist.device,
                           self.train_seconds, self.train_images, self.train_data,
                           self.val_data)
        return {"best_epoch": best.epoch, "best_val_loss": best.val_loss,
                "best_score": best.score, "history": self.ts.history}


def train_variant(variant: dict, train_data: PairData, val_data: PairData, out_dir: Path,
                  state_path: Path, show_progress: bool = True, log_dir: Path | None = None,
                  write_outputs: bool = True, dist_ctx: DistContext | None = None) -> dict:
    """Train, then write model.safetensors (the best epoch by ``train.monitor``),
    history.csv and train_report.json into ``out_dir``; returns the best epoch, its
    validation loss and score, and the history.

    ``dist_ctx`` of several ranks (cliptune.training.distributed, under torchrun): each rank
    takes its slice of every global micro-batch, the loss sees the global batch,
    only rank 0 writes. SIGTERM/SIGUSR1 save a mid-epoch state, then raise
    PreemptedError; a rerun resumes at that step (cliptune.training.checkpoint)."""
    seed_everything(variant["train"]["seed"])
    dist_ctx = dist_ctx or DistContext.single(pick_device(variant["train"]["device"]))
    if not dist_ctx.is_main:
        write_outputs, log_dir, show_progress = False, None, False
    trainer = Trainer(variant, train_data, val_data, state_path, dist_ctx, show_progress,
                      log_dir)
    trainer.resume()
    trainer.fit()
    return trainer.finish(out_dir, write_outputs)
