"""The live view of a training run. The complete records are the run's outputs,
``steps.csv`` (one row per optimiser step, :data:`STEP_COLUMNS`) and ``history.csv``
(one row per epoch, :data:`HISTORY_COLUMNS`), written by cliptune.training.outputs
from the rows the trainer keeps in its resumable state. While the job runs, every
``train.log_every_steps`` steps a line goes to the job's log and, with
``train.tensorboard``, the same rows go to TensorBoard under
``logs/{dataset}/train/{variant}/tensorboard/``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from cliptune.training.losses import LOSS_PARTS

log = logging.getLogger(__name__)

# Per optimiser step: the loss and its parts (cliptune.training.losses.LOSS_PARTS: the
# InfoNCE and hinge terms, NaN where the loss has none, and the loss with in-batch
# negatives only), the learning rate the step used (before the scheduler moved it),
# in-batch accuracy (%) both ways, the pre-clipping gradient norm, 1 if skipped (NaN/Inf).
STEP_COLUMNS = ["step", "epoch", "loss", *LOSS_PARTS, "lr", "temperature", "acc_i2t",
                "acc_t2i", "grad_norm", "images_per_s", "skipped"]
# Per epoch; ``train_loss_in_batch`` has the form of ``val_loss`` (no mined negatives):
# the overfitting gap compares those two. ``seconds`` and ``images_per_s`` are the
# training steps' time and throughput, validation excluded.
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "train_acc_i2t", "train_acc_t2i",
                   "val_acc_i2t", "val_acc_t2i", "lr", "temperature", "images_per_s",
                   "skipped_steps", "seconds", "val_recall", "grad_norm", "grad_norm_min",
                   "grad_norm_max", "restarts", *(f"train_{p}" for p in LOSS_PARTS),
                   "val_loss_infonce", "val_loss_hinge"]


class TrainLogger:
    """Step and epoch rows to the job's log and TensorBoard. ``resume_step``: the step a
    resumed run continues after; TensorBoard hides the events of the redone steps."""

    def __init__(self, log_dir: Path | None, resume_step: int | None, tensorboard: bool,
                 every: int):
        self.every = every
        self.writer = None
        if log_dir is not None and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(log_dir) / "tensorboard"),
                                        purge_step=None if resume_step is None
                                        else resume_step + 1)

    def step(self, row: dict) -> None:
        if row["step"] % self.every:
            return
        log.info("step %d (epoch %d): loss %.4f, lr %.3g, T %.4f, grad norm %.3g, %.0f img/s",
                 row["step"], row["epoch"], row["loss"], row["lr"], row["temperature"],
                 row["grad_norm"], row["images_per_s"])
        if self.writer is not None:
            for key in STEP_COLUMNS[2:-1]:
                if math.isfinite(row[key]):
                    self.writer.add_scalar(f"step/{key}", row[key], row["step"])

    def epoch(self, row: dict, step: int) -> None:
        """One history row; TensorBoard plots it at global ``step`` (same axis as steps)."""
        if self.writer is None:
            return
        for key in HISTORY_COLUMNS[1:]:
            if math.isfinite(row[key]):
                self.writer.add_scalar(f"epoch/{key}", row[key], step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
