"""Make one split's caption table safe to cache, train and evaluate on, counting repairs.

Annotation files written by other tools repeat annotations, reuse caption ids,
list one image twice under two ids or hold empty captions. Every later stage
keys on ``caption_id`` (the text cache) and ``image_id`` (the image cache), so
such a file would train fine and then fail in ``evaluate`` with a shape
error. Here each problem is either repaired and counted (the counts go to the
split's ``source.json`` and from there to the data report) or, when no repair
is safe, stops the run naming the first few offenders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from cliptune.data.sources.table import MAX_EXAMPLES, several_values

log = logging.getLogger(__name__)


def no_repairs() -> dict:
    """The record (:meth:`Tidied.record`) of a split that made no repairs of its own."""
    return Tidied(pd.DataFrame(), [], dict.fromkeys(
        ("images_merged", "empty_captions_dropped", "repeated_captions_dropped",
         "caption_ids_reassigned"), 0),
        {"images_merged": [], "empty_caption_images": [], "caption_ids_reassigned": []}
    ).record()


class CaptionTableError(ValueError):
    """A caption table that cannot be repaired safely; the message names the offenders."""


@dataclass
class Tidied:
    captions: pd.DataFrame
    no_caption: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list] = field(default_factory=dict)

    def record(self) -> dict:
        """What source.json keeps: counts plus a few examples of each repair."""
        return {**self.counts, "examples": self.examples}


def check_image_ids(df: pd.DataFrame, where: str) -> None:
    """One image id naming two files cannot be repaired: which file would be the image?"""
    count, shown = several_values(df, "image_id", "file_name", ": ")
    if count:
        raise CaptionTableError(
            f"{where}: {count} image id(s) name more than one file ({shown}); an image id "
            "must identify one image, fix the annotation file"
        )


def merge_repeated_images(df: pd.DataFrame) -> tuple[pd.DataFrame, int, list]:
    """One file listed under several image ids becomes one image (the smallest id).

    Left apart, the same picture would sit twice in the evaluation gallery and
    its captions would count the copy as a wrong answer.
    """
    ids = df.groupby("file_name")["image_id"].agg(["min", "nunique"])
    repeated = ids[ids["nunique"] > 1]
    if repeated.empty:
        return df, 0, []
    out = df.copy()
    out["image_id"] = out["file_name"].map(ids["min"]).astype("int64")
    return out, int((repeated["nunique"] - 1).sum()), repeated.index[:MAX_EXAMPLES].tolist()


def drop_empty(df: pd.DataFrame) -> tuple[pd.DataFrame, int, list[str]]:
    """Empty or whitespace-only captions: no text to learn from or to retrieve."""
    empty = df["caption"].astype(str).str.strip() == ""
    names = sorted(set(df.loc[empty, "file_name"].astype(str)))
    return df[~empty], int(empty.sum()), names


def drop_repeats(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The same annotation listed twice (same image, id and text): keep one."""
    repeat = df.duplicated(["image_id", "caption_id", "caption"], keep="first")
    return df[~repeat], int(repeat.sum())


def unique_caption_ids(df: pd.DataFrame) -> tuple[pd.DataFrame, int, list[int]]:
    """Different captions sharing an id: later ones get fresh ids above the largest.

    File order decides which keeps the id, so the new ids are deterministic.
    """
    dup = df["caption_id"].duplicated(keep="first").to_numpy()
    if not dup.any():
        return df, 0, []
    examples = sorted(set(df.loc[dup, "caption_id"].tolist()))[:MAX_EXAMPLES]
    out = df.copy()
    start = int(out["caption_id"].max()) + 1
    ids = out["caption_id"].to_numpy(copy=True)
    ids[dup] = range(start, start + int(dup.sum()))
    out["caption_id"] = pd.array(ids, dtype="int64")
    return out, int(dup.sum()), examples


def tidy_captions(df: pd.DataFrame, no_caption: list[str], where: str) -> Tidied:
    """Repair what can be repaired in one split's rows (see the module docstring)."""
    check_image_ids(df, where)
    df, merged, merged_ex = merge_repeated_images(df)
    df, empty, empty_names = drop_empty(df)
    df, repeats = drop_repeats(df)
    df, reassigned, reassigned_ex = unique_caption_ids(df)
    df = df.sort_values(["image_id", "caption_id"], kind="stable").reset_index(drop=True)
    # Images whose every caption was empty join the images without a caption.
    lost = set(empty_names) - set(df["file_name"].astype(str))
    tidied = Tidied(
        df, sorted(set(no_caption) | lost),
        {"images_merged": merged, "empty_captions_dropped": empty,
         "repeated_captions_dropped": repeats, "caption_ids_reassigned": reassigned},
        {"images_merged": merged_ex, "empty_caption_images": empty_names[:MAX_EXAMPLES],
         "caption_ids_reassigned": reassigned_ex})
    _log_repairs(tidied, where)
    return tidied


def _log_repairs(tidied: Tidied, where: str) -> None:
    c, ex = tidied.counts, tidied.examples
    if c["images_merged"]:
        log.warning("%s: %d repeated image entries merged (same file under several ids, "
                    "e.g. %s)", where, c["images_merged"], ex["images_merged"])
    if c["empty_captions_dropped"]:
        log.warning("%s: %d empty captions excluded", where, c["empty_captions_dropped"])
    if c["repeated_captions_dropped"]:
        log.warning("%s: %d annotations listed twice; kept once", where,
                    c["repeated_captions_dropped"])
    if c["caption_ids_reassigned"]:
        log.warning("%s: %d captions reuse another caption's id (e.g. ids %s); given fresh "
                    "ids", where, c["caption_ids_reassigned"], ex["caption_ids_reassigned"])
