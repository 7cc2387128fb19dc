"""Summary section "Pretrained vs fine-tuned": a pretrained CLIP evaluated as it is
(0 epochs) beside every variant fine-tuned from the same checkpoint.

Recall@K and MRR in both directions, and the change the fine-tuning bought, so a
LoRA or hard-negative study reads as the table its authors publish.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DIRECTIONS = (("i2t", "image→text"), ("t2i", "text→image"))


def _checkpoint(report: Mapping) -> str | None:
    """The pretrained CLIP a variant starts from (None for other model kinds)."""
    model = report["config"]["model"]
    return model["clip"]["model"] if model["kind"] == "clip" else None


def _trained(report: Mapping) -> bool:
    return bool(report["config"]["train"]["epochs"])


def pairs(reports: Mapping[str, Mapping]) -> list[tuple[str, list[str]]]:
    """(pretrained variant, variants fine-tuned from its checkpoint), in variant order."""
    out = []
    for name, rep in reports.items():
        ckpt = _checkpoint(rep)
        if ckpt is None or _trained(rep):
            continue
        tuned = [n for n, r in reports.items() if _trained(r) and _checkpoint(r) == ckpt]
        if tuned:
            out.append((name, tuned))
    return out


def _cells(m: Mapping, ks: Sequence[int]) -> list[float]:
    return [m[f"{d}_{key}"] for d, _ in DIRECTIONS
            for key in [*(f"R@{k}" for k in ks), "mrr"]]


def _fmt_row(label: str, images: str, values: Sequence[float], n_ks: int,
             sign: str = "") -> str:
    per = n_ks + 1  # R@K columns then MRR, per direction
    cells = [("–" if not math.isfinite(v) else
              f"{v:{sign}.3f}" if i % per == n_ks else f"{v:{sign}.1f}")
             for i, v in enumerate(values)]
    return "| " + " | ".join([label, images, *cells]) + " |"


def pretrained_section(metrics: Mapping[str, Mapping], reports: Mapping[str, Mapping],
                       ks: Sequence[int]) -> list[str]:
    """Markdown lines of the section (empty when no pretrained/fine-tuned pair exists)."""
    found = pairs(reports)
    if not found:
        return []
    header = ["model", "trained on"] + [f"{label} {c}" for d, label in DIRECTIONS
                                        for c in [*(f"R@{k}" for k in ks), "MRR"]]
    lines = ["## Pretrained vs fine-tuned", "",
             "The pretrained checkpoint evaluated as it is (zero-shot) beside the variants "
             "fine-tuned from it, on the same split; \"trained on\" counts each one's training "
             "images (`train.subset`). Recall in percent, MRR (mean reciprocal rank of the "
             "first relevant item) in [0, 1]; the change rows are fine-tuned minus "
             "pretrained.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for pre, tuned in found:
        base = _cells(metrics[pre], ks)
        lines.append(_fmt_row(f"pretrained (`{pre}`)", "–", base, len(ks)))
        for name in tuned:
            vals = _cells(metrics[name], ks)
            images = f"{reports[name]['train_images']:,} images"
            lines.append(_fmt_row(f"fine-tuned (`{name}`)", images, vals, len(ks)))
            lines.append(_fmt_row(f"change (`{name}`)", "",
                                  [v - b for v, b in zip(vals, base, strict=True)],
                                  len(ks), sign="+"))
    return lines + [""]
