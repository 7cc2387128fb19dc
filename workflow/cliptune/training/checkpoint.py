"""Checkpoints: the training state, its resume file, the kept epoch checkpoints and
preemption.

:class:`TrainState` is what a resume restores (open_clip keeps the same in its
checkpoint dict): model, optimiser, scheduler, grad scaler, the epoch/step
counters, the best epoch so far and the history; :class:`EpochRun` the epoch in
progress, which a mid-epoch state saves as ``partial``. :func:`save_state` writes it
atomically to a path that is not a Snakemake output, so a killed job loses at
most the steps since the last checkpoint; :func:`load_state` restores it only
when it was written for the same configuration (:func:`resume_hash`).

Epoch checkpoints (``train.keep_epoch_checkpoints``: the last N epochs, and
``train.keep_epoch_checkpoints_every``: every Nth epoch, kept for good): the resume
state as it stood at the end of epoch k, kept as ``epochs/epoch_{k}.pt`` next to
``state.pt``. Like
``state.pt`` it is not a Snakemake output: a failed or rerun job never deletes it. The
folder always holds one chain of epochs, the current run's: when a run starts (fresh,
from ``state.pt`` or from ``resume_from``), kept epochs after its starting epoch belong
to the run it replaces and are removed. ``train.resume_from: k`` loads ``epoch_{k}.pt``
whatever configuration wrote it (that is the point: continue with, say, a lower
learning rate or more epochs), provided the model and the optimiser groups fit. It is
part of the run's identity (the resolved variant and the resume hash), so Snakemake
retrains and an old ``state.pt`` is not continued.

Preemption: SLURM sends SIGTERM when it preempts a job or reaches its time limit
(SIGKILL follows after KillWait, 30 s by default) and SIGUSR1 when a job asks for
``--signal=USR1@seconds`` (under Snakemake's SLURM executor ask for
``--signal=TERM@seconds`` instead: the job step's snakemake dies on SIGUSR1;
docs/cluster.md). Dying on the spot would lose everything since the last checkpoint,
so :class:`SignalGuard` only records the signal; the training loop checks it after
every step, writes its state atomically and raises :class:`PreemptedError`, whose
non-zero exit makes Snakemake (``retries``) or SLURM (requeue) run the job again, which
then resumes. :class:`CheckpointTimer` says when a periodic mid-epoch checkpoint is due.
"""

from __future__ import annotations

import ast
import copy
import logging
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from cliptune.config.load import short_hash
from cliptune.files.atomic import atomic_path
from cliptune.files.integrity import sidecar, verify

log = logging.getLogger(__name__)

# Settings that change how training runs, not what it computes: a state written
# under other values still resumes.
RUNTIME_KEYS = ("devices", "nodes", "checkpoint_every_steps", "checkpoint_every_minutes",
                "checkpoint_every_epochs", "keep_epoch_checkpoints",
                "keep_epoch_checkpoints_every")


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
    parts: list = field(default_factory=list)  # losses.LOSS_PARTS values per good step
    skipped: int = 0
    causes: Counter = field(default_factory=Counter)
    prior_seconds: float = 0.0  # time spent before a mid-epoch resume
    t0: float = field(default_factory=time.perf_counter)
    diverged: str | None = None
    weights: dict | None = None  # CPU weights at the epoch's end
    steps_seconds: float | None = None  # plan + steps + weight check, set when they end

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
    with atomic_path(path, seal=True) as tmp:
        torch.save(state, tmp)
    # The last weights as a plain checkpoint next to the resume state (best is the output).
    with atomic_path(Path(path).with_name("last.safetensors")) as tmp:
        save_file(model, str(tmp), metadata={"epoch": str(ts.epoch)})


def load_state(path: Path, ts: TrainState, config_hash: str | None) -> tuple[bool, dict | None]:
    """Restore ``ts`` from ``path`` when it was written for ``config_hash`` (``None``:
    whatever configuration wrote it, for train.resume_from).

    Returns (restored, the mid-epoch ``partial`` or None)."""
    verify(path, fix=f"delete {path} to train this variant from the start (or set "
                     "train.resume_from to a kept epoch checkpoint)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # The optimiser's named groups (optim.param_groups) must match too: another set of
    # trainable parameters cannot continue this optimiser state.
    saved_groups = [g["name"] for g in state["optimizer"]["param_groups"]]
    if ((config_hash is not None and state["config_hash"] != config_hash)
            or saved_groups != [g["name"] for g in ts.optimizer.param_groups]):
        return False, None
    ts.model.load_state_dict(state["model"])
    ts.optimizer.load_state_dict(state["optimizer"])
    ts.scheduler.load_state_dict(state["scheduler"])
    ts.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    ts.history = state["history"]
    ts.best = Best(state["best_val_loss"], state["best_epoch"], state["best_model"],
                   state["best_score"])
    ts.epoch = state["epoch"]
    progress = state["progress"]
    ts.step = progress["step"]
    ts.restarts = progress["restarts"]
    ts.bad_epochs = progress["bad_epochs"]
    ts.stopped = progress["stopped"]
    ts.step_log = list(progress["step_log"])
    ts.resumed_from = progress["resumed_from"]
    _set_rng_state(state)
    return True, state["partial"]


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"numpy_rng": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_rng_pos": int(np_state[2]), "python_rng": repr(random.getstate())}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    np.random.set_state(("MT19937", state["numpy_rng"].numpy().astype(np.uint32),
                         state["numpy_rng_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python_rng"]))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


# Epoch checkpoints (train.keep_epoch_checkpoints[_every], train.resume_from)

EPOCH_DIR = "epochs"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


class ResumeError(RuntimeError):
    """``train.resume_from`` names a checkpoint that is missing or does not fit."""


def epoch_path(state_path: Path, epoch: int) -> Path:
    return Path(state_path).parent / EPOCH_DIR / f"epoch_{epoch}.pt"


def kept_epochs(state_path: Path) -> list[int]:
    """Epochs with a kept checkpoint next to ``state_path``, ascending."""
    folder = Path(state_path).parent / EPOCH_DIR
    found = (_EPOCH_FILE.match(p.name) for p in folder.glob("epoch_*.pt"))
    return sorted(int(m.group(1)) for m in found if m)


def on_cadence(epoch: int, every: int) -> bool:
    """Whether ``epoch`` is one ``keep_epoch_checkpoints_every: every`` keeps for good."""
    return every > 0 and epoch % every == 0


def keeps_epoch(epoch: int, keep: int, every: int) -> bool:
    """Whether the state at the end of ``epoch`` is kept: every epoch while a count is set
    (``keep``: the last N, older ones pruned), else the epochs on the cadence."""
    return keep > 0 or on_cadence(epoch, every)


def keep_epoch(state_path: Path, epoch: int, keep: int, every: int) -> None:
    """Keep ``state_path`` (just written at the end of ``epoch``) as that epoch's
    checkpoint, then delete every kept epoch that is neither among the last ``keep``
    epochs nor on the ``every`` cadence. A hard link costs no disk: the next save
    replaces ``state.pt`` by rename, leaving the linked file untouched."""
    dest = epoch_path(state_path, epoch)
    with atomic_path(dest) as tmp:
        try:
            tmp.unlink()
            os.link(state_path, tmp)
        except OSError:  # no hard links on this file system
            shutil.copyfile(state_path, tmp)
        if sidecar(state_path).exists():
            shutil.copyfile(sidecar(state_path), sidecar(dest))
    for old in kept_epochs(state_path):
        if old <= epoch - keep and not on_cadence(old, every):
            epoch_path(state_path, old).unlink(missing_ok=True)
            sidecar(epoch_path(state_path, old)).unlink(missing_ok=True)
    log.info("kept epoch %d checkpoint %s (last %d and every %s kept: %s)", epoch, dest, keep,
             every or "-", kept_epochs(state_path))


def drop_epochs_after(state_path: Path, epoch: int) -> None:
    """Remove kept checkpoints after ``epoch``: a run starting there replaces them."""
    later = [e for e in kept_epochs(state_path) if e > epoch]
    for e in later:
        epoch_path(state_path, e).unlink(missing_ok=True)
        sidecar(epoch_path(state_path, e)).unlink(missing_ok=True)
    if later:  # a warning: these files were the user's to resume from
        log.warning("removed the kept checkpoints of epochs %s in %s: this run starts after "
                    "epoch %d (a new or changed run) and keeps its own", later,
                    epoch_path(state_path, later[0]).parent, epoch)


def restart_from_epoch(state_path: Path, ts: TrainState, epoch: int, variant: str) -> Path:
    """Restore ``ts`` from the kept checkpoint of ``epoch`` (``train.resume_from``)."""
    path = epoch_path(state_path, epoch)
    if not path.is_file():
        kept = kept_epochs(state_path)
        have = (f"the kept epochs are {kept}" if kept else
                "no epoch is kept there (train.keep_epoch_checkpoints and "
                "keep_epoch_checkpoints_every were 0)")
        raise ResumeError(
            f"{variant}: train.resume_from = {epoch} but {path} does not exist; {have}. "
            "Set train.resume_from to one of the kept epochs (or null to train from "
            "scratch); train.keep_epoch_checkpoints: N keeps the last N epochs, "
            "keep_epoch_checkpoints_every: N every Nth")
    verify(path, fix=f"set train.resume_from to another kept epoch ({kept_epochs(state_path)}) "
                     "or null to train from scratch")
    try:
        restored, partial = load_state(path, ts, config_hash=None)
    except (RuntimeError, ValueError) as exc:  # load_state_dict: keys / shapes / groups
        raise ResumeError(
            f"{variant}: {path} does not fit this variant's model ({exc}). train.resume_from "
            "continues the same architecture: keep the model section as it was") from exc
    if not restored or partial is not None or ts.epoch != epoch:
        raise ResumeError(
            f"{variant}: {path} cannot be resumed here (epoch {ts.epoch}, optimiser groups "
            "or a mid-epoch state that do not match); train.resume_from needs the same "
            "model and trainable parameters as the run that wrote it")
    ts.stopped = False  # continuing is the request, even after early stopping fired
    ts.resumed_from = {"epoch": epoch, "checkpoint": str(path)}
    return path


# Preemption

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptedError(RuntimeError):
    """Training stopped on request after saving its state; rerunning resumes it."""


class SignalGuard:
    """Context manager recording SIGTERM/SIGUSR1 instead of terminating.

    Outside the main thread Python cannot install handlers; the guard then
    does nothing (the periodic checkpoints still bound the loss)."""

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            log.warning("received %s: saving a checkpoint after this step, then exiting",
                        signal.Signals(signum).name)
        self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class CheckpointTimer:
    """Due every ``every_steps`` optimizer steps and/or ``every_minutes`` of wall
    time since the last checkpoint; 0 disables either."""

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0, clock=time.monotonic):
        if every_steps < 0 or every_minutes < 0:
            raise ValueError("checkpoint intervals must be >= 0 (0 turns them off)")
        self.every_steps = int(every_steps)
        self.every_seconds = float(every_minutes) * 60.0
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Call after every checkpoint (periodic or end of epoch)."""
        self._steps = 0
        self._since = self.clock()

    def step(self) -> bool:
        """Count one optimizer step; True when a checkpoint is due now."""
        self._steps += 1
        if self.every_steps and self._steps >= self.every_steps:
            return True
        return bool(self.every_seconds) and self.clock() - self._since >= self.every_seconds
