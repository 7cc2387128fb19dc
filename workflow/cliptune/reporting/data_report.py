"""Data report: what each split holds and what is wrong with it.

Reads what earlier stages already wrote (captions Parquet, its source.json and
the image-cache index with ``ok``/``problem`` per image), so no image is
decoded twice. Writes ``data_report.json`` (machine-readable) and
``data_report.md`` (for people).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.files.atomic import write_json, write_text
from cliptune.reporting.vocabulary import vocabulary_markdown, vocabulary_report, word_counts

log = logging.getLogger(__name__)

MAX_LISTED = 50  # duplicate/empty examples per split; problem images are all listed


def _stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0}
    return {"min": int(values.min()), "mean": round(float(values.mean()), 2),
            "median": float(np.median(values)), "p95": float(np.percentile(values, 95)),
            "max": int(values.max())}


def _reason(problem: str) -> str:
    return problem.split(":", 1)[0].strip() or "unknown"


def split_report(captions: pd.DataFrame, index: pd.DataFrame, source: dict) -> dict:
    """Counts, caption statistics and problems of one split."""
    texts = captions["caption"].astype(str)
    per_image = captions.groupby("image_id").size()
    words = texts.str.split().str.len().fillna(0).to_numpy(np.int64)
    norm = texts.str.lower().str.strip()
    empty = captions[texts.str.strip() == ""]
    within = captions.assign(norm=norm).duplicated(["image_id", "norm"])
    nonempty = captions.assign(norm=norm)[norm != ""]
    images_per_text = nonempty.groupby("norm")["image_id"].nunique()
    shared = images_per_text[images_per_text > 1].sort_values(ascending=False)
    bad = index[~index["ok"]]
    problems = [{"file_name": r.file_name, "reason": _reason(r.problem), "detail": r.problem}
                for r in bad.itertuples()]
    no_caption = source["images_without_captions"]
    # Repairs of the captions stage (cliptune.data.sources.tidy); empty captions were
    # excluded there, so the Parquet itself holds none.
    cleaning = source["cleaning"]
    dropped_empty = int(cleaning["empty_captions_dropped"])
    empty_names = cleaning["examples"]["empty_caption_images"]
    report = {
        "source_splits": source["source_splits"],
        "images": int(captions["image_id"].nunique()),
        "captions": len(captions),
        "usable_images": int(index["ok"].sum()),
        "problem_images": len(problems),
        "images_in_source": source["images_in_source"],
        "subset": source["subset"],
        "captions_per_image": {str(k): int(v) for k, v in
                               sorted(per_image.value_counts().items())},
        "caption_words": _stats(words),
        "caption_chars": _stats(texts.str.len().to_numpy(np.int64)),
        "empty_captions": len(empty) + dropped_empty,
        "empty_caption_images": (empty_names + empty["file_name"].astype(str).tolist())[
            :MAX_LISTED],
        "cleaning": cleaning,
        "selection_holdout": source["selection_holdout"],
        "duplicate_captions_within_image": int(within.sum()),
        "captions_shared_by_several_images": int(len(shared)),
        "most_shared_captions": [{"caption": t, "images": int(n)}
                                 for t, n in shared.head(10).items()],
        "images_without_captions": len(no_caption),
        "images_without_captions_list": no_caption[:MAX_LISTED],
        "problem_reasons": dict(sorted(pd.Series([p["reason"] for p in problems],
                                                 dtype=object).value_counts().items())),
        "problems": problems,
        "notes": source["notes"],
    }
    if "use_restval" in source:
        report["use_restval"] = source["use_restval"]
    return report


def build_data_report(splits: list[str], captions: list[Path], sources: list[Path],
                      indexes: list[Path], json_out: Path, md_out: Path,
                      dataset: str = "", image_size: int | None = None) -> dict:
    report: dict = {"dataset": dataset, "image_size": image_size, "splits": {}}
    files: dict[str, set[str]] = {}
    all_words: Counter = Counter()
    for split, cap_path, src_path, idx_path in zip(splits, captions, sources, indexes,
                                                   strict=True):
        caps = pd.read_parquet(cap_path)
        index = pd.read_parquet(idx_path)
        source = json.loads(Path(src_path).read_text())
        report["source"] = source["source"]
        report["splits"][split] = split_report(caps, index, source)
        words = word_counts(caps["caption"])
        report["splits"][split]["vocabulary"] = vocabulary_report(words)
        all_words += words
        files[split] = set(caps["file_name"].astype(str))
    names = list(files)
    report["images_in_two_splits"] = {
        f"{a}/{b}": len(files[a] & files[b])
        for i, a in enumerate(names) for b in names[i + 1:]
    }
    # Over every split together: the selection holdout and val add words train lacks.
    report["vocabulary"] = vocabulary_report(all_words)
    per = report["splits"].values()
    report["totals"] = {k: sum(s[k] for s in per) for k in
                        ("images", "captions", "usable_images", "problem_images",
                         "empty_captions", "images_without_captions")}
    for pair, n in report["images_in_two_splits"].items():
        if n:
            log.warning("%d images appear in both splits of %s: evaluation leaks training "
                        "data", n, pair)
    write_json(json_out, report)
    write_text(md_out, render_markdown(report))
    t = report["totals"]
    log.info("data report: %d images, %d captions, %d problem images -> %s", t["images"],
             t["captions"], t["problem_images"], json_out)
    return report


CLEANING_TEXT = {
    "empty_captions_dropped": "empty or whitespace-only captions excluded",
    "repeated_captions_dropped": "annotations listed twice, kept once",
    "caption_ids_reassigned": "captions that reused another caption's id, given fresh ids",
    "images_merged": "repeated image entries (one file under several ids) merged",
}


def _md_cleaning(cleaning: dict) -> list[str]:
    """One line per repair the captions stage made (nothing when the file was clean)."""
    examples = cleaning["examples"]
    lines = []
    for key, text in CLEANING_TEXT.items():
        if cleaning[key]:
            ex = examples.get(key, [])  # examples of the repairs that name offenders
            lines.append(f"- {text}: {cleaning[key]}"
                         + (f" (e.g. {', '.join(map(str, ex))})" if ex else ""))
    return lines


def _md_stats(s: dict) -> str:
    return f"{s['min']} / {s['mean']} / {s['median']} / {s['p95']} / {s['max']}"


def render_markdown(report: dict) -> str:
    lines = [f"# Data report: {report['dataset']} ({report['source']})", ""]
    lines += ["| split | images | captions | usable | problem images | no caption | "
              "empty captions | words min/mean/median/p95/max |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for split, s in report["splits"].items():
        lines.append(f"| {split} | {s['images']} | {s['captions']} | {s['usable_images']} | "
                     f"{s['problem_images']} | {s['images_without_captions']} | "
                     f"{s['empty_captions']} | {_md_stats(s['caption_words'])} |")
    lines.append("")
    for split, s in report["splits"].items():
        lines += [f"## {split}", ""]
        lines.append(f"- source splits: {', '.join(map(str, s['source_splits'] or []))}"
                     + (f" (restval {'used' if s['use_restval'] else 'not used'})"
                        if "use_restval" in s else ""))
        hold = s["selection_holdout"]
        if hold:
            lines.append(f"- selection holdout (dataset.selection): {hold['images']} train images "
                         f"(seed {hold['seed']}) "
                         + ("select the model here" if hold["keep"] == "holdout" else
                            "are held out of this split and select the model"))
        sub = s["subset"]
        if sub["images"] is not None:
            lines.append(f"- subset: {sub['images_kept']} of {s['images_in_source']} images "
                         f"({sub['mode']}, seed {sub['seed']})")
        hist = ", ".join(f"{k}: {v}" for k, v in s["captions_per_image"].items())
        lines.append(f"- captions per image (count: images): {hist}")
        lines.append(f"- caption characters min/mean/median/p95/max: "
                     f"{_md_stats(s['caption_chars'])}")
        lines += vocabulary_markdown(s["vocabulary"]) if "vocabulary" in s else []
        lines.append(f"- duplicate captions within an image: "
                     f"{s['duplicate_captions_within_image']}; caption texts shared by several "
                     f"images: {s['captions_shared_by_several_images']}")
        for d in s["most_shared_captions"][:5]:
            lines.append(f"  - \"{d['caption']}\" ({d['images']} images)")
        lines += _md_cleaning(s["cleaning"])
        if s["images_without_captions"]:
            lines.append(f"- images without captions (left out): "
                         f"{', '.join(s['images_without_captions_list'][:10])}"
                         + (" ..." if s["images_without_captions"] > 10 else ""))
        for note in s["notes"][:10]:
            lines.append(f"- note: {note}")
        if s["problems"]:
            lines += ["", f"Problem images ({s['problem_images']}, excluded):", "",
                      "| file | reason | detail |", "|---|---|---|"]
            lines += [f"| {p['file_name']} | {p['reason']} | {p['detail'].replace('|', '/')} |"
                      for p in s["problems"]]
        lines.append("")
    if "vocabulary" in report:
        lines += ["## All splits", "", *vocabulary_markdown(report["vocabulary"]), ""]
    overlap = {k: v for k, v in report["images_in_two_splits"].items() if v}
    lines.append("Images in two splits: " + (", ".join(f"{k}: {v}" for k, v in overlap.items())
                                             if overlap else "none"))
    return "\n".join(lines) + "\n"
