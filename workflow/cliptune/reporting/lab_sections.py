"""Sections of results/summary.md that the lab handout (2.6) asks for beyond the
retrieval results: hardware with GPU memory, optimiser and warmup labels, training
stability and convergence from history.csv, and the reflection on LLM usage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from cliptune.reporting.markdown import fmt, table

OPTIMIZERS = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}


def optimizer_label(train: Mapping) -> str:
    name = OPTIMIZERS[train["optimizer"]]
    return f"{name} (momentum {train['momentum']})" if name == "SGD" else name


def warmup_label(train: Mapping) -> str:
    if train["warmup_steps"] is not None:
        return f"{train['warmup_steps']} steps"
    return f"{100 * train['warmup_fraction']:g}% of steps"


def hardware_label(report: Mapping) -> str:
    """GPU name (x count) on CUDA, CPU model and threads otherwise (train_report.hardware)."""
    hw = report["hardware"]
    if hw["kind"] == "cuda":
        count = f" x{hw['gpu_count']}" if hw["gpu_count"] > 1 else ""
        return f"{hw['gpu']}{count} ({hw['gpu_memory_gb']:.0f} GB)"
    return f"CPU {hw['cpu']}, {hw['torch_threads']} threads of {hw['cpu_cores']} cores"


def peak_memory_label(report: Mapping) -> str:
    hw = report["hardware"]
    return f"{hw['peak_gpu_memory_gb']:.2f} GB" if hw["kind"] == "cuda" else "– (CPU)"


def _stability_row(name: str, hist: pd.DataFrame) -> list:
    skipped = int(hist["skipped_steps"].sum())
    restarts = int(hist["restarts"].max())
    lo, hi = hist["grad_norm_min"], hist["grad_norm_max"]
    norms = "–" if lo.isna().all() else f"{lo.min():.3g} – {hi.max():.3g}"
    last = hist.iloc[-1]
    acc = [fmt(last[c]) for c in ("train_acc_i2t", "train_acc_t2i", "val_acc_i2t",
                                  "val_acc_t2i")]
    return [name, skipped, restarts, norms, fmt(last["train_loss"], 3),
            fmt(last["val_loss"], 3), *acc]


def stability_section(data: Mapping[str, Mapping], names: Sequence[str]) -> list[str]:
    """Lab 2.6 "observations on stability": per trained variant, from history.csv, the
    non-finite steps skipped, divergence restarts, the range of pre-clipping gradient
    norms, and the final losses and in-batch accuracies."""
    rows = [_stability_row(n, data[n]["history"]) for n in names if not data[n]["history"].empty]
    if not rows:
        return []
    calm = all(r[1] == 0 and r[2] == 0 for r in rows)
    verdict = ("No run skipped a non-finite step or restarted after divergence."
               if calm else "Some runs needed the guards: see skipped steps and restarts.")
    return ["", "## Training stability and convergence", "",
            "Skipped steps had a NaN/Inf loss or gradient; a restart reloads the epoch's start "
            "with a lower learning rate (`train.divergence`). Gradient norms are measured "
            "before clipping at `train.grad_clip`. Accuracy is the in-batch top-1 (%) of the "
            f"last epoch, image→text / text→image. {verdict}", "",
            table(["variant", "skipped steps", "restarts", "grad-norm range", "final train loss",
                    "final val loss", "train acc i2t", "train acc t2i", "val acc i2t",
                    "val acc t2i"], rows)]


LLM_REFLECTION = [
    "", "## Reflection on LLM usage", "",
    "*To be written by the authors (lab handout 2.6): which prompts were most useful, how the "
    "generated code and text were validated (tests, reruns, comparison with the handout), and "
    "where the LLM was wrong.*", "",
    "- Most useful prompts: _…_",
    "- How outputs were validated: _…_",
    "- Link to the conversation: [conversation link](TODO: paste the shared conversation URL)",
    "",
]
