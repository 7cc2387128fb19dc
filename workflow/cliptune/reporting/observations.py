"""The computed observations of results/summary.md: which variant is best, how each run
converged (judged by the monitor that picked its saved epoch), where models were
selected and reported, and how far validation loss sits above training loss, so two
runs never produce the same boilerplate."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cliptune.reporting.comparison import (
    comparison_observations,
    margin_note,
    training_gain_note,
)

# Relative val-loss change in the last epoch under which a run counts as converged.
PLATEAU = 0.01


# train.monitor -> (history column, +1 when higher is better, words); as in training.
MONITOR_COLUMNS = {"val_loss": ("val_loss", -1.0, "validation loss"),
                   "val_recall": ("val_recall", 1.0, "validation recall")}


def convergence(hist: pd.DataFrame, monitor: str = "val_loss") -> dict:
    """Best epoch by ``monitor`` (train.monitor: what picked the saved epoch), last-epoch
    relative change of validation loss and the final overfitting gap of one run."""
    if hist.empty:
        return {"epochs": 0}
    epochs = len(hist)
    # train.eval_every > 1 leaves epochs without validation (NaN): judge the validated ones.
    hist = hist[hist["val_loss"].notna()] if hist["val_loss"].notna().any() else hist
    column, sign, words = MONITOR_COLUMNS[monitor]
    watched = hist[column].to_numpy(float)
    # The gap compares losses of one form: train_loss_in_batch is the training loss with
    # in-batch negatives only, as val_loss (train_loss adds mined hard negatives).
    val, train = (hist["val_loss"].to_numpy(float),
                  hist["train_loss_in_batch"].to_numpy(float))
    # The first best epoch, as the trainer keeps it (it replaces only on strict improvement).
    best = int(np.where(np.isfinite(watched), sign * watched, -np.inf).argmax())
    out = {
        "epochs": epochs,
        "validations": len(hist),
        "monitor": monitor,
        "best_epoch": int(hist["epoch"].iloc[best]),
        "best_value": float(watched[best]),
        "best_val": float(val[best]),
        "final_val": float(val[-1]),
        "final_train": float(train[-1]),
        "gap": float(val[-1] - train[-1]),
        "first_val": float(val[0]),
        "last_change": float((val[-1] - val[-2]) / abs(val[-2])) if len(val) > 1 else math.nan,
        "temperature_start": float(hist["temperature"].iloc[0]),
        "temperature_end": float(hist["temperature"].iloc[-1]),
    }
    if best < len(val) - 1:
        moved = "rose" if sign < 0 else "fell"
        turn = "bottomed out" if sign < 0 else "peaked"
        change = abs(100 * (watched[-1] / watched[best] - 1)) if watched[best] else math.nan
        out["state"] = (f"{words} ({monitor}, which picks the saved epoch) {turn} at epoch "
                        f"{out['best_epoch']} and {moved} {change:.1f}% by the last epoch "
                        "(overfitting; the saved model is that best epoch)")
    elif not math.isfinite(out["last_change"]):
        out["state"] = "one epoch only: too short to judge convergence"
    elif abs(out["last_change"]) < PLATEAU:
        out["state"] = (f"converged: the last epoch moved validation loss by "
                        f"{100 * out['last_change']:+.2f}%")
    else:
        out["state"] = (f"still improving: the last epoch moved validation loss by "
                        f"{100 * out['last_change']:+.1f}%, more epochs would likely help")
    return out


def monitor_of(report: Mapping) -> str:
    """train.monitor of a run (train_report.json)."""
    return report["selected_on"]["monitor"]


def selection_paragraph(data: Mapping[str, Mapping]) -> str:
    """Where the model was selected and where it is reported; bold when those coincide."""
    trained = [d["report"] for d in data.values() if d["report"]["epochs_run"]]
    selected = {(r["selected_on"]["split"], r["selected_on"]["images"]) for r in trained}
    reported = {(d["metrics"]["reported_on"]["split"], d["metrics"]["reported_on"]["images"])
                for d in data.values()}
    rep = ", ".join(f"`{s}` ({n:,} images)" for s, n in sorted(reported))
    if not trained:
        return f"No variant was trained, so no model was selected; Recall@K is on split {rep}."
    sel = ", ".join(f"`{s}` ({n:,} images)" for s, n in sorted(selected))
    text = (f"Models were selected (the saved epoch by `train.monitor` and early stopping; "
            f"the HPO objective uses the same split) on split {sel}; Recall@K is reported on "
            f"split {rep}.")
    shared = {s for s, _ in selected} & {s for s, _ in reported}
    if shared:
        return text + (f" **Selection and reporting used the same images (split "
                       f"{', '.join(f'`{s}`' for s in sorted(shared))}): the reported recall "
                       "is optimistically biased; set `dataset.selection.split` and "
                       "`eval.split` to different splits.**")
    return text + " The two splits share no image."


def observations(data, names, baseline, best, rsum, untrained, ks, comparison) -> list[str]:
    """The summary's bullet points, each computed from the artifacts: the best variant
    and its margin, the gain from training, differences the paired bootstrap supports,
    convergence, the overfitting gap, zero-shot accuracy and throughput."""
    obs = []
    if best is None:
        return ["no variant has metrics yet"]
    bm = data[best]["metrics"]
    line = (f"Best variant by rsum: **{best}** (rsum {rsum[best]:.1f}; image→text R@1 "
            f"{bm['i2t_R@1']:.1f}, text→image R@1 {bm['t2i_R@1']:.1f})")
    if best != baseline and baseline in rsum:
        line += f", {rsum[best] - rsum[baseline]:+.1f} rsum over the baseline `{baseline}`"
        line += margin_note(comparison, best) if comparison is not None else ""
    obs.append(line + ".")
    if baseline in rsum and untrained in rsum and math.isfinite(rsum[untrained]):
        gain = rsum[baseline] - rsum[untrained]
        note = training_gain_note(comparison, untrained) if comparison is not None else ""
        obs.append(f"Training moved the baseline from rsum {rsum[untrained]:.1f} (the same "
                   f"architecture untrained) to {rsum[baseline]:.1f} ({gain:+.1f}{note}).")
    # Better / worse only where the paired bootstrap interval says so.
    if comparison is not None:
        obs += comparison_observations(comparison, skip=(untrained,))
    else:
        obs.append("No paired comparison with the baseline was computed, so no difference "
                   "above is called better or worse.")
    i2t, t2i = bm["i2t_R@1"], bm["t2i_R@1"]
    easier = "image→text" if i2t > t2i else "text→image"
    obs.append(f"For `{best}`, {easier} R@1 is higher ({max(i2t, t2i):.1f} vs "
               f"{min(i2t, t2i):.1f}): image→text needs any one of an image's captions, "
               "text→image must find the single right image.")
    convs = {n: convergence(data[n]["history"], monitor_of(data[n]["report"])) for n in names}
    trained = {n: c for n, c in convs.items() if c.get("epochs")}
    for n, c in trained.items():
        obs.append(f"`{n}`: {c['state']}; validation loss {c['first_val']:.3f} → "
                   f"{c['final_val']:.3f} over {c['epochs']} epochs.")
    if trained:
        gaps = {n: c["gap"] for n, c in trained.items()}
        worst = max(gaps, key=gaps.get)
        obs.append("Overfitting gap (final validation minus training loss, both with in-batch "
                   "negatives only): " + ", ".join(
            f"`{n}` {g:+.3f}" for n, g in gaps.items()) + f"; largest for `{worst}`"
            + (" (validation loss above training loss: the model fits the training "
               "pairs better than unseen ones)." if gaps[worst] > 0 else "."))
    obs += _zero_shot_leaders(data, names)
    speeds = {n: data[n]["report"]["images_per_s"] for n in trained}
    speeds = {n: v for n, v in speeds.items() if v}
    if len(speeds) > 1:
        fast, slow = max(speeds, key=speeds.get), min(speeds, key=speeds.get)
        obs.append(f"Training throughput ranged from {speeds[slow]:.0f} images/s (`{slow}`) to "
                   f"{speeds[fast]:.0f} images/s (`{fast}`).")
    return obs


def _zero_shot_leaders(data: Mapping, names: list[str]) -> list[str]:
    """Per zero-shot task with labels: the variant with the best top-1 accuracy."""
    best: dict[str, tuple[str, float]] = {}
    for n in names:
        for task, r in data[n]["zero_shot"]["tasks"].items():
            top1 = (r["accuracy"] or {}).get("top1_accuracy")  # absent: no labelled image
            if top1 is not None and (task not in best or top1 > best[task][1]):
                best[task] = (n, top1)
    return [f"Zero-shot top-1 accuracy on task `{t}` is highest for `{n}` ({v:.1f}%)."
            for t, (n, v) in best.items()]
