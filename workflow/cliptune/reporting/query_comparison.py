"""The same text queries side by side across all variants: rows = queries, columns =
variants, each cell the variant's top images for that query.

Nothing is encoded here: every variant's figures job already ranked the split's images
for the configured queries with the variant's own towers and saved the result
(``queries.json``: image ids and cosine similarities); pixels come from each variant's
own image cache (variants may use different image sizes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cliptune.data.caches.images import cache_rows, open_cache
from cliptune.reporting import figures

TOP = 3  # images per (query, variant) cell: enough to compare at a glance


def load_variant_queries(path: Path, variant: str, queries: Sequence[str]) -> dict:
    """One variant's saved query ranking, checked against the configured queries."""
    saved = json.loads(Path(path).read_text())
    if saved["queries"] != list(queries):
        raise RuntimeError(
            f"{path} ranks queries {saved['queries']} but report.queries is {list(queries)}; "
            f"rerun the figures job of {variant!r} (snakemake --forcerun figures)")
    if saved["variant"] != variant:
        raise RuntimeError(f"{path} belongs to variant {saved['variant']!r}, not {variant!r}")
    return saved


class _CachePixels:
    """Pixels by image id from one variant's image cache."""

    def __init__(self, array: Path, index: Path):
        self.pixels, idx = open_cache(array, index)
        self.row = cache_rows(idx)

    def __call__(self, image_id: int) -> np.ndarray:
        return np.asarray(self.pixels[int(self.row.loc[int(image_id)])])


def queries_across_variants(variants: Mapping[str, Mapping[str, Path]],
                            queries: Sequence[str], out: Path, top: int = TOP) -> dict:
    """Draw the figure; ``variants[name]`` holds ``queries`` (its queries.json), ``array``
    and ``index`` (its image cache). Returns {variant: [[image id, ...] per query]}."""
    if not queries:
        raise ValueError("report.queries is empty: the cross-variant query figure needs "
                         "at least one text query")
    cells, ids = {}, {}
    for name, paths in variants.items():
        saved = load_variant_queries(paths["queries"], name, queries)
        pixels = _CachePixels(paths["array"], paths["index"])
        k = min(top, len(saved["image_id"][0]))
        ids[name] = [row[:k] for row in saved["image_id"]]
        cells[name] = [[(pixels(i), s) for i, s in zip(row[:k], scores[:k], strict=True)]
                       for row, scores in zip(saved["image_id"], saved["score"], strict=True)]
    figures.plot_queries_across_variants(list(queries), cells, out)
    return ids
