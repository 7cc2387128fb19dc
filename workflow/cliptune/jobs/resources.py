"""Per-job resource requests that depend on the attempt (Snakemake ``retries``)."""

from __future__ import annotations

from collections.abc import Callable


def grow(base: int, step: float = 0.5) -> Callable[..., int]:
    """A resource callable: ``base`` on the first attempt, ``step`` (50 %) more per retry,
    so a job killed for memory or time (OOM, SLURM TIMEOUT) is resubmitted with more."""
    return lambda wildcards, attempt: int(base * (1 + step * (attempt - 1)))
