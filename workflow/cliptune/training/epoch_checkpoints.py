"""Per-epoch checkpoints (``train.keep_epoch_checkpoints``) and restarting training from
one of them (``train.resume_from``).

An epoch checkpoint is the resume state (cliptune.training.checkpoint: model,
optimiser, scheduler, scaler, RNGs, history, best epoch) as it stood at the end of
epoch k, kept as ``epochs/epoch_{k}.pt`` next to ``state.pt``. Like ``state.pt`` it is
not a Snakemake output: a failed or rerun job never deletes it. The folder always
holds one chain of epochs, the current run's: when a run starts (fresh, from
``state.pt`` or from ``resume_from``), kept epochs after its starting epoch belong to
the run it replaces and are removed.

``resume_from: k`` loads ``epoch_{k}.pt`` whatever configuration wrote it (that is the
point: continue with, say, a lower learning rate or more epochs), provided the model
and the optimiser groups fit. It is part of the run's identity (the resolved variant
and the resume hash), so Snakemake retrains and an old ``state.pt`` is not continued.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from cliptune.io_utils import atomic_path
from cliptune.training.checkpoint import TrainState, load_state

log = logging.getLogger(__name__)

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


def keep_epoch(state_path: Path, epoch: int, keep: int) -> None:
    """Keep ``state_path`` (just written at the end of ``epoch``) as that epoch's
    checkpoint, then delete all but the last ``keep``. A hard link costs no disk: the
    next save replaces ``state.pt`` by rename, leaving the linked file untouched."""
    dest = epoch_path(state_path, epoch)
    with atomic_path(dest) as tmp:
        try:
            tmp.unlink()
            os.link(state_path, tmp)
        except OSError:  # no hard links on this file system
            shutil.copyfile(state_path, tmp)
    for old in kept_epochs(state_path)[:-keep]:
        epoch_path(state_path, old).unlink(missing_ok=True)
    log.info("kept epoch %d checkpoint %s (last %d kept: %s)", epoch, dest, keep,
             kept_epochs(state_path))


def drop_epochs_after(state_path: Path, epoch: int) -> None:
    """Remove kept checkpoints after ``epoch``: a run starting there replaces them."""
    later = [e for e in kept_epochs(state_path) if e > epoch]
    for e in later:
        epoch_path(state_path, e).unlink(missing_ok=True)
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
                "no epoch is kept there (train.keep_epoch_checkpoints was 0)")
        raise ResumeError(
            f"{variant}: train.resume_from = {epoch} but {path} does not exist; {have}. "
            "Set train.resume_from to one of the kept epochs (or null to train from "
            "scratch); train.keep_epoch_checkpoints: N keeps the last N epochs")
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
