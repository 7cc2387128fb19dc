"""The table every caption reader returns, and the checks and holdout shared by all of them.

Split from the readers (cliptune.data.sources.formats) so each file holds one idea:
this one the common shape and its invariants, that one a reader per format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

MAX_EXAMPLES = 5  # offenders named in an error or kept as examples in the report


class DatasetFormatError(ValueError):
    """A caption file that cannot be read as its declared format; the message says why."""


@dataclass
class SourceTable:
    captions: pd.DataFrame  # image_id, caption_id, caption, file_name, split (source label)
    no_caption: dict[str, list[str]] = field(default_factory=dict)  # label -> file names
    notes: list[str] = field(default_factory=list)  # warnings worth repeating in the report

    def labels(self) -> set[str]:
        return set(self.captions["split"].unique()) | set(self.no_caption)


def stable_id(text: str) -> int:
    """Non-negative int64 id that depends only on ``text`` (blake2b, 56 bits)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=7).digest(), "big")


def clean_caption(text, where: str = "caption") -> str:
    """Collapse whitespace (newlines, tabs, runs of spaces); keep unicode as is.

    ``None`` reads as an empty caption (the captions stage drops and counts those).
    Any other non-string (a number, a list) means the file is not what its format
    says, so it stops the run naming ``where`` instead of training on ``str(value)``.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DatasetFormatError(
            f"{where} is {type(text).__name__} {text!r:.60}, not a string; captions must be "
            "text (fix or drop that entry in the annotation file)"
        )
    return " ".join(text.split())


def caption_frame(rows: Iterable[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=["image_id", "caption_id", "caption", "file_name",
                                           "split"])
    return df.astype({"image_id": "int64", "caption_id": "int64", "caption": "string",
                      "file_name": "string", "split": "string"})


def load_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path} is not valid JSON ({exc})") from None


def assign_holdout(table: SourceTable, val: int, test: int, seed: int) -> SourceTable:
    """Give a split-less source train/val/test labels by a seeded shuffle of its images.

    Images are shuffled by a generator seeded with ``seed`` over the sorted
    file names, so the split depends on the seed and the image set only.
    """
    names = sorted(set(table.captions["file_name"]) | {n for v in table.no_caption.values()
                                                       for n in v})
    if val + test >= len(names):
        raise DatasetFormatError(
            f"dataset.holdout asks for {val} val + {test} test images but the source has only "
            f"{len(names)} images; lower dataset.holdout.val / dataset.holdout.test"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    label = {}
    for rank, i in enumerate(order):
        label[names[i]] = "val" if rank < val else "test" if rank < val + test else "train"
    caps = table.captions.copy()
    caps["split"] = caps["file_name"].map(label).astype("string")
    no_caption: dict[str, list[str]] = {}
    for names_ in table.no_caption.values():
        for n in names_:
            no_caption.setdefault(label[n], []).append(n)
    return SourceTable(caps, no_caption, table.notes)




def needs_holdout(table: SourceTable) -> bool:
    return table.labels() <= {""}


def several_values(pairs: pd.DataFrame, key: str, value: str, joiner: str) -> tuple[int, str]:
    """How many ``key``s have more than one distinct ``value`` (a file under two splits, an
    image id naming two files), and the first few of them as ``key<joiner>v1, v2; ...``
    (values sorted) for the error message of a one-to-one check."""
    distinct = pairs[[key, value]].drop_duplicates()
    counts = distinct[key].value_counts()
    shared = distinct[distinct[key].isin(counts.index[counts > 1])]
    clash = shared.groupby(key)[value].agg(list)
    return len(clash), "; ".join(f"{k}{joiner}{', '.join(sorted(map(str, values)))}"
                                 for k, values in clash.head(MAX_EXAMPLES).items())


def check_one_split_per_image(table: SourceTable, where: str) -> None:
    """An image listed under two source splits would be trained on and evaluated on."""
    pairs = table.captions[["file_name", "split"]].astype(str)
    extra = [(n, lab) for lab, names in table.no_caption.items() for n in names]
    if extra:
        pairs = pd.concat([pairs, pd.DataFrame(extra, columns=["file_name", "split"])])
    count, shown = several_values(pairs, "file_name", "split", " in ")
    if count:
        raise DatasetFormatError(
            f"{where}: {count} image(s) are listed under more than one split ({shown}); an "
            "image must belong to one split, or it is trained on and evaluated on"
        )
