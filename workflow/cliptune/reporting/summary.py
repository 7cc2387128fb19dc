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

import pandas as pd

from cliptune.config import UNTRAINED
from cliptune.evaluation.retrieval_metrics import DEFAULT_KS
from cliptune.io_utils import write_text

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
                  overlay_png: Path | None = None, untrained: str = UNTRAINED) -> str:
    """Markdown text of the summary.

    ``variants[name]`` holds paths: metrics, train_report, history, zero_shot (optional)
    and figures (name -> png, optional).
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
        "text→image: per caption). Recall in percent.",
        "",
    ]

    # ---- observations
    lines += ["## Observations", ""]
    obs = _observations(data, names, baseline, best, rsum, untrained, ks)
    lines += [f"- {o}" for o in obs] + [""]

    # ---- results table (+ anchors)
    lines += ["## Results", ""]
    kmax = ks[-1]
    rank_cols = [f"{d}_{m}@{kmax}" for m in ("mAP", "NDCG") for d in ("i2t", "t2i")]
    header = ["variant"] + [f"i2t R@{k}" for k in ks] + [f"t2i R@{k}" for k in ks] + [
        "rsum", "i2t medr", "t2i medr", "i2t MRR"] + [c.replace("_", " ") for c in rank_cols]
    rows = []
    for n in names:
        m = data[n]["metrics"]
        mark = " **(best)**" if n == best else ""
        mark += " (baseline)" if n == baseline and n != "baseline" else ""
        rows.append([f"{n}{mark}"] + [_fmt(m.get(f"i2t_R@{k}")) for k in ks]
                    + [_fmt(m.get(f"t2i_R@{k}")) for k in ks]
                    + [_fmt(rsum[n]), _fmt(m.get("i2t_medr")), _fmt(m.get("t2i_medr")),
                       _fmt(m.get("i2t_mrr"), 3)] + [_fmt(m.get(c)) for c in rank_cols])
    comparable = bool(report.get("anchors_comparable")) and dataset.get("source") == "coco"
    anchor_ks = [k for k in ks if all(f"i2t_R@{k}" in v for v in ANCHORS.values())]
    if comparable:
        for a, vals in ANCHORS.items():
            rows.append([f"*{a}, published*"] + [_fmt(vals.get(f"i2t_R@{k}")) for k in ks]
                        + [_fmt(vals.get(f"t2i_R@{k}")) for k in ks]
                        + ["–"] * (4 + len(rank_cols)))
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
            f"{t['lr']:g}" if "lr" in t else "–", _optimizer(t), t.get("weight_decay", "–"),
            _warmup(t), t.get("grad_clip", "–"),
            f"{data[n]['report'].get('epochs_run', '–')}/{t.get('epochs', '–')}",
            f"{t.get('temperature', '–')}" + (" (learned)" if t.get("learnable_temperature")
                                              else " (fixed)"),
            t.get("sampler", "–"), t.get("precision", "–"),
            config_overrides(cfg, ref_cfg) if n != baseline else "(reference)",
        ])
    lines += [_table(["variant", "backbone", "pooling", "head norm", "batch", "lr", "optimizer",
                      "weight decay", "warmup", "grad clip", "epochs run/set", "init. temperature", "sampler",
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
        trows.append([n, _hardware(r), _peak_memory(r), r.get("torch", "–"),
                      _duration(r.get("wall_seconds")),
                      _fmt(r.get("images_per_s"), 0), f"{r.get('trainable_parameters', 0):,}"
                      f" / {r.get('parameters', 0):,}",
                      f"{r.get('train_images', 0):,} / {r.get('train_captions', 0):,}"])
    total = sum(float(data[n]["report"].get("wall_seconds") or 0) for n in names)
    lines += [_table(["variant", "hardware", "peak GPU memory", "torch", "training wall time",
                      "images/s",
                      "trainable / all parameters", "train images / captions"], trows), "",
              f"Total training time over all variants: {_duration(total)}.", ""]

    # ---- the loss, in plain words
    b_cfg = ref_cfg.get("train", {})
    shown_conv = next((n for n in (best, baseline) if n in data
                       and not data[n]["history"].empty), None)
    conv = convergence(data[shown_conv]["history"]) if shown_conv else {}
    specific = ""
    if b_cfg:
        specific = (f"Here each anchor had {b_cfg.get('batch_size', 0) - 1} negatives (batch "
                    f"size {b_cfg.get('batch_size')}).")
        if "temperature_end" in conv:
            specific += (f" The temperature of `{shown_conv}` went from "
                         f"{conv['temperature_start']:.4f} to {conv['temperature_end']:.4f}.")
    lines += ["## The contrastive loss in plain words", "", CONTRASTIVE.format(specific=specific)]
    lines += stability_section(data, names)
    lines += LLM_REFLECTION
    return "\n".join(lines).rstrip() + "\n"


def _observations(data, names, baseline, best, rsum, untrained, ks) -> list[str]:
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


def write_summary(out: Path, variants: Mapping[str, Mapping], baseline: str, dataset: Mapping,
                  report: Mapping, ablation_png: Path | None = None,
                  overlay_png: Path | None = None) -> str:
    text = build_summary(variants, baseline, dataset, report, out, ablation_png, overlay_png)
    write_text(out, text)
    return text


def _optimizer(train: Mapping) -> str:
    name = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}.get(train.get("optimizer"), "–")
    return f"{name} (momentum {train.get('momentum')})" if name == "SGD" else name


def _warmup(train: Mapping) -> str:
    if train.get("warmup_steps") is not None:
        return f"{train['warmup_steps']} steps"
    frac = train.get("warmup_fraction")
    return f"{100 * frac:g}% of steps" if frac is not None else "–"


def _hardware(report: Mapping) -> str:
    """GPU name (x count) on CUDA, CPU model and threads otherwise (train_report.hardware)."""
    hw = report.get("hardware") or {}
    if hw.get("kind") == "cuda":
        count = f" x{hw['gpu_count']}" if hw.get("gpu_count", 1) > 1 else ""
        return f"{hw['gpu']}{count} ({hw['gpu_memory_gb']:.0f} GB)"
    if hw.get("cpu"):
        return f"CPU {hw['cpu']}, {hw['torch_threads']} threads of {hw['cpu_cores']} cores"
    return report.get("device", "–")


def _peak_memory(report: Mapping) -> str:
    peak = (report.get("hardware") or {}).get("peak_gpu_memory_gb")
    return f"{peak:.2f} GB" if peak is not None else "– (CPU)"


def _stability_row(name: str, hist: pd.DataFrame) -> list:
    skipped = int(hist["skipped_steps"].sum()) if "skipped_steps" in hist else 0
    restarts = int(hist["restarts"].max()) if "restarts" in hist else 0
    lo = hist["grad_norm_min"] if "grad_norm_min" in hist else hist.get("grad_norm")
    hi = hist["grad_norm_max"] if "grad_norm_max" in hist else hist.get("grad_norm")
    norms = "–" if lo is None or lo.isna().all() else f"{lo.min():.3g} – {hi.max():.3g}"
    last = hist.iloc[-1]
    acc = [_fmt(last.get(c)) for c in ("train_acc_i2t", "train_acc_t2i", "val_acc_i2t",
                                        "val_acc_t2i")]
    return [name, skipped, restarts, norms, _fmt(last["train_loss"], 3),
            _fmt(last["val_loss"], 3), *acc]


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
            _table(["variant", "skipped steps", "restarts", "grad-norm range", "final train loss",
                    "final val loss", "train acc i2t", "train acc t2i", "val acc i2t",
                    "val acc t2i"], rows), ""]


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
