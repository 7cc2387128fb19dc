"""The training state and its resume file.

:class:`TrainState` is what a resume restores (open_clip keeps the same in its
checkpoint dict): model, optimiser, scheduler, grad scaler, the epoch/step
counters, the best epoch so far and the history; :class:`EpochRun` the epoch in
progress, which a mid-epoch state saves as ``partial``. :func:`save_state` writes it
atomically to a path that is not a Snakemake output, so a killed job loses at
most the steps since the last checkpoint; :func:`load_state` restores it only
when it was written for the same configuration (:func:`resume_hash`).
"""

from __future__ import annotations

import ast
import copy
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from cliptune.config import short_hash
from cliptune.io_utils import atomic_path

# Settings that change how training runs, not what it computes: a state written
# under other values still resumes.
RUNTIME_KEYS = ("devices", "nodes", "checkpoint_every_steps", "checkpoint_every_minutes",
                "checkpoint_every_epochs", "keep_epoch_checkpoints")


@dataclass
class Best:
    """The best epoch by ``train.monitor``: ``score`` is the monitored value signed so
    that higher is better; ``state`` its weights (CPU)."""
    val_loss: float = math.inf
    epoch: int = 0
    state: dict | None = None
    score: float = -math.inf


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken, restarted epochs included
    best: Best = field(default_factory=Best)
    history: list[dict] = field(default_factory=list)
    restarts: int = 0  # divergence recoveries
    bad_epochs: int = 0  # epochs without improvement (early stopping)
    stopped: bool = False  # early stopping fired
    # One train_log.STEP_COLUMNS row per optimiser step (steps.csv), restarted epochs included.
    step_log: list = field(default_factory=list)
    # train.resume_from: the kept epoch checkpoint this run started from (train_report.json).
    resumed_from: dict | None = None

    def snapshot(self) -> dict:
        """CPU copies of the last good state, which divergence recovery restores."""
        return {"model": state_dict_cpu(self.model),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def restore(self, snapshot: dict, lr_factor: float) -> None:
        """Back to ``snapshot`` with every learning rate scaled by ``lr_factor``."""
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        self.scheduler.load_state_dict(snapshot["scheduler"])
        self.scaler.load_state_dict(snapshot["scaler"])
        self.scheduler.base_lrs = [lr * lr_factor for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= lr_factor


@dataclass
class EpochRun:
    """One epoch in progress: its batch plan and what its steps produced so far."""
    epoch: int  # 0-based
    batches: list
    first: int = 0  # steps done before a mid-epoch resume
    losses: list = field(default_factory=list)
    norms: list = field(default_factory=list)
    accs: list = field(default_factory=list)  # in-batch [i2t, t2i] accuracy per good step
    skipped: int = 0
    causes: Counter = field(default_factory=Counter)
    prior_seconds: float = 0.0  # time spent before a mid-epoch resume
    t0: float = field(default_factory=time.perf_counter)
    diverged: str | None = None
    weights: dict | None = None  # CPU weights at the epoch's end

    def seconds(self) -> float:
        return self.prior_seconds + time.perf_counter() - self.t0


def resume_hash(variant: dict) -> str:
    v = copy.deepcopy(variant)
    for key in RUNTIME_KEYS:
        v["train"].pop(key, None)
    return short_hash(v)


def state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def save_state(path: Path, ts: TrainState, config_hash: str, partial: dict | None = None) -> None:
    """Write ``ts`` (``ts.epoch`` epochs complete); ``partial`` (step, batch plan, losses
    and generators so far) describes the epoch in progress for a mid-epoch state."""
    model = state_dict_cpu(ts.model)
    state = {
        "model": model, "optimizer": ts.optimizer.state_dict(),
        "scheduler": ts.scheduler.state_dict(), "scaler": ts.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(), "epoch": ts.epoch, "history": ts.history,
        "best_val_loss": ts.best.val_loss, "best_epoch": ts.best.epoch,
        "best_model": ts.best.state, "best_score": ts.best.score,
        "config_hash": config_hash,
        "progress": {"step": ts.step, "restarts": ts.restarts, "bad_epochs": ts.bad_epochs,
                     "stopped": ts.stopped, "step_log": ts.step_log,
                     "resumed_from": ts.resumed_from},
        "partial": partial,
        **_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    # The last weights as a plain checkpoint next to the resume state (best is the output).
    with atomic_path(Path(path).with_name("last.safetensors")) as tmp:
        save_file(model, str(tmp), metadata={"epoch": str(ts.epoch)})


def load_state(path: Path, ts: TrainState, config_hash: str | None) -> tuple[bool, dict | None]:
    """Restore ``ts`` from ``path`` when it was written for ``config_hash`` (``None``:
    whatever configuration wrote it, for train.resume_from).

    Returns (restored, the mid-epoch ``partial`` or None)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    # The optimiser's named groups (schedule.param_groups) must match too: a state written
    # before groups were named by role cannot be loaded into today's layout.
    saved_groups = [g.get("name") for g in state["optimizer"]["param_groups"]]
    if ((config_hash is not None and state.get("config_hash") != config_hash)
            or saved_groups != [g["name"] for g in ts.optimizer.param_groups]):
        return False, None
    ts.model.load_state_dict(state["model"])
    ts.optimizer.load_state_dict(state["optimizer"])
    ts.scheduler.load_state_dict(state["scheduler"])
    ts.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    ts.history = state["history"]
    ts.best = Best(state["best_val_loss"], state["best_epoch"], state["best_model"],
                   state.get("best_score", -state["best_val_loss"]))
    ts.epoch = state["epoch"]
    progress = state.get("progress", {})
    ts.step = progress.get("step", 0)
    ts.restarts = progress.get("restarts", 0)
    ts.bad_epochs = progress.get("bad_epochs", 0)
    ts.stopped = progress.get("stopped", False)
    ts.step_log = list(progress.get("step_log", []))
    ts.resumed_from = progress.get("resumed_from")
    _set_rng_state(state)
    return True, state.get("partial")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"numpy_rng": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_rng_pos": int(np_state[2]), "python_rng": repr(random.getstate())}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    if "numpy_rng" in state:
        np.random.set_state(("MT19937", state["numpy_rng"].numpy().astype(np.uint32),
                             state["numpy_rng_pos"], 0, 0.0))
    if "python_rng" in state:
        random.setstate(ast.literal_eval(state["python_rng"]))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
