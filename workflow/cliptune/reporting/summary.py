"""results/summary.md: one readable file with every variant's setup, results and figures.

Everything in it is computed from the run's artifacts (metrics.json,
train_report.json, history.csv, zero_shot.json): the observations name the
best variant, how training converged and how far validation loss sits above
training loss, so two runs never produce the same boilerplate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.config import UNTRAINED
from cliptune.evaluation.retrieval_metrics import DEFAULT_KS
from cliptune.io_utils import write_text
from cliptune.reporting.comparison import (
    Comparison,
    comparison_observations,
    comparison_section,
    margin_note,
)
from cliptune.reporting.pretrained_table import pretrained_section

# Published zero-shot anchors (open_clip benchmark table), Karpathy COCO 5k test split.
ANCHORS = {
    "CLIP ViT-B/32 (OpenAI), zero-shot": {
        "i2t_R@1": 50.1, "i2t_R@5": 75.0, "i2t_R@10": 83.5,
        "t2i_R@1": 30.4, "t2i_R@5": 55.9, "t2i_R@10": 66.9,
    },
}
ANCHOR_SPLIT = "Karpathy COCO 5k test (5,000 images, 25,010 captions)"
ANCHOR_IMAGES = 5000

# Relative val-loss change in the last epoch under which a run counts as converged.
PLATEAU = 0.01


def _load(path) -> dict:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


def _history(path) -> pd.DataFrame:
    if not path or not Path(path).is_file():
        return pd.DataFrame()
    return pd.read_csv(path)


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _duration(seconds) -> str:
    if not seconds:
        return "–"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_overrides(config: Mapping, reference: Mapping) -> str:
    """The settings in which ``config`` differs from ``reference`` (the baseline)."""
    a, b = _flatten(config), _flatten(reference)
    diff = [f"`{k}={a[k]}`" for k in sorted(a) if k != "name" and a.get(k) != b.get(k)]
    return ", ".join(diff) or "–"


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
    val, train = hist["val_loss"].to_numpy(float), hist["train_loss"].to_numpy(float)
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
        # Between the last two validations (train.eval_every epochs apart).
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
    """train.monitor of a run (train reports before `selected_on` existed: from its config)."""
    selected = report.get("selected_on") or {}
    return selected.get("monitor") or report.get("config", {}).get("train", {}).get(
        "monitor", "val_loss")


def selection_paragraph(data: Mapping[str, Mapping]) -> str:
    """Where the model was selected and where it is reported; bold when those coincide."""
    trained = [d["report"] for d in data.values() if d["report"].get("epochs_run")]
    selected = {(r["selected_on"]["split"], r["selected_on"]["images"])
                for r in trained if r.get("selected_on")}
    reported = {(m["reported_on"]["split"], m["reported_on"]["images"])
                for d in data.values() if (m := d["metrics"]).get("reported_on")}
    if not reported:
        return "Which split recall was measured on is not recorded; rerun `evaluate`."
    rep = ", ".join(f"`{s}` ({n:,} images)" for s, n in sorted(reported))
    if not trained:
        return f"No variant was trained, so no model was selected; Recall@K is on split {rep}."
    if any(not r.get("selected_on") for r in trained):
        return (f"Recall@K is reported on split {rep}. Where models were selected is not "
                "recorded in every train report; rerun training to record it.")
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


CONTRASTIVE = """\
Each training batch holds B images and one caption of each. The image tower turns
every image into a vector, the frozen text tower does the same for every caption,
and both are scaled to unit length, so their dot product is a cosine similarity.
For one image (the **anchor**), its own caption is the **positive** and the other
B − 1 captions in the batch are **negatives**. The loss is a B-way classification:
a softmax over the anchor's similarities to all B captions, divided by the
**temperature** τ, should put its probability on the positive (cross-entropy).
The same is done from each caption towards the B images, and the two directions are
averaged (the symmetric InfoNCE loss of CLIP). A small τ sharpens the softmax so
that near misses are punished hard; CLIP starts at τ = 0.07 and learns it. Larger
batches give more negatives per anchor, which is why contrastive training prefers
them. {specific}
"""


def _ks(metrics: Mapping) -> list[int]:
    return sorted({int(k.split("@")[1]) for k in metrics if k.startswith("i2t_R@")})


def _rsum(m: Mapping, ks: Sequence[int]) -> float:
    return sum(m.get(f"{d}_R@{k}", math.nan) for d in ("i2t", "t2i") for k in ks)


def _rel(path, base_dir: Path) -> str:
    return Path(os.path.relpath(Path(path), base_dir)).as_posix()


def build_summary(variants: Mapping[str, Mapping], baseline: str, dataset: Mapping,
                  report: Mapping, out: Path, ablation_png: Path | None = None,
                  overlay_png: Path | None = None, untrained: str = UNTRAINED,
                  comparison: Comparison | None = None) -> str:
    """Markdown text of the summary.

    ``variants[name]`` holds paths: metrics, train_report, history, zero_shot (optional)
    and figures (name -> png, optional). ``comparison``: the aggregate's intervals and
    paired differences; without it the summary says that none were computed.
    """
    base_dir = Path(out).parent
    data = {}
    for name, paths in variants.items():
        data[name] = {
            "metrics": _load(paths.get("metrics")),
            "report": _load(paths.get("train_report")),
            "history": _history(paths.get("history")),
            "zero_shot": _load(paths.get("zero_shot")),
            "figures": dict(paths.get("figures", {})),
        }
    names = list(data)
    any_metrics = next((d["metrics"] for d in data.values() if d["metrics"]), {})
    ks = _ks(any_metrics) or list(DEFAULT_KS)
    rsum = {n: _rsum(d["metrics"], ks) for n, d in data.items()}
    ranked = sorted((n for n in names if math.isfinite(rsum[n])), key=lambda n: -rsum[n])
    best = ranked[0] if ranked else None
    n_images = int(any_metrics.get("n_images", 0))
    n_texts = int(any_metrics.get("n_texts", 0))
    split = any_metrics.get("split", "?")
    lines = [f"# cliptune results: {dataset.get('name', '?')}", ""]
    lines += [
        f"Dataset `{dataset.get('name')}` (source: {dataset.get('source')}), evaluated on split "
        f"`{split}`: {n_images:,} images against {n_texts:,} captions, every caption of every "
        "image (image→text: a hit when any of the image's captions is in the top K; "
        "text→image: per caption). Recall in percent. " + selection_paragraph(data),
        "",
    ]

    # ---- observations
    lines += ["## Observations", ""]
    obs = _observations(data, names, baseline, best, rsum, untrained, ks, comparison)
    lines += [f"- {o}" for o in obs] + [""]

    # ---- results table (+ anchors)
    lines += ["## Results", ""]
    header = ["variant"] + [f"i2t R@{k}" for k in ks] + [f"t2i R@{k}" for k in ks] + [
        "rsum", "i2t medr", "t2i medr", "i2t MRR", "t2i MRR"] + [
        f"{d} {m}@{ks[-1]}" for d in ("i2t", "t2i") for m in ("mAP", "NDCG")]
    rows = []
    for n in names:
        m = data[n]["metrics"]
        mark = " **(best)**" if n == best else ""
        mark += " (baseline)" if n == baseline and n != "baseline" else ""
        rows.append([f"{n}{mark}"] + [_fmt(m.get(f"i2t_R@{k}")) for k in ks]
                    + [_fmt(m.get(f"t2i_R@{k}")) for k in ks]
                    + [_fmt(rsum[n]), _fmt(m.get("i2t_medr")), _fmt(m.get("t2i_medr")),
                       _fmt(m.get("i2t_mrr"), 3), _fmt(m.get("t2i_mrr"), 3)]
                    + [_fmt(m.get(f"{d}_{x}@{ks[-1]}")) for d in ("i2t", "t2i")
                       for x in ("mAP", "NDCG")])
    comparable = bool(report.get("anchors_comparable")) and dataset.get("source") == "coco"
    anchor_ks = [k for k in ks if all(f"i2t_R@{k}" in v for v in ANCHORS.values())]
    if comparable:
        for a, vals in ANCHORS.items():
            rows.append([f"*{a}, published*"] + [_fmt(vals.get(f"i2t_R@{k}")) for k in ks]
                        + [_fmt(vals.get(f"t2i_R@{k}")) for k in ks] + ["–"] * 9)
    lines += [_table(header, rows), ""]
    if comparable:
        lines.append(f"Published anchors are from open_clip's benchmark on the {ANCHOR_SPLIT}.")
        if n_images != ANCHOR_IMAGES:
            lines.append(f"**Warning**: `report.anchors_comparable` is true but this split has "
                         f"{n_images:,} images, not {ANCHOR_IMAGES:,}; the comparison is only "
                         "valid on the Karpathy 5k test split.")
    else:
        arows = [[a] + [_fmt(v.get(f"{d}_R@{k}")) for d in ("i2t", "t2i") for k in anchor_ks]
                 for a, v in ANCHORS.items()]
        lines += [
            f"Published anchor, **not comparable** with the table above: it is measured on the "
            f"{ANCHOR_SPLIT}, while these results use split `{split}` with {n_images:,} images"
            + (" of a synthetic dataset" if dataset.get("source") == "demo" else "")
            + ". Recall falls as the gallery grows, so only the same split compares. Set "
            "`report.anchors_comparable: true` when evaluating on that split.",
            "",
            _table(["model"] + [f"{d} R@{k}" for d in ("i2t", "t2i") for k in anchor_ks], arows),
        ]
    lines.append("")
    if comparison is not None:
        lines += comparison_section(comparison)
    lines += pretrained_section({n: d["metrics"] for n, d in data.items()},
                                {n: d["report"] for n, d in data.items()}, ks)

    # ---- zero-shot
    zs_rows = []
    for n in names:
        acc = (data[n]["zero_shot"] or {}).get("accuracy") or {}
        if "top1_accuracy" in acc:
            zs_rows.append([n, _fmt(acc["top1_accuracy"]), _fmt(acc.get("chance_top1_accuracy")),
                            _fmt(acc.get("top5_accuracy")), _fmt(acc.get("mAP")),
                            data[n]["zero_shot"].get("accuracy_over")])
    if zs_rows:
        lines += ["## Zero-shot classification", "",
                  "Class prompts ensembled over the configured templates; an image counts as "
                  "correct at top-K when one of its K most probable classes is present in it.",
                  "", _table(["variant", "top-1 (%)", "top-1 by chance (%)", "top-5 (%)",
                              "class mAP (%)", "over"],
                             zs_rows), ""]

    # ---- figures
    lines += ["## Figures", ""]
    if ablation_png:
        lines += [f"![Recall@K per variant]({_rel(ablation_png, base_dir)})", ""]
    if overlay_png:
        lines += [f"![training curves of all variants]({_rel(overlay_png, base_dir)})", ""]
    shown = best or baseline
    figs = data.get(shown, {}).get("figures", {})
    titles = {"text_to_image": "text query → top images",
              "image_to_text": "image → top captions",
              "zero_shot": "zero-shot classification",
              "similarity_heatmap": "image-caption similarity"}
    if figs:
        lines += [f"Sample retrievals of the best variant, `{shown}`; every variant's figures "
                  "are in its folder and in the HTML report.", ""]
        for key, title in titles.items():
            if key in figs:
                lines += [f"### {title}", "", f"![{title}: {shown}]({_rel(figs[key], base_dir)})",
                          ""]

    # ---- hyperparameters
    lines += ["## Variants and hyperparameters", ""]
    ref_cfg = data.get(baseline, {}).get("report", {}).get("config", {})
    hrows = []
    for n in names:
        cfg = data[n]["report"].get("config", {})
        t, mo = cfg.get("train", {}), cfg.get("model", {})
        hrows.append([
            n, mo.get("backbone", "–"), mo.get("pooling", "–"),
            (mo.get("head") or {}).get("norm", "–"), t.get("batch_size", "–"),
            f"{t['lr']:g}" if "lr" in t else "–", t.get("optimizer", "AdamW"),
            t.get("weight_decay", "–"),
            f"{data[n]['report'].get('epochs_run', '–')}/{t.get('epochs', '–')}",
            f"{t.get('temperature', '–')}" + (" (learned)" if t.get("learnable_temperature")
                                              else " (fixed)"),
            t.get("sampler", "–"), t.get("precision", "–"),
            config_overrides(cfg, ref_cfg) if n != baseline else "(reference)",
        ])
    lines += [_table(["variant", "backbone", "pooling", "head norm", "batch", "lr", "optimizer",
                      "weight decay", "epochs run/set", "init. temperature", "sampler",
                      "precision", "differs from baseline"], hrows), ""]
    text_enc = ref_cfg.get("text_encoder", {})
    if text_enc:
        lines += [f"Text tower (frozen): `{text_enc.get('model')}`, pooling "
                  f"`{text_enc.get('pooling')}`, max length {text_enc.get('max_length')}; image "
                  f"size {ref_cfg.get('image_size')} px.", ""]

    # ---- hardware and time
    lines += ["## Hardware and wall time", ""]
    trows = []
    for n in names:
        r = data[n]["report"]
        trows.append([n, r.get("device", "–"), r.get("torch", "–"), _duration(r.get("wall_seconds")),
                      _fmt(r.get("images_per_s"), 0), f"{r.get('trainable_parameters', 0):,}"
                      f" / {r.get('parameters', 0):,}",
                      f"{r.get('train_images', 0):,} / {r.get('train_captions', 0):,}"])
    total = sum(float(data[n]["report"].get("wall_seconds") or 0) for n in names)
    lines += [_table(["variant", "device", "torch", "training wall time", "images/s",
                      "trainable / all parameters", "train images / captions"], trows), "",
              f"Total training time over all variants: {_duration(total)}.", ""]

    # ---- the loss, in plain words
    b_cfg = ref_cfg.get("train", {})
    shown_conv = next((n for n in (best, baseline) if n in data
                       and not data[n]["history"].empty), None)
    conv = (convergence(data[shown_conv]["history"], monitor_of(data[shown_conv]["report"]))
            if shown_conv else {})
    specific = ""
    if b_cfg:
        specific = (f"Here each anchor had {b_cfg.get('batch_size', 0) - 1} negatives (batch "
                    f"size {b_cfg.get('batch_size')}).")
        if "temperature_end" in conv:
            specific += (f" The temperature of `{shown_conv}` went from "
                         f"{conv['temperature_start']:.4f} to {conv['temperature_end']:.4f}.")
    lines += ["## The contrastive loss in plain words", "", CONTRASTIVE.format(specific=specific)]
    return "\n".join(lines).rstrip() + "\n"


def _observations(data, names, baseline, best, rsum, untrained, ks, comparison) -> list[str]:
    obs = []
    if best is None:
        return ["no variant has metrics yet"]
    bm = data[best]["metrics"]
    line = (f"Best variant by rsum: **{best}** (rsum {rsum[best]:.1f}; image→text R@1 "
            f"{bm.get('i2t_R@1', math.nan):.1f}, text→image R@1 {bm.get('t2i_R@1', math.nan):.1f})")
    if best != baseline and baseline in rsum:
        line += f", {rsum[best] - rsum[baseline]:+.1f} rsum over the baseline `{baseline}`"
        line += margin_note(comparison, best) if comparison is not None else ""
    obs.append(line + ".")
    if baseline in rsum and untrained in rsum and math.isfinite(rsum[untrained]):
        gain = rsum[baseline] - rsum[untrained]
        obs.append(f"Training moved the baseline from rsum {rsum[untrained]:.1f} (the same "
                   f"architecture untrained) to {rsum[baseline]:.1f} ({gain:+.1f}).")
    # Better / worse only where the paired bootstrap interval says so.
    if comparison is not None:
        obs += comparison_observations(comparison, skip=(untrained,))
    else:
        obs.append("No paired comparison with the baseline was computed, so no difference "
                   "above is called better or worse.")
    i2t, t2i = bm.get("i2t_R@1"), bm.get("t2i_R@1")
    if i2t is not None and t2i is not None:
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


def write_summary(out: Path, variants: Mapping[str, Mapping], baseline: str, dataset: Mapping,
                  report: Mapping, ablation_png: Path | None = None,
                  overlay_png: Path | None = None,
                  comparison: Comparison | None = None) -> str:
    text = build_summary(variants, baseline, dataset, report, out, ablation_png, overlay_png,
                         comparison=comparison)
    write_text(out, text)
    return text
