"""Figures of a folder search (cliptune.evaluation.search): the same two retrieval grids
as a variant's figures, drawn from the hit tables, with the folder's own photos
decoded again at display size (only the few shown)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cliptune.data.caches.images import try_load_rgb
from cliptune.reporting import figures

DISPLAY_SIZE = 160  # pixels per shown photo: sharper than the model's input, still small


class FolderImages:
    """``images[file]`` -> the photo as a DISPLAY_SIZE² uint8 RGB crop."""

    def __init__(self, folder: Path, size: int = DISPLAY_SIZE):
        self.folder, self.size = Path(folder), size

    def __getitem__(self, file: str) -> np.ndarray:
        pixels, problem = try_load_rgb(self.folder / file, self.size)
        if pixels is None:
            raise RuntimeError(
                f"{self.folder / file} was embedded but cannot be read now ({problem}): the "
                "folder changed during the run; rerun the same command to re-embed it")
        return pixels


def plot_search_text_to_image(hits: pd.DataFrame, folder: Path, png: Path, title: str) -> None:
    """Rows = queries (in order), columns = their top-K photos with scores and file names."""
    queries = list(dict.fromkeys(hits["query"]))
    files = list(dict.fromkeys(hits["file"]))
    position = {f: i for i, f in enumerate(files)}
    table = hits.assign(pos=hits["file"].map(position)).sort_values(["query", "rank"])
    k = int(hits["rank"].max())
    grouped = {q: g for q, g in table.groupby("query", sort=False)}
    idx = np.array([grouped[q]["pos"].to_numpy() for q in queries]).reshape(len(queries), k)
    scores = np.array([grouped[q]["score"].to_numpy() for q in queries]).reshape(len(queries), k)
    images = _Positional(FolderImages(folder), files)
    figures.plot_text_to_image(queries, idx, scores, images, files, png, title,
                               label="its file name")


def plot_search_image_to_text(hits: pd.DataFrame, folder: Path, png: Path, title: str,
                              n_images: int) -> None:
    """The first ``n_images`` folder photos (by file name), each with its top-K captions."""
    files = list(dict.fromkeys(hits["file"]))[:n_images]
    rows = [hits[hits["file"] == f].sort_values("rank") for f in files]
    photos = FolderImages(folder)
    figures.plot_image_to_text([photos[f] for f in files],
                               [r["caption"].tolist() for r in rows],
                               np.array([r["score"].to_numpy() for r in rows]), None, png,
                               title, names=files)


class _Positional:
    """``images[i]`` over a list of file names (plot_text_to_image indexes by position)."""

    def __init__(self, photos: FolderImages, files: list[str]):
        self.photos, self.files = photos, files

    def __getitem__(self, i: int) -> np.ndarray:
        return self.photos[self.files[int(i)]]
