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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cliptune.config.load import UNTRAINED
from cliptune.files.atomic import write_text
from cliptune.reporting.comparison import Comparison, comparison_section
from cliptune.reporting.lab_sections import (
    LLM_REFLECTION,
    hardware_label,
    optimizer_label,
    peak_memory_label,
    stability_section,
    warmup_label,
)
from cliptune.reporting.markdown import fmt, table
from cliptune.reporting.observations import (
    convergence,
    monitor_of,
    observations,
    selection_paragraph,
)
from cliptune.reporting.pretrained_table import pretrained_section
from cliptune.reporting.variant_description import (
    RESNET_COLUMNS,
    describe,
    resnet_columns,
    trains,
)
from cliptune.reporting.zero_shot_section import zero_shot_section

# Published zero-shot anchors (open_clip benchmark table), Karpathy COCO 5k test split.
ANCHORS = {
    "CLIP ViT-B/32 (OpenAI), zero-shot": {
        "i2t_R@1": 50.1, "i2t_R@5": 75.0, "i2t_R@10": 83.5,
        "t2i_R@1": 30.4, "t2i_R@5": 55.9, "t2i_R@10": 66.9,
    },
}
ANCHOR_SPLIT = "Karpathy COCO 5k test (5,000 images, 25,010 captions)"
ANCHOR_IMAGES = 5000

def _load(path) -> dict:
    return json.loads(Path(path).read_text())



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
    # A key only one side has (another model kind's section) is a difference too.
    diff = [f"`{k}={a[k]}`" for k in sorted(a) if k != "name" and (k not in b or a[k] != b[k])]
    return ", ".join(diff) or "–"


INFONCE = """\
Each training batch holds B images and one caption of each. The image tower turns
every image into a vector and the text tower every caption (which towers train and
which stay frozen differs per variant: see the table of variants above), and both
are scaled to unit length, so their dot product is a cosine similarity. For one image
(the **anchor**), its own caption is the **positive** and the other B − 1 captions in
the batch are **negatives**. The loss is a B-way classification: a softmax over the
anchor's similarities to all B captions, divided by the **temperature** τ, should put
its probability on the positive (cross-entropy). The same is done from each caption
towards the B images, and the two directions are averaged (the symmetric InfoNCE loss
of CLIP). A small τ sharpens the softmax so that near misses are punished hard; CLIP
starts at τ = 0.07 and learns it. Larger batches give more negatives per anchor, which
is why contrastive training prefers them."""

HARD_NEGATIVE = """\
The **hard-negative** loss is InfoNCE whose softmax also holds, for every anchor, k
extra negatives taken from an index of the whole training set, embedded with the
current model and rebuilt as configured: `semantic` takes the k captions (images) of
other images most similar to the anchor, `random` draws k of them uniformly (the
control for what the similarity search buys). A hinge on the hardest in-batch
negative (its similarity must stay the margin below the positive's) is added with its
weight."""

TRIPLET = """\
The **triplet** loss is a bidirectional hinge on cosine similarities with in-batch
negatives: the positive's similarity must exceed a negative's by the margin, or the
difference is the loss. `hardest` mining takes each anchor's most similar negative,
`semihard` the hardest one still below the positive within the margin (else the
hardest). It has no softmax and so no temperature."""


def _ks(metrics: Mapping) -> list[int]:
    return sorted({int(k.split("@")[1]) for k in metrics if k.startswith("i2t_R@")})


def _rsum(m: Mapping) -> float:
    """metrics.json's rsum (R@1/5/10 both ways, whatever eval.ks adds)."""
    return float(m["rsum"])


def _rel(path, base_dir: Path) -> str:
    return Path(os.path.relpath(Path(path), base_dir)).as_posix()


@dataclass
class _Run:
    """What every section reads: the artifacts per variant and the ranking by rsum."""
    data: dict
    baseline: str
    dataset: Mapping
    report: Mapping
    base_dir: Path
    untrained: str
    ks: list[int]
    rsum: dict
    best: str | None
    metrics: Mapping  # any variant's metrics: split and gallery size

    @property
    def names(self) -> list[str]:
        return list(self.data)

    @property
    def ref_cfg(self) -> Mapping:
        return self.data[self.baseline]["report"]["config"]


def _collect(variants: Mapping[str, Mapping], baseline: str, dataset: Mapping,
             report: Mapping, out: Path, untrained: str) -> _Run:
    data = {name: {"metrics": _load(paths["metrics"]),
                   "report": _load(paths["train_report"]),
                   "history": pd.read_csv(paths["history"]),
                   "zero_shot": _load(paths["zero_shot"]),
                   "figures": dict(paths["figures"])}
            for name, paths in variants.items()}
    any_metrics = next(iter(data.values()))["metrics"]
    ks = _ks(any_metrics)
    rsum = {n: _rsum(d["metrics"]) for n, d in data.items()}
    ranked = sorted((n for n in data if math.isfinite(rsum[n])), key=lambda n: -rsum[n])
    return _Run(data, baseline, dataset, report, Path(out).parent, untrained, ks, rsum,
                ranked[0] if ranked else None, any_metrics)


def build_summary(variants: Mapping[str, Mapping], baseline: str, dataset: Mapping,
                  report: Mapping, out: Path, ablation_png: Path | None = None,
                  overlay_png: Path | None = None, untrained: str = UNTRAINED,
                  comparison: Comparison | None = None,
                  queries_png: Path | None = None) -> str:
    """Markdown text of the summary, one function per section.

    ``variants[name]`` holds paths: metrics, train_report, history, zero_shot (optional)
    and figures (name -> png, optional; zero-shot ones as ``zero_shot/<task>``);
    ``dataset``: the study's name (``study``) and the dataset's ``name`` and ``source``;
    ``queries_png``: the queries-across-variants figure. ``comparison``: the aggregate's intervals and
    paired differences; without it the summary says that none were computed.
    """
    run = _collect(variants, baseline, dataset, report, out, untrained)
    lines = _header(run)
    lines += ["## Observations", ""]
    lines += [f"- {o}" for o in observations(run.data, run.names, baseline, run.best, run.rsum,
                                             untrained, run.ks, comparison)] + [""]
    lines += _results(run) + _anchors(run)
    lines += comparison_section(comparison) if comparison is not None else []
    lines += pretrained_section({n: d["metrics"] for n, d in run.data.items()},
                                {n: d["report"] for n, d in run.data.items()}, run.ks)
    lines += zero_shot_section(run.names, run.data)
    lines += _figures(run, ablation_png, overlay_png, queries_png)
    lines += _variants(run) + _hyperparameters(run)
    lines += _hardware(run) + _loss_in_words(run)
    lines += stability_section(run.data, run.names) + LLM_REFLECTION
    return "\n".join(lines).rstrip() + "\n"


def _header(run: _Run) -> list[str]:
    m, dataset = run.metrics, run.dataset
    study, name = dataset["study"], dataset["name"]
    title = study if study == name else f"{study} (dataset {name})"
    return [f"# cliptune results: {title}", "",
            f"Dataset `{dataset['name']}` (source: {dataset['source']}), evaluated on "
            f"split `{m['split']}`: {int(m['n_images']):,} images against "
            f"{int(m['n_texts']):,} captions, every caption of every image (image→text: "
            "a hit when any of the image's captions is in the top K; text→image: per caption). "
            "Recall in percent. " + selection_paragraph(run.data), ""]


def _comparable(run: _Run) -> bool:
    return bool(run.report["anchors_comparable"]) and run.dataset["source"] == "coco"


def _results(run: _Run) -> list[str]:
    """The metrics table, with the published anchors as rows when they compare."""
    ks = run.ks
    # mAP / NDCG at the largest K, then over the full ranking; i2t next to t2i
    rank_cols = [f"{d}_{m}@{ks[-1]}" for m in ("mAP", "NDCG") for d in ("i2t", "t2i")] + [
        f"{d}_{m}" for m in ("mAP", "NDCG") for d in ("i2t", "t2i")]
    header = ["variant"] + [f"i2t R@{k}" for k in ks] + [f"t2i R@{k}" for k in ks] + [
        "rsum", "i2t medr", "t2i medr", "i2t MRR", "t2i MRR"] + [
        c.replace("_", " ") for c in rank_cols]
    rows = []
    for n in run.names:
        m = run.data[n]["metrics"]
        mark = " **(best)**" if n == run.best else ""
        mark += " (baseline)" if n == run.baseline and n != "baseline" else ""
        rows.append([f"{n}{mark}"] + [fmt(m[f"i2t_R@{k}"]) for k in ks]
                    + [fmt(m[f"t2i_R@{k}"]) for k in ks]
                    + [fmt(run.rsum[n]), fmt(m["i2t_medr"]), fmt(m["t2i_medr"]),
                       fmt(m["i2t_mrr"], 3), fmt(m["t2i_mrr"], 3)]
                    + [fmt(m[c]) for c in rank_cols])
    if _comparable(run):
        for a, vals in ANCHORS.items():
            rows.append([f"*{a}, published*"] + [fmt(vals.get(f"i2t_R@{k}")) for k in ks]
                        + [fmt(vals.get(f"t2i_R@{k}")) for k in ks]
                        + ["–"] * (5 + len(rank_cols)))
    return ["## Results", "", table(header, rows), "", RESULTS_KEY, ""]


RESULTS_KEY = (
    "rsum = R@1 + R@5 + R@10 of image→text plus the same of text→image (the retrieval "
    "literature's; other `eval.ks` cut-offs are shown but not summed); the best variant, "
    "`ablation.csv` and the bootstrap intervals use the same rsum. mAP@K is the mean over "
    "queries of AP@K, the precision at each hit in the top K averaged over those hits "
    "(torchmetrics' `RetrievalMAP(top_k=K)`); mAP and NDCG without @K rank every candidate "
    "(metrics.json also holds `i2t_mAP_minKR@K`, AP@K over min(K, relevant captions)). "
    "Text→image has one relevant image per caption: its mAP equals its MRR.")


def _anchors(run: _Run) -> list[str]:
    """Where the published anchors come from, or why they do not compare."""
    n_images, split = int(run.metrics["n_images"]), run.metrics["split"]
    if _comparable(run):
        lines = [f"Published anchors are from open_clip's benchmark on the {ANCHOR_SPLIT}."]
        if n_images != ANCHOR_IMAGES:
            lines.append(f"**Warning**: `report.anchors_comparable` is true but this split has "
                         f"{n_images:,} images, not {ANCHOR_IMAGES:,}; the comparison is only "
                         "valid on the Karpathy 5k test split.")
        return lines + [""]
    anchor_ks = [k for k in run.ks if all(f"i2t_R@{k}" in v for v in ANCHORS.values())]
    arows = [[a] + [fmt(v.get(f"{d}_R@{k}")) for d in ("i2t", "t2i") for k in anchor_ks]
             for a, v in ANCHORS.items()]
    return [
        f"Published anchor, **not comparable** with the table above: it is measured on the "
        f"{ANCHOR_SPLIT}, while these results use split `{split}` with {n_images:,} images"
        + (" of a synthetic dataset" if run.dataset["source"] == "demo" else "")
        + ". Recall falls as the gallery grows, so only the same split compares. Set "
        "`report.anchors_comparable: true` when evaluating on that split.",
        "",
        table(["model"] + [f"{d} R@{k}" for d in ("i2t", "t2i") for k in anchor_ks], arows),
        "",
    ]


FIGURE_TITLES = {"text_to_image": "text query → top images",
                 "image_to_text": "image → top captions",
                 "similarity_heatmap": "image-caption similarity"}


def _figure_titles(figs: Mapping) -> dict[str, str]:
    """Titles of a variant's figures: the fixed ones, then one per zero-shot task."""
    titles = {k: t for k, t in FIGURE_TITLES.items() if k in figs}
    titles.update({k: f"zero-shot classification, task `{k.split('/', 1)[1]}`"
                   for k in figs if k.startswith("zero_shot/")})
    return titles


def _figures(run: _Run, ablation_png: Path | None, overlay_png: Path | None,
             queries_png: Path | None = None) -> list[str]:
    """The ablation and overlay plots, the queries across variants, then the best
    variant's sample retrievals."""
    lines = ["## Figures", ""]
    if ablation_png:
        lines += [f"![Recall@K per variant]({_rel(ablation_png, run.base_dir)})", ""]
    if overlay_png:
        lines += [f"![training curves of all variants]({_rel(overlay_png, run.base_dir)})", ""]
    if queries_png:
        lines += ["### The same queries across variants", "",
                  "Rows: the report queries; columns: every variant's top-3 images, each "
                  "ranked by that variant's own towers.", "",
                  f"![queries across variants]({_rel(queries_png, run.base_dir)})", ""]
    shown = run.best or run.baseline
    figs = run.data[shown]["figures"]
    if figs:
        lines += [f"Sample retrievals of the best variant, `{shown}`; every variant's figures "
                  "are in its folder and in the HTML report.", ""]
        for key, title in _figure_titles(figs).items():
            if key in figs:
                lines += [f"### {title}", "",
                          f"![{title}: {shown}]({_rel(figs[key], run.base_dir)})", ""]
    return lines


def _config(run: _Run, name: str) -> Mapping:
    """The resolved config a variant was trained with (its train_report.json)."""
    return run.data[name]["report"]["config"]


def _variants(run: _Run) -> list[str]:
    """What each variant is, from its resolved config (cliptune.reporting.variant_description)."""
    rows = [[f"`{d.name}`", d.model, d.image_tower, d.text_tower, d.loss, d.temperature,
             d.tokenizer] for d in (describe(_config(run, n)) for n in run.names)]
    return ["## Variants and hyperparameters", "",
            table(["variant", "model", "image tower", "text tower", "loss", "temperature",
                   "tokenizer"], rows), ""]


def _hyperparameters(run: _Run) -> list[str]:
    """Training settings per variant; the trunk + head columns are n/a for other kinds."""
    rows = []
    for n in run.names:
        cfg = _config(run, n)
        t = cfg["train"]
        rows.append([
            n, *resnet_columns(cfg), cfg["image_size"], t["batch_size"], f"{t['lr']:g}",
            optimizer_label(t), t["weight_decay"], warmup_label(t), t["grad_clip"],
            f"{run.data[n]['report']['epochs_run']}/{t['epochs']}", t["sampler"],
            t["precision"],
            config_overrides(cfg, run.ref_cfg) if n != run.baseline else "(reference)",
        ])
    return [table(["variant", *RESNET_COLUMNS, "image size", "batch", "lr", "optimizer",
                   "weight decay", "warmup", "grad clip", "epochs run/set", "sampler",
                   "precision", "differs from baseline"], rows), ""]


def _hardware(run: _Run) -> list[str]:
    rows = []
    for n in run.names:
        r = run.data[n]["report"]
        rows.append([n, hardware_label(r), peak_memory_label(r), r["torch"],
                     _duration(r["wall_seconds"]),
                     fmt(r["images_per_s"], 0), f"{r['trainable_parameters']:,}"
                     f" / {r['parameters']:,}",
                     f"{r['train_images']:,} / {r['train_captions']:,}"])
    total = sum(float(run.data[n]["report"]["wall_seconds"]) for n in run.names)
    return ["## Hardware and wall time", "",
            table(["variant", "hardware", "peak GPU memory", "torch", "training wall time",
                    "images/s",
                    "trainable / all parameters", "train images / captions"], rows), "",
            f"Total training time over all variants: {_duration(total)}.", ""]


def _users(run: _Run, loss: str) -> list[str]:
    """The trained variants whose training used ``loss``."""
    return [n for n in run.names
            if trains(_config(run, n)) and _config(run, n)["train"]["loss"] == loss]


def _named(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _loss_in_words(run: _Run) -> list[str]:
    """The losses the trained variants used, explained, with their own settings."""
    contrastive = _users(run, "infonce") + _users(run, "hard_negative")
    triplet = _users(run, "triplet")
    if not contrastive and not triplet:
        return ["## The training loss in plain words", "",
                "No variant was trained (every one has `train.epochs: 0`).", ""]
    lines = ["## The training loss in plain words", ""]
    if contrastive:
        batches = {n: _config(run, n)["train"]["batch_size"] for n in contrastive}
        lines += [INFONCE, "", "Here: " + "; ".join(
            f"{_named(ns)}: {b - 1} negatives per anchor (batch size {b})"
            for b, ns in _group(batches).items()) + ". Temperature per variant: "
            + "; ".join(f"`{n}` {describe(_config(run, n)).temperature}" for n in contrastive)
            + "." + _temperature_moved(run, contrastive), ""]
    hard = _users(run, "hard_negative")
    if hard:
        lines += [HARD_NEGATIVE, "", "Here: " + "; ".join(
            f"`{n}`: {describe(_config(run, n)).loss}" for n in hard) + ".", ""]
    if triplet:
        lines += [TRIPLET, "", "Here: " + "; ".join(
            f"`{n}`: {describe(_config(run, n)).loss}" for n in triplet) + ".", ""]
    return lines


def _group(values: Mapping[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, value in values.items():
        out.setdefault(value, []).append(name)
    return out


def _temperature_moved(run: _Run, names: Sequence[str]) -> str:
    """How far the learned temperature of the best (else the baseline) variant moved."""
    learned = [n for n in names if _config(run, n)["train"]["learnable_temperature"]]
    shown = next((n for n in (run.best, run.baseline) if n in learned
                  and not run.data[n]["history"].empty), None)
    if shown is None:
        return ""
    conv = convergence(run.data[shown]["history"], monitor_of(run.data[shown]["report"]))
    if "temperature_end" not in conv:
        return ""
    return (f" The learned temperature of `{shown}` went from {conv['temperature_start']:.4f} "
            f"to {conv['temperature_end']:.4f}.")


def write_summary(out: Path, variants: Mapping[str, Mapping], baseline: str, dataset: Mapping,
                  report: Mapping, ablation_png: Path | None = None,
                  overlay_png: Path | None = None,
                  comparison: Comparison | None = None,
                  queries_png: Path | None = None) -> str:
    text = build_summary(variants, baseline, dataset, report, out, ablation_png, overlay_png,
                         comparison=comparison, queries_png=queries_png)
    write_text(out, text)
    return text
