"""The ``select`` split: a seeded holdout of train images that selects the model.

Official COCO 2014 (and any source without a test split) has nothing but val to
report on, so the best epoch, early stopping and the HPO objective need images
of their own. The captions stage carves them out of the source's train split
here: the ``select`` split keeps the holdout and ``train`` everything else, so
no selection image is ever trained on (config.py resolves when this applies).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cliptune.config.datasets import SELECT_SPLIT
from cliptune.data.sources.formats import DatasetFormatError
from cliptune.data.sources.tidy import no_repairs

if TYPE_CHECKING:
    from cliptune.data.sources.captions import SplitRead


def selection_holdout(file_names: pd.Series, n: int, seed: int) -> set[str]:
    """The ``n`` train images (by file name) that select the model instead of training it.

    A seeded sample of the sorted names: it depends only on the source's train
    images and the seed, never on file order, subsets or the other splits.
    """
    names = sorted(set(file_names.astype(str)))
    if n >= len(names):
        raise DatasetFormatError(
            f"dataset.selection.images = {n} but the train split has only {len(names)} images "
            f"with captions; lower dataset.selection.images (e.g. to {max(1, len(names) // 10)}) "
            "or set dataset.selection.split to a split of its own"
        )
    rng = np.random.default_rng([seed, zlib.crc32(SELECT_SPLIT.encode())])
    return {names[i] for i in rng.choice(len(names), size=n, replace=False)}


def carve_selection(read: SplitRead, selection: dict) -> SplitRead:
    """Keep the selection holdout (split ``select``) or everything else (split ``train``)."""
    held = selection_holdout(read.captions["file_name"], selection["images"], selection["seed"])
    in_held = read.captions["file_name"].astype(str).isin(held)
    keep = in_held if selection["keep"] == "holdout" else ~in_held
    if selection["keep"] == "rest":
        return read._replace(captions=read.captions[keep].reset_index(drop=True))
    # Images without a caption cannot select anything (train lists them), and the repairs
    # were made to the whole source train split (train's record counts them once).
    return read._replace(captions=read.captions[keep].reset_index(drop=True), no_caption=[],
                         cleaning=no_repairs())
