"""Per-step and per-epoch training logs: CSV files plus TensorBoard event files.

Written under ``logs/{dataset}/train/{variant}/`` (not Snakemake outputs):
``steps.csv`` (step, epoch, loss, lr, temperature, grad_norm, images_per_s,
skipped), ``epochs.csv`` (the history rows) and ``tensorboard/``. A resumed run first
drops what was logged after the resumed checkpoint (work that is redone), then
appends; a fresh run starts new files.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

STEP_COLUMNS = ["step", "epoch", "loss", "lr", "temperature", "grad_norm", "images_per_s",
                "skipped"]


class TrainLogger:
    def __init__(self, log_dir: Path | None, resume_step: int | None = None,
                 resume_epoch: int = 0, tensorboard: bool = True, every: int = 1):
        self.every = max(1, every)
        self.dir = Path(log_dir) if log_dir else None
        self.writer = None
        self._files = {}
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        resume = resume_step is not None
        for name, key, upto in (("steps", "step", resume_step), ("epochs", "epoch", resume_epoch)):
            path = self.dir / f"{name}.csv"
            new = not resume or not path.exists() or path.stat().st_size == 0
            if not new:
                _truncate(path, key, upto)
            fh = path.open("w" if new else "a", newline="")
            self._files[name] = (fh, csv.writer(fh), new)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides events of redone steps from an interrupted run.
                self.writer = SummaryWriter(str(self.dir / "tensorboard"),
                                            purge_step=resume_step + 1 if resume else None)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; writing CSV logs only")

    def _row(self, name: str, columns: list[str], row: dict) -> None:
        if name not in self._files:
            return
        fh, writer, new = self._files[name]
        if new:
            writer.writerow(columns)
            self._files[name] = (fh, writer, False)
        writer.writerow([row.get(c, "") for c in columns])
        fh.flush()

    def step(self, row: dict) -> None:
        if row["step"] % self.every and not row.get("skipped"):
            return
        self._row("steps", STEP_COLUMNS, row)
        if self.writer is not None:
            for key in ("loss", "lr", "temperature", "grad_norm", "images_per_s"):
                value = row.get(key)
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"step/{key}", value, row["step"])

    def epoch(self, row: dict, columns: list[str], step: int) -> None:
        """One history row; TensorBoard plots it at global ``step`` (same axis as steps)."""
        self._row("epochs", columns, row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(f"epoch/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        for fh, _, _ in self._files.values():
            fh.close()
        self._files = {}
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _truncate(path: Path, key: str, upto: int) -> None:
    """Keep the header and the rows whose ``key`` column is <= ``upto``."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    col = rows[0].index(key) if key in rows[0] else 0
    kept = [rows[0]] + [r for r in rows[1:] if r and float(r[col]) <= upto]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(kept)
