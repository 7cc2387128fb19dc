"""Markdown building blocks shared by the summary's sections."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(v, digits: int = 1) -> str:
    """A table cell: floats rounded, missing or non-finite values as a dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
