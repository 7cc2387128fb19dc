"""Named zero-shot tasks (``report.zero_shot.tasks``), resolved and checked at parse time.

Each task has its own classes, its own label source (cliptune.evaluation.zero_shot_labels)
and optionally its own templates; each gets its own figure
(``figures/zero_shot/<task>.png``) and its own accuracy where labels exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cliptune.config.load import ConfigError
from cliptune.evaluation.prompts import ClassName, check_templates, class_name
from cliptune.evaluation.zero_shot_labels import LABEL_SOURCES, demo_vocabulary

# MS COCO's 80 object categories (instances_*.json order): `classes: null`.
COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[ClassName, ...]
    labels: str  # one of LABEL_SOURCES
    templates: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]


def default_tasks(source: str) -> dict[str, dict]:
    """``tasks: null``: one task, ``objects``, labelled as well as the source allows."""
    labels = {"demo": "demo", "coco": "coco"}.get(source, "captions")
    return {"objects": {"classes": None, "labels": labels}}


def _default_classes(source: str) -> list[str]:
    if source == "demo":
        from cliptune.demo.scenes import SHAPES

        return list(SHAPES)
    return list(COCO_CATEGORIES)


def resolve_tasks(zero_shot: Mapping, source: str) -> dict[str, Task]:
    """``report.zero_shot`` -> {task name: Task}; a ConfigError names what to change."""
    specs = zero_shot["tasks"] or default_tasks(source)
    return {name: _task(name, spec, zero_shot["templates"], source)
            for name, spec in specs.items()}


def _task(name: str, spec: Mapping, shared_templates, source: str) -> Task:
    where = f"report.zero_shot.tasks.{name}"
    labels = spec["labels"]
    if labels not in LABEL_SOURCES:  # the schema says so too; a clear error for callers
        raise ConfigError(f"config error: {where}.labels = {labels!r}; use one of "
                          f"{list(LABEL_SOURCES)}")
    try:
        classes = tuple(class_name(c) for c in spec.get("classes") or _default_classes(source))
        templates = tuple(check_templates(spec.get("templates") or shared_templates,
                                          f"{where}.templates"))
    except ValueError as exc:
        raise ConfigError(f"config error: {where}: {exc}") from exc
    dupes = sorted({c.name for c in classes if [d.name for d in classes].count(c.name) > 1})
    if dupes or len(classes) < 2:
        raise ConfigError(f"config error: {where}.classes needs at least two distinct classes"
                          + (f"; {dupes} appear twice" if dupes else ""))
    _check_labels(where, labels, classes, source)
    return Task(name, classes, labels, templates)


def _check_labels(where: str, labels: str, classes: tuple[ClassName, ...], source: str) -> None:
    if labels in ("coco", "demo") and source != labels:
        raise ConfigError(
            f"config error: {where}.labels: {labels} needs dataset.source: {labels} (this "
            f"dataset is {source}); use labels: captions (caption mentions) or none")
    vocab = set(COCO_CATEGORIES) if labels == "coco" else (
        demo_vocabulary() if labels == "demo" else None)
    unknown = [c.bare for c in classes if vocab is not None and c.bare.lower() not in vocab]
    if unknown:
        raise ConfigError(
            f"config error: {where}: labels: {labels} cannot label {unknown}; name classes "
            f"it knows, e.g. {sorted(vocab)[:8]} (or use labels: captions / none)")


def label_file(cfg: Mapping, split: str, tasks: Mapping[str, Task]) -> str:
    """The ground-truth file the tasks labelled ``coco`` or ``demo`` read ("" when none
    is): COCO's object annotations, or the demo generator's scenes. Evaluation reads it;
    label_input is what the evaluate rule waits for."""
    from cliptune.data.sources.captions import source_split
    from cliptune.evaluation.zero_shot_labels import demo_scenes_json, instances_json

    # labels: coco needs source coco and labels: demo source demo (_check_labels): one file.
    sources = {t.labels for t in tasks.values()} & {"coco", "demo"}
    if not sources:
        return ""
    dataset = cfg["dataset"]
    folder_split = source_split(dataset, split)
    if sources == {"demo"}:
        return str(demo_scenes_json(dataset, folder_split))
    return str(instances_json(dataset, folder_split))


def label_input(cfg: Mapping, split: str, tasks: Mapping[str, Task]) -> dict[str, str]:
    """Snakemake input of the tasks' ground truth: the demo generator's scenes file (a
    demo_dataset output); COCO's instances json itself, or, when downloading, the
    extracted annotations zip's completion marker (the json is in that zip). A missing
    COCO file is an error at parse time that says where it goes, never a silently
    label-free task."""
    from cliptune.data.fetch.coco import ANNOTATIONS_ZIP, marker_path

    path = label_file(cfg, split, tasks)
    if not path or cfg["dataset"]["source"] == "demo":
        return {"labels": path} if path else {}
    if cfg["dataset"]["download"]:
        return {"labels": str(marker_path(cfg["dataset"]["root"], ANNOTATIONS_ZIP))}
    if not Path(path).is_file():
        coco = [t.name for t in tasks.values() if t.labels == "coco"]
        raise ConfigError(
            f"config error: report.zero_shot.tasks {coco} use labels: coco, which reads {path} "
            f"(in COCO's {ANNOTATIONS_ZIP}); unzip it into {Path(path).parent} or set those "
            "tasks' labels to captions or none")
    return {"labels": path}
