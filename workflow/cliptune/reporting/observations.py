"""The computed observations of results/summary.md: which variant is best, how each run
converged and how far validation loss sits above training loss, so two runs never
produce the same boilerplate."""

from __future__ import annotations

import math

import pandas as pd

# Relative val-loss change in the last epoch under which a run counts as converged.
PLATEAU = 0.01


def convergence(hist: pd.DataFrame) -> dict:
    """Best epoch, last-epoch relative change and final overfitting gap of one run."""
    if hist.empty:
        return {"epochs": 0}
    val, train = hist["val_loss"].to_numpy(float), hist["train_loss"].to_numpy(float)
    best = int(val.argmin())
    out = {
        "epochs": len(hist),
        "best_epoch": int(hist["epoch"].iloc[best]),
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
        out["state"] = (f"validation loss bottomed out at epoch {out['best_epoch']} and rose "
                        f"{100 * (val[-1] / val[best] - 1):.1f}% by the last epoch (overfitting; "
                        "the saved model is the best epoch)")
    elif not math.isfinite(out["last_change"]):
        out["state"] = "one epoch only: too short to judge convergence"
    elif abs(out["last_change"]) < PLATEAU:
        out["state"] = (f"converged: the last epoch moved validation loss by "
                        f"{100 * out['last_change']:+.2f}%")
    else:
        out["state"] = (f"still improving: the last epoch moved validation loss by "
                        f"{100 * out['last_change']:+.1f}%, more epochs would likely help")
    return out


def observations(data, names, baseline, best, rsum, untrained, ks) -> list[str]:
    """The summary's bullet points, each computed from the artifacts: the best variant
    and its margin, the gain from training, variants below the baseline, convergence,
    the overfitting gap, zero-shot accuracy and throughput."""
    obs = []
    if best is None:
        return ["no variant has metrics yet"]
    bm = data[best]["metrics"]
    line = (f"Best variant by rsum: **{best}** (rsum {rsum[best]:.1f}; image→text R@1 "
            f"{bm.get('i2t_R@1', math.nan):.1f}, text→image R@1 {bm.get('t2i_R@1', math.nan):.1f})")
    if best != baseline and baseline in rsum:
        line += f", {rsum[best] - rsum[baseline]:+.1f} rsum over the baseline `{baseline}`"
    obs.append(line + ".")
    if baseline in rsum and untrained in rsum and math.isfinite(rsum[untrained]):
        gain = rsum[baseline] - rsum[untrained]
        obs.append(f"Training moved the baseline from rsum {rsum[untrained]:.1f} (the same "
                   f"architecture untrained) to {rsum[baseline]:.1f} ({gain:+.1f}).")
    worse = [n for n in names if n not in (baseline, untrained) and baseline in rsum
             and rsum[n] < rsum[baseline]]
    if worse:
        obs.append("Below the baseline: " + ", ".join(
            f"`{n}` ({rsum[n] - rsum[baseline]:+.1f})" for n in worse) + ".")
    i2t, t2i = bm.get("i2t_R@1"), bm.get("t2i_R@1")
    if i2t is not None and t2i is not None:
        easier = "image→text" if i2t > t2i else "text→image"
        obs.append(f"For `{best}`, {easier} R@1 is higher ({max(i2t, t2i):.1f} vs "
                   f"{min(i2t, t2i):.1f}): image→text needs any one of an image's captions, "
                   "text→image must find the single right image.")
    convs = {n: convergence(data[n]["history"]) for n in names}
    trained = {n: c for n, c in convs.items() if c.get("epochs")}
    for n, c in trained.items():
        obs.append(f"`{n}`: {c['state']}; validation loss {c['first_val']:.3f} → "
                   f"{c['final_val']:.3f} over {c['epochs']} epochs.")
    if trained:
        gaps = {n: c["gap"] for n, c in trained.items()}
        worst = max(gaps, key=gaps.get)
        obs.append("Overfitting gap (final validation minus training loss): " + ", ".join(
            f"`{n}` {g:+.3f}" for n, g in gaps.items()) + f"; largest for `{worst}`"
            + (" (validation loss above training loss: the model fits the training "
               "pairs better than unseen ones)." if gaps[worst] > 0 else "."))
    zs = {n: (data[n]["zero_shot"].get("accuracy") or {}).get("top1_accuracy")
          for n in names if data[n]["zero_shot"]}
    zs = {n: v for n, v in zs.items() if v is not None}
    if zs:
        zb = max(zs, key=zs.get)
        obs.append(f"Zero-shot top-1 accuracy is highest for `{zb}` ({zs[zb]:.1f}%).")
    speeds = {n: data[n]["report"].get("images_per_s") for n in trained}
    speeds = {n: v for n, v in speeds.items() if v}
    if len(speeds) > 1:
        fast, slow = max(speeds, key=speeds.get), min(speeds, key=speeds.get)
        obs.append(f"Training throughput ranged from {speeds[slow]:.0f} images/s (`{slow}`) to "
                   f"{speeds[fast]:.0f} images/s (`{fast}`).")
    return obs
