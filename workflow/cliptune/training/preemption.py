"""Preemption safety: turn SIGTERM/SIGUSR1 into "checkpoint, then exit", and decide
when a periodic mid-epoch checkpoint is due.

SLURM sends SIGTERM when it preempts a job or reaches its time limit (SIGKILL
follows after KillWait, 30 s by default) and SIGUSR1 when a job asks for
``--signal=USR1@seconds`` (under Snakemake's SLURM executor ask for
``--signal=TERM@seconds`` instead: the job step's snakemake dies on SIGUSR1;
docs/cluster.md). Dying on the spot would lose everything since the
last checkpoint, so the handler only records the signal; the training loop
checks it after every step, writes its state atomically and raises
:class:`PreemptedError`, whose non-zero exit makes Snakemake (``retries``) or
SLURM (requeue) run the job again, which then resumes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

log = logging.getLogger(__name__)

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
