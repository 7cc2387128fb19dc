"""Readers for the caption formats people actually have, all into one table.

Every reader returns a :class:`SourceTable`: one row per caption with the
columns of :data:`cliptune.data.sources.captions.COLUMNS` (``split`` holding the *source*
split label, e.g. Karpathy's ``restval``) plus the images that have no
caption, which the data report lists. ``file_name`` is relative to the
dataset root, or absolute when the source gives an absolute path (the image
cache joins ``root / file_name``, which keeps an absolute path as is).

Formats without numeric ids get stable 56-bit ids hashed from the image path
(and caption position), so ids never depend on which other files exist.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.data.sources.table import (
    DatasetFormatError,
    SourceTable,
    assign_holdout,
    caption_frame,
    check_one_split_per_image,
    clean_caption,
    load_json,
    needs_holdout,
    stable_id,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Column names tried, in order, when dataset.columns does not name them.
IMAGE_COLUMNS = ("image_path", "image", "file_name", "filename", "filepath", "path",
                 "image_name")
CAPTION_COLUMNS = ("caption", "text", "comment", "sentence", "raw")
SPLIT_COLUMNS = ("split",)
KARPATHY_SOURCES = ("karpathy_coco", "flickr30k")


# --------------------------------------------------------------------------- Karpathy


def read_karpathy(path: Path) -> SourceTable:
    """Karpathy's dataset_coco.json / dataset_flickr30k.json (caption_datasets.zip).

    Each image has ``split`` (train/restval/val/test), ``filename``, for COCO
    ``filepath`` (train2014/val2014) and ``cocoid``, and ``sentences`` with
    ``raw`` text and a ``sentid``.
    """
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(
            f"{path} is not a Karpathy split file: expected an object with an 'images' list "
            "(dataset_coco.json or dataset_flickr30k.json from caption_datasets.zip)"
        )
    rows, no_caption = [], {}
    for n, img in enumerate(data["images"]):
        try:
            label = str(img["split"])
            name = f"{img['filepath']}/{img['filename']}" if img.get("filepath") else str(
                img["filename"])
            image_id = int(img["cocoid"] if "cocoid" in img else img["imgid"])
            sentences = img.get("sentences") or []
            for s in sentences:
                text = s["raw"] if "raw" in s else " ".join(s.get("tokens", []))
                where = f"{path}: image entry {n} ({name}) sentence {s.get('sentid')}"
                rows.append((image_id, int(s["sentid"]), clean_caption(text, where), name,
                             label))
        except DatasetFormatError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetFormatError(
                f"{path}: image entry {n} lacks or mangles {exc}; expected split, filename, "
                "cocoid or imgid, and sentences with raw and sentid"
            ) from None
        if not sentences:
            no_caption.setdefault(label, []).append(name)
    return SourceTable(caption_frame(rows), no_caption)


# --------------------------------------------------------------------------- Flickr30k CSV


def read_flickr_results(path: Path) -> SourceTable:
    """The widely shared Flickr30k ``results.csv``: ``image_name| comment_number| comment``.

    It has no split column (the caller holds images out) and at least one known
    copy has a row whose ``comment_number`` and comment lost their separator,
    which is repaired here rather than dropped.
    """
    rows, no_caption, notes = [], {}, []
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        if "|" not in header:
            raise DatasetFormatError(
                f"{path}: expected the Flickr30k results.csv header "
                "'image_name| comment_number| comment' (pipe-separated)"
            )
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.rstrip("\n").split("|", 2)]
            if len(parts) == 2:  # "img.jpg| 4 A dog ..." -> number glued to the comment
                head, _, rest = parts[1].partition(" ")
                if not head.isdigit():
                    raise DatasetFormatError(f"{path}:{lineno}: cannot parse {line.strip()!r}")
                parts = [parts[0], head, rest]
                notes.append(f"{path.name}:{lineno}: repaired a missing '|' separator")
            name, number, comment = parts
            if not number.isdigit():
                raise DatasetFormatError(
                    f"{path}:{lineno}: comment_number {number!r} is not a number")
            stem = Path(name).stem
            image_id = int(stem) if stem.isdigit() and len(stem) < 18 else stable_id(name)
            rows.append((image_id, stable_id(f"{name}#{number}"), clean_caption(comment), name,
                         ""))
    df = caption_frame(rows)
    for note in notes:
        log.warning(note)
    return SourceTable(df, no_caption, notes)


# --------------------------------------------------------------------------- user JSON


def read_user_json(path: Path) -> SourceTable:
    """``{"splits": {"train": [{"image_path", "caption", "id"}], "val": [...], ...}}``.

    An entry may give ``captions`` (a list) instead of ``caption``; several
    entries may share an image. An entry without any caption marks an image
    with no caption. Integer ``id`` values are kept as caption ids when they
    are unique; otherwise ids are hashed from the image path and position.
    """
    data = load_json(path)
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise DatasetFormatError(
            f"{path}: expected {{\"splits\": {{\"train\": [{{\"image_path\": ..., "
            "\"caption\": ..., \"id\": ...}], \"val\": [...]}}"
        )
    rows, no_caption = [], {}
    for label, entries in splits.items():
        if not isinstance(entries, list):
            raise DatasetFormatError(f"{path}: splits.{label} must be a list of entries")
        ids = [e.get("id") for e in entries if isinstance(e, dict)]
        keep_ids = (all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
                    and len(set(ids)) == len(ids) == len(entries))
        has_caption: dict[str, bool] = {}
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry.get("image_path"):
                raise DatasetFormatError(
                    f"{path}: splits.{label}[{n}] needs an 'image_path' (and a 'caption')")
            name = str(entry["image_path"])
            texts = entry.get("captions")
            if texts is None:
                texts = [] if entry.get("caption") is None else [entry["caption"]]
            if not isinstance(texts, list):
                raise DatasetFormatError(f"{path}: splits.{label}[{n}].captions must be a list")
            has_caption.setdefault(name, False)
            for k, text in enumerate(texts):
                cid = entry["id"] if keep_ids and len(texts) == 1 else stable_id(
                    f"{label}/{n}/{k}")
                where = f"{path}: splits.{label}[{n}] caption {k}"
                rows.append((stable_id(name), cid, clean_caption(text, where), name, label))
                has_caption[name] = True
        missing = [name for name, ok in has_caption.items() if not ok]
        if missing:
            no_caption[label] = missing
    return SourceTable(caption_frame(rows), no_caption)


# --------------------------------------------------------------------------- folder


def read_folder(root: Path, labels: Iterable[str]) -> SourceTable:
    """``root/<split>/**/<image>`` with a sidecar ``<image stem>.txt``, one caption a line.

    Blank lines are not captions. Images without a sidecar (or with only blank
    lines) are images with no caption; a ``.txt`` without an image is noted.
    """
    rows, no_caption, notes = [], {}, []
    for label in labels:
        folder = Path(root) / label
        if not folder.is_dir():
            raise DatasetFormatError(f"missing split folder {folder}/ (dataset.source: folder)")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        _check_one_image_per_sidecar(images, root)
        stems = {p.with_suffix("") for p in images}
        for txt in files:
            if txt.suffix.lower() == ".txt" and txt.with_suffix("") not in stems:
                notes.append(f"caption file without an image: {txt.relative_to(root)}")
        for img in images:
            name = img.relative_to(root).as_posix()
            sidecar = img.with_suffix(".txt")
            lines = []
            if sidecar.is_file():
                lines = [ln for ln in sidecar.read_text(encoding="utf-8").splitlines()
                         if ln.strip()]
            if not lines:
                no_caption.setdefault(label, []).append(name)
            for k, text in enumerate(lines):
                rows.append((stable_id(name), stable_id(f"{name}#{k}"), clean_caption(text),
                             name, label))
    for note in notes[:20]:
        log.warning(note)
    return SourceTable(caption_frame(rows), no_caption, notes)


def _check_one_image_per_sidecar(images: list[Path], root: Path) -> None:
    """``a.jpg`` and ``a.png`` would both read ``a.txt``: two images, one set of captions."""
    by_stem: dict[Path, list[str]] = {}
    for img in images:
        by_stem.setdefault(img.with_suffix(""), []).append(img.relative_to(root).as_posix())
    clash = [names for names in by_stem.values() if len(names) > 1]
    if clash:
        shown = "; ".join(" and ".join(names) for names in clash[:5])
        raise DatasetFormatError(
            f"{len(clash)} image name(s) differ only in the extension and would share one "
            f"caption file ({shown}); rename one of each (the sidecar is <image stem>.txt)"
        )


# --------------------------------------------------------------------------- CSV / Parquet


def _pick_column(df: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...], what: str,
                 path: Path, required: bool = True) -> str | None:
    if wanted:
        if wanted not in df.columns:
            raise DatasetFormatError(
                f"{path}: dataset.columns.{what} = {wanted!r} is not a column; columns are "
                f"{list(df.columns)}"
            )
        return wanted
    lower = {str(c).lower(): c for c in df.columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    if required:
        raise DatasetFormatError(
            f"{path}: no {what} column (tried {', '.join(candidates)}); name it with "
            f"dataset.columns.{what}. Columns are {list(df.columns)}"
        )
    return None


def read_table(path: Path, columns: dict) -> SourceTable:
    """CSV/TSV/Parquet, one row per caption: image path, caption, optional split.

    Rows with an empty (NaN) caption are images with no caption unless the
    same image has another row; an empty string is an empty caption.
    """
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                         keep_default_na=False, na_values=[""], quoting=csv.QUOTE_MINIMAL)
    else:
        raise DatasetFormatError(
            f"{path}: dataset.source 'table' reads .csv, .tsv or .parquet, not {suffix!r}")
    image_col = _pick_column(df, columns.get("image"), IMAGE_COLUMNS, "image", path)
    caption_col = _pick_column(df, columns.get("caption"), CAPTION_COLUMNS, "caption", path)
    split_col = _pick_column(df, columns.get("split"), SPLIT_COLUMNS, "split", path,
                             required=False)
    names = df[image_col]
    if names.isna().any():
        raise DatasetFormatError(
            f"{path}: row {int(names.isna().to_numpy().argmax())} has no {image_col!r}")
    names = names.astype(str)
    labels = df[split_col].astype(str) if split_col else pd.Series([""] * len(df))
    texts = df[caption_col]
    rows, no_caption = [], {}
    counter: dict[str, int] = {}
    for row, (name, text, label) in enumerate(zip(names, texts, labels, strict=True)):
        k = counter.get(name, 0)
        counter[name] = k + 1
        if text is None or (isinstance(text, float) and np.isnan(text)):
            no_caption.setdefault(label, []).append(name)
            continue
        where = f"{path}: row {row} ({caption_col!r})"
        rows.append((stable_id(name), stable_id(f"{name}#{k}"), clean_caption(text, where),
                     name, label))
    df_out = caption_frame(rows)
    captioned = set(df_out["file_name"])
    no_caption = {lab: sorted(set(v) - captioned) for lab, v in no_caption.items()}
    no_caption = {lab: v for lab, v in no_caption.items() if v}
    return SourceTable(df_out, no_caption)


def read_source(spec: dict) -> SourceTable:
    """Read the whole source described by a dataset spec (see captions.split_spec)."""
    source = spec["source"]
    ann = Path(spec["annotations"]) if spec.get("annotations") else None
    if source in KARPATHY_SOURCES:
        if ann is None:
            raise DatasetFormatError(f"dataset.source {source!r} needs dataset.annotations")
        if ann.suffix.lower() == ".json":
            table = read_karpathy(ann)
        elif source == "flickr30k":
            table = read_flickr_results(ann)
        else:
            raise DatasetFormatError(
                f"{ann}: karpathy_coco reads dataset_coco.json; got {ann.suffix!r}")
    elif source == "json":
        table = read_user_json(ann)
    elif source == "table":
        table = read_table(ann, spec.get("columns") or {})
    elif source == "folder":
        table = read_folder(Path(spec["root"]), spec["labels"])
    else:
        raise DatasetFormatError(f"dataset.source {source!r} has no generic reader")
    check_one_split_per_image(table, str(ann or spec["root"]))
    if needs_holdout(table):
        hold = spec["holdout"]
        table = assign_holdout(table, hold["val"], hold["test"], hold["seed"])
    return table
