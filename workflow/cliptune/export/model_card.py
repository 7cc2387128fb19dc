"""The exported folder's README.md: a Hugging Face model card whose every number is
read, by key, from the run's own files (metrics.json, train_report.json, ablation.csv,
paired_vs_baseline.csv, data_report.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from cliptune.evaluation.retrieval_metrics import RSUM_KS

DIRECTIONS = {"i2t": "image → text", "t2i": "text → image"}


@dataclass(frozen=True)
class RunFiles:
    """What a finished variant left behind, as the card reads it."""

    metrics: Path  # the variant's metrics.json (reported split)
    train_report: Path  # the variant's train_report.json
    ablation: Path  # ablation.csv: bootstrap interval of every R@K per variant
    paired: Path  # paired_vs_baseline.csv: variant - baseline on the same resamples
    data_report: Path  # data_report.json: split sizes


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _variant_row(frame: pd.DataFrame, variant: str, path: Path) -> pd.Series:
    rows = frame[frame["variant"] == variant]
    if len(rows) != 1:
        raise ValueError(f"{path} has {len(rows)} rows for variant {variant!r}; rerun the "
                         "aggregate rule (snakemake results/ablation.csv)")
    return rows.iloc[0]


def _pct(x: float) -> str:
    return f"{x:.1f}"


def describe_model(variant: dict) -> dict:
    """Towers and what trained, in words, from the resolved variant config."""
    mcfg = variant["model"]
    if mcfg["kind"] == "resnet":
        head = mcfg["head"]
        trunk = ("frozen" if mcfg["freeze_backbone"] else
                 f"last {mcfg['trainable_stages']} stage(s) trained"
                 if mcfg["trainable_stages"] is not None else "fine-tuned")
        te = variant["text_encoder"]
        return {
            "image": f"{mcfg['backbone']} trunk ({mcfg['weights'] or 'random init'}, {trunk}), "
                     f"{mcfg['pooling']} pooling, {head['depth']}-layer MLP head "
                     f"(hidden {head['hidden_dim']}, norm {head['norm']})",
            "text": f"{te['model']} (frozen, {te['pooling']} pooling, max {te['max_length']} "
                    "tokens)",
            "trained": "image trunk and head" if trunk != "frozen" else "image head only",
        }
    if mcfg["kind"] == "dual_encoder":
        d = mcfg["dual_encoder"]
        v, t = d["vision"], d["text"]
        return {
            "image": f"ViT from scratch (patch {v['patch_size']}, width {v['width']}, depth "
                     f"{v['depth']}, {v['heads']} heads)",
            "text": f"text transformer from scratch (width {t['width']}, depth {t['depth']}, "
                    f"{t['heads']} heads, {t['max_length']} tokens)",
            "trained": f"both towers from random init, {d['embed_dim']}-d joint space",
        }
    c = mcfg["clip"]
    lora = [k for k in ("text", "vision") if c["lora"][k]]
    if lora:
        trained = (f"LoRA adapters (r {c['lora']['r']}, alpha {c['lora']['alpha']}) on the "
                   f"{' and '.join(lora)} tower(s), merged into the weights")
    elif variant["train"]["epochs"] == 0:
        trained = "nothing (the pretrained checkpoint, zero-shot)"
    else:
        locked = [t for t, k in (("image", "lock_image"), ("text", "lock_text")) if c[k]]
        trained = ("full fine-tuning" + (f", {' and '.join(locked)} tower locked"
                                         if locked else ""))
    return {"image": f"CLIP vision tower of {c['model']}",
            "text": f"CLIP text tower of {c['model']}", "trained": trained}


def results_table(variant: str, metrics: dict, ablation: pd.Series, ks: list[int]) -> str:
    lines = ["| K | " + " | ".join(f"{name} R@K (%) [interval]" for name in DIRECTIONS.values())
             + " |", "|---|---|---|"]
    for k in ks:
        cells = []
        for d in DIRECTIONS:
            name = f"{d}_R@{k}"
            cells.append(f"{_pct(metrics[name])} [{_pct(ablation[name + '_lo'])}, "
                         f"{_pct(ablation[name + '_hi'])}]")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append(f"\nrsum {_pct(ablation['rsum'])} [{_pct(ablation['rsum_lo'])}, "
                 f"{_pct(ablation['rsum_hi'])}]")
    return "\n".join(lines)


def paired_table(variant: str, baseline: str, paired: pd.DataFrame) -> str:
    if variant == baseline:
        return (f"This variant is the study's baseline ({baseline}); the other variants are "
                "compared with it.")
    rows = paired[paired["variant"] == variant]
    if rows.empty:
        raise ValueError(f"paired_vs_baseline.csv has no row for {variant!r}; rerun the "
                         "aggregate rule")
    conf = rows["confidence"].iloc[0]
    lines = [f"Difference to the baseline `{baseline}` on the same bootstrap resamples "
             f"({rows['resamples'].iloc[0]} resamples, {conf:.0%} interval):", "",
             "| metric | difference (points) | interval | excludes 0 |", "|---|---|---|---|"]
    for _, r in rows.iterrows():
        lines.append(f"| {r['metric']} | {r['diff']:+.1f} | [{r['lo']:+.1f}, {r['hi']:+.1f}] "
                     f"| {'yes' if bool(r['excludes_zero']) else 'no'} |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def _hardware(report: dict) -> str:
    hw = report["hardware"]
    if hw["kind"] == "cuda":
        return f"{hw['gpu_count']}x {hw['gpu']} ({hw['gpu_memory_gb']} GB)"
    return f"{hw['cpu']} ({hw['torch_threads']} threads)"


def front_matter(variant: dict, metrics: dict, data: dict, library: str, ks: list[int],
                 baseline_model: str | None) -> str:
    split = metrics["reported_on"]["split"]
    meta: dict = {
        "library_name": library,
        "tags": list(dict.fromkeys(["cliptune", "clip", "image-text-retrieval",
                                    variant["model"]["kind"]])),
        "datasets": [data["dataset"]],
        "pipeline_tag": ("zero-shot-image-classification" if library == "transformers"
                         else "feature-extraction"),
    }
    # The hub's base_model names a hub id; a local checkpoint folder is named in the text.
    if baseline_model and not Path(baseline_model).expanduser().exists():
        meta["base_model"] = baseline_model
    meta["model-index"] = [{"name": variant["name"], "results": [{
        "task": {"type": "image-text-retrieval", "name": "image-text retrieval"},
        "dataset": {"name": data["dataset"], "type": data["source"], "split": split},
        "metrics": [{"type": f"recall_at_{k}_{d}", "name": f"{label} R@{k}",
                     "value": round(float(metrics[f"{d}_R@{k}"]), 2)}
                    for d, label in DIRECTIONS.items() for k in ks],
    }]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def render_card(variant: dict, baseline: str, files: RunFiles, library: str,
                contents: list[str], usage: str, notes: list[str]) -> str:
    """The card's Markdown. ``contents``: what the folder holds, one line each;
    ``usage``: a short Python snippet for that folder; ``notes``: preprocessing and
    export-check lines."""
    name = variant["name"]
    metrics = _json(files.metrics)
    report = _json(files.train_report)
    data = _json(files.data_report)
    ablation = _variant_row(pd.read_csv(files.ablation), name, files.ablation)
    paired = pd.read_csv(files.paired)
    # The cut-offs ablation.csv carries intervals for (RSUM_KS) that evaluation reported.
    ks = sorted(set(variant["eval"]["ks"]) & set(RSUM_KS))
    model = describe_model(variant)
    tcfg = variant["train"]
    base = variant["model"]["clip"]["model"] if variant["model"]["kind"] == "clip" else None
    reported = metrics["reported_on"]
    selected = report["selected_on"]
    split_rows = "\n".join(f"| {s} | {v['images']} | {v['captions']} |"
                           for s, v in data["splits"].items())
    temp = (f"{metrics['temperature']:.4f} "
            f"({'learned' if tcfg['learnable_temperature'] else 'fixed'}"
            + (", unused by the triplet loss)" if tcfg["loss"] == "triplet" else ")"))
    parts = [
        front_matter(variant, metrics, data, library, ks, base),
        f"# {name} — an image-text retrieval model trained with cliptune\n",
        f"A `{variant['model']['kind']}` variant of the cliptune study on **{data['dataset']}** "
        f"(source `{data['source']}`), exported from its `model.safetensors`.\n",
        "## Model\n",
        f"- Image tower: {model['image']}",
        f"- Text tower: {model['text']}",
        f"- Trained: {model['trained']}; {report['trainable_parameters']:,} of "
        f"{report['parameters']:,} parameters trainable",
        f"- Loss: `{tcfg['loss']}`; temperature {temp}",
        f"- Input: {variant['image_size']} px images\n",
        "## Training data\n",
        "| split | images | captions |", "|---|---|---|", split_rows, "",
        f"Trained on {report['train_images']} images ({report['train_captions']} captions). "
        f"The saved epoch was selected on the `{selected['split']}` split "
        f"({selected['images']} images, monitor `{selected['monitor']}`); the numbers below "
        f"are reported on `{reported['split']}` ({reported['images']} images), which "
        "selection never saw.\n",
        "## Results\n",
        f"Recall@K in percent on `{reported['split']}`, with the bootstrap interval over "
        "images (`ablation.csv`):\n",
        results_table(name, metrics, ablation, ks), "",
        paired_table(name, baseline, paired), "",
        "## Training\n",
        f"- {report['epochs_run']} epoch(s) run, best epoch {report['best_epoch']}",
        f"- Training time: {_duration(report['wall_seconds'])} on {report['device']}, "
        f"{_hardware(report)}, torch {report['torch']}\n",
        "## Files\n", *[f"- {line}" for line in contents], "",
        "## Usage\n", "```python", usage.strip(), "```\n",
        "## Preprocessing and export check\n", *[f"- {line}" for line in notes], "",
        "## Intended use and limits\n",
        f"- Intended for image-text retrieval and zero-shot matching in the domain of "
        f"{data['dataset']}; the numbers above hold for that split only.",
        "- The model inherits the biases of its training captions and of any pretrained "
        "weights it starts from; it is not evaluated for any decision about people.",
        "- Small evaluation splits give wide intervals: compare variants by the paired "
        "difference, not by the point estimates.",
        "",
    ]
    return "\n".join(parts)
