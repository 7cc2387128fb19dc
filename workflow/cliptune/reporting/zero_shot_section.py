"""The zero-shot section of results/summary.md: one table per configured task, with
accuracy only where the task has labels (zero_shot.json of every variant)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cliptune.reporting.markdown import fmt, table


def task_names(names: Sequence[str], data: Mapping[str, Mapping]) -> list[str]:
    """Zero-shot tasks in the configured order (each zero_shot.json's task_order)."""
    tasks: dict[str, None] = {}
    for n in names:
        tasks.update(dict.fromkeys(data[n]["zero_shot"]["task_order"]))
    return list(tasks)


def zero_shot_section(names: Sequence[str], data: Mapping[str, Mapping]) -> list[str]:
    """One table per zero-shot task; a task without labels says so (no accuracy).
    ``data``: variant -> its loaded artifacts (``zero_shot`` = zero_shot.json)."""
    tasks = task_names(names, data)
    if not tasks:
        return []
    lines = ["## Zero-shot classification", "",
             "Each task's class prompts are ensembled over its templates; an image counts as "
             "correct at top-K when one of its K most probable classes is present in it.", ""]
    for task in tasks:
        per = {n: data[n]["zero_shot"]["tasks"][task] for n in names
               if task in data[n]["zero_shot"]["tasks"]}
        first = next(iter(per.values()))
        lines += [f"### Task `{task}` ({len(first['classes'])} classes)", ""]
        if first["labels"] == "none":
            lines += ["No labels: this task has no ground truth, so no accuracy is reported; "
                      "its figure shows each variant's class probabilities.", ""]
            continue
        rows = [[n, fmt(acc["top1_accuracy"]), fmt(acc["chance_top1_accuracy"]),
                 fmt(acc["top5_accuracy"]), fmt(acc["mAP"]), acc["n_images"]]
                for n, r in per.items() if "top1_accuracy" in (acc := r["accuracy"] or {})]
        lines += [f"Accuracy over {first['accuracy_over']}.", ""]
        lines += [table(["variant", "top-1 (%)", "top-1 by chance (%)", "top-5 (%)",
                         "class mAP (%)", "images"], rows), ""] if rows else [
            "No evaluated image carries any of these labels, so no accuracy.", ""]
    return lines
