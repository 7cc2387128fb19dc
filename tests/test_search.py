"""Search over your own images: folder listing, bad files, the embed cache, ranking and
figures (the `snakemake search` target end to end: tests/test_workflow.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_pairs import tiny_variant

from cliptune.data.caches.images import load_rgb
from cliptune.data.sources.image_folder import (
    ImageFolderError,
    folder_fingerprint,
    resolve_folder,
    scan_folder,
)
from cliptune.evaluation.search import (
    EMBEDDINGS,
    MANIFEST,
    SKIPPED,
    embed_folder,
    eval_captions,
    image_to_text_hits,
    load_folder_embeddings,
    text_to_image_hits,
)

RED, BLUE = (230, 20, 20), (20, 20, 230)


def _halves(size=(40, 20), first=RED, second=BLUE) -> Image.Image:
    """Left half ``first``, right half ``second``."""
    img = Image.new("RGB", size, second)
    img.paste(first, (0, 0, size[0] // 2, size[1]))
    return img


def photo_folder(root: Path) -> Path:
    """Every common format, odd modes, and the files a real photo folder also holds."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "trips" / "2024").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    _halves().save(root / "a.jpg", quality=95)
    rgba = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (0, 0, 15, 30))
    rgba.save(root / "b_transparent.png")
    Image.new("L", (24, 36), 90).save(root / "c_grey.png")
    _halves().save(root / "d.webp")
    _halves().save(root / "e.bmp")
    _halves().save(root / "f.tiff")
    frames = [Image.new("RGB", (20, 20), RED), Image.new("RGB", (20, 20), BLUE)]
    frames[0].save(root / "g_anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: red ends up on top
    _halves().save(root / "trips" / "2024" / "h_rotated.jpg", exif=exif, quality=95)
    (root / "notes.txt").write_text("not a photo")
    (root / "empty.jpg").write_bytes(b"")
    (root / "cut.jpg").write_bytes((root / "a.jpg").read_bytes()[:200])
    (root / ".DS_Store").write_bytes(b"\0\1")
    _halves().save(root / ".thumbnails" / "a.jpg")
    return root


GOOD = ["a.jpg", "b_transparent.png", "c_grey.png", "d.webp", "e.bmp", "f.tiff",
        "g_anim.gif", "trips/2024/h_rotated.jpg"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> tuple[dict, Path]:
    from cliptune.models.factory import build_model

    torch.manual_seed(0)
    v = tiny_variant()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_file({k: t.contiguous() for k, t in build_model(v, 16).state_dict().items()},
              str(path))
    return v, path


def test_scan_is_recursive_sorted_and_ignores_hidden(folder):
    files = [e.file for e in scan_folder(folder)]
    assert files == sorted(GOOD + ["cut.jpg", "empty.jpg", "notes.txt"])


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(ImageFolderError, match=r"search.images is not set.*--config search="):
        resolve_folder(None)
    with pytest.raises(ImageFolderError, match="does not exist"):
        resolve_folder(str(tmp_path / "nope"))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ImageFolderError, match="is not a folder"):
        resolve_folder(str(tmp_path / "file.jpg"))
    (tmp_path / "only_hidden").mkdir()
    (tmp_path / "only_hidden" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(ImageFolderError, match="holds no files"):
        scan_folder(resolve_folder(str(tmp_path / "only_hidden")))
    home = Path(os.path.expanduser("~"))
    assert resolve_folder("~") == home.resolve()


def test_fingerprint_changes_exactly_when_the_folder_does(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    _halves().save(root / "a.png")

    def fp():
        return folder_fingerprint(root, scan_folder(root))

    first = fp()
    assert fp() == first and "1 files" in first  # nothing changed: the cache is reused
    st = (root / "a.png").stat()
    os.utime(root / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = fp()
    assert touched != first
    _halves().save(root / "b.png")
    with_b = fp()
    assert with_b not in (first, touched)
    (root / ".hidden.png").write_bytes(b"x")  # ignored files never force a re-embed
    assert fp() == with_b


def test_decoding_respects_exif_alpha_grey_and_first_gif_frame(folder):
    rotated = load_rgb(folder / "trips" / "2024" / "h_rotated.jpg", 16)
    assert rotated[2, 8, 0] > 150 > rotated[2, 8, 2]  # top is red after rotation
    assert rotated[13, 8, 2] > 150 > rotated[13, 8, 0]  # bottom is blue
    transparent = load_rgb(folder / "b_transparent.png", 16)
    assert tuple(transparent[8, 14]) == (255, 255, 255)  # transparent -> white, not black
    assert transparent.shape == (16, 16, 3) and load_rgb(folder / "c_grey.png", 16).shape == (
        16, 16, 3)
    gif = load_rgb(folder / "g_anim.gif", 16)
    assert gif[8, 8, 0] > 150 > gif[8, 8, 2]  # the first (red) frame


def test_embed_folder_skips_bad_files_and_matches_evaluate(folder, model_file, tmp_path,
                                                          monkeypatch):
    from cliptune.evaluation import search
    from cliptune.evaluation.evaluate import encode_pixels
    from cliptune.models.factory import load_variant_model

    monkeypatch.setattr(search, "DECODE_WINDOW", 4)  # 11 files: 3 windows, order kept
    v, weights = model_file
    stats = embed_folder(v, weights, 16, folder, tmp_path, batch_size=3, workers=2,
                         show_progress=False)
    assert stats["embedded"] == len(GOOD) and stats["skipped"] == 3
    skipped = dict(line.split("\t") for line in (tmp_path / SKIPPED).read_text().splitlines()
                   if not line.startswith("#"))
    assert sorted(skipped) == ["cut.jpg", "empty.jpg", "notes.txt"]
    assert skipped["empty.jpg"].startswith("zero-size")
    assert skipped["notes.txt"].startswith("not an image")
    assert skipped["cut.jpg"].split(":")[0] in ("truncated", "unreadable", "not an image")
    manifest = pd.read_csv(tmp_path / MANIFEST)
    assert manifest["file"].tolist() == GOOD
    assert manifest["size"].tolist() == [(folder / f).stat().st_size for f in GOOD]
    emb, files = load_folder_embeddings(tmp_path / EMBEDDINGS, tmp_path / MANIFEST)
    assert files == GOOD and emb.shape == (len(GOOD), 16)
    # Row i is file i, embedded exactly as evaluate embeds a cached image.
    model = load_variant_model(v, weights, 16, torch.device("cpu"))
    pixels = np.stack([load_rgb(folder / f, v["image_size"]) for f in GOOD])
    with torch.no_grad():
        expected = encode_pixels(model, pixels)
    assert torch.allclose(emb, expected, atol=1e-5)


def test_a_changed_folder_re_embeds_only_new_and_edited_files(model_file, tmp_path):
    from cliptune.evaluation.search import REUSE_DIR

    v, weights = model_file
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for i, colour in enumerate((RED, BLUE, (20, 200, 20))):
        _halves(first=colour).save(photos / f"p{i}.png")
    assert embed_folder(v, weights, 16, photos, out, show_progress=False)["embedded"] == 3
    _halves(first=BLUE, second=RED).save(photos / "p1.png")  # edited
    os.utime(photos / "p1.png", ns=(1, 1))  # a new mtime even on coarse clocks
    _halves(first=(200, 200, 20)).save(photos / "p3.png")  # new
    (photos / "p2.png").unlink()  # removed
    stats = embed_folder(v, weights, 16, photos, out, show_progress=False)
    assert (stats["images"], stats["embedded"], stats["reused"]) == (3, 2, 1)
    emb, files = load_folder_embeddings(out / EMBEDDINGS, out / MANIFEST)
    fresh = embed_folder(v, weights, 16, photos, tmp_path / "fresh", show_progress=False)
    assert fresh["reused"] == 0
    emb_fresh, files_fresh = load_folder_embeddings(tmp_path / "fresh" / EMBEDDINGS,
                                                    tmp_path / "fresh" / MANIFEST)
    assert files == files_fresh == ["p0.png", "p1.png", "p3.png"]
    torch.testing.assert_close(emb, emb_fresh, rtol=0, atol=1e-6)
    # Other weights: nothing is reused, and only the current model's leftovers stay.
    other = tmp_path / "other.safetensors"
    state = load_file(str(weights))
    first = next(k for k, t in state.items() if t.is_floating_point())
    state[first] = state[first] + 1.0
    save_file(state, str(other))
    assert embed_folder(v, other, 16, photos, out, show_progress=False)["reused"] == 0
    assert len(list((out / REUSE_DIR).iterdir())) == 1


def test_a_folder_without_a_readable_image_fails_with_the_reasons(model_file, tmp_path):
    v, weights = model_file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "readme.md").write_text("# hi")
    with pytest.raises(ImageFolderError, match=r"none of the 1 files.*readme.md: not an image.*log"):
        embed_folder(v, weights, 16, bad, tmp_path / "out", show_progress=False)
    assert "readme.md\tnot an image" in (tmp_path / "out" / SKIPPED).read_text()


def test_ranking_on_constructed_embeddings():
    image_emb = torch.eye(4)  # image i points along axis i
    files = ["w.jpg", "x.jpg", "y.jpg", "z.jpg"]
    queries = {"q-y": [0.1, 0.2, 1.0, 0.0], "q-x": [0.0, 1.0, 0.0, 0.5]}

    def encode(texts):  # L2-normalised, as every text tower returns them
        return torch.nn.functional.normalize(torch.tensor([queries[t] for t in texts]), dim=-1)

    hits = text_to_image_hits(encode, list(queries), image_emb, files, k=3)
    assert hits[hits["query"] == "q-y"]["file"].tolist() == ["y.jpg", "x.jpg", "w.jpg"]
    assert hits[hits["query"] == "q-x"]["file"].tolist() == ["x.jpg", "z.jpg", "w.jpg"]
    assert hits["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    top = hits.iloc[0]["score"]
    assert top == pytest.approx(1.0 / np.linalg.norm(queries["q-y"]))


def test_image_to_text_uses_evaluate_embeddings_without_repeated_captions(tmp_path):
    text = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1.0]])
    save_file({"text": text, "caption_id": torch.tensor([7, 8, 9, 10]),
               "image": torch.zeros(2, 3)}, str(tmp_path / "emb.safetensors"))
    pd.DataFrame({"caption_id": [10, 9, 8, 7], "image_id": [2, 1, 1, 1],
                  "caption": ["a boat", "a dog on grass", "a dog", "a dog"]}).to_parquet(
        tmp_path / "caps.parquet")
    text_emb, captions = eval_captions(tmp_path / "emb.safetensors", tmp_path / "caps.parquet")
    assert captions["caption"].tolist() == ["a dog", "a dog on grass", "a boat"]
    hits = image_to_text_hits(torch.tensor([[1.0, 0.1, 0], [0, 0, 1.0]]), ["p.jpg", "q.png"],
                              text_emb, captions, k=2)
    assert hits[hits["file"] == "p.jpg"]["caption"].tolist() == ["a dog", "a dog on grass"]
    assert hits[hits["file"] == "q.png"]["caption"].tolist()[0] == "a boat"
    assert hits[hits["file"] == "q.png"]["image_id"].tolist()[0] == 2
    assert list(hits.columns) == ["file", "rank", "caption", "score", "caption_id", "image_id"]


def test_search_config_defaults_come_from_the_schema():
    from cliptune.config.load import DEFAULTS, ConfigError, load_config

    assert DEFAULTS["search"] == {"images": None, "variant": None, "queries": None, "top_k": 5,
                                  "figure_images": 8}
    raw = {"dataset": {"name": "d", "source": "demo"}, "variants": {"baseline": {}, "lora": {}},
           "report": {"queries": ["a cat", "a cat", "a dog"]}}
    cfg = load_config(raw)
    assert cfg["search"]["variant"] == "baseline"  # null: the baseline
    assert cfg["search"]["queries"] == ["a cat", "a dog"]  # null: report.queries
    cfg = load_config({**raw, "search": {"variant": "untrained", "queries": ["x"]}})
    assert cfg["search"]["variant"] == "untrained" and cfg["search"]["queries"] == ["x"]
    with pytest.raises(ConfigError, match="search.variant = 'nope' is not a variant"):
        load_config({**raw, "search": {"variant": "nope"}})


def test_figures_draw_from_the_hit_tables(folder, tmp_path):
    from cliptune.reporting.search_figures import (
        plot_search_image_to_text,
        plot_search_text_to_image,
    )

    t2i = pd.DataFrame({"query": ["red", "red", "blue", "blue"], "rank": [1, 2, 1, 2],
                        "file": ["a.jpg", "d.webp", "e.bmp", "trips/2024/h_rotated.jpg"],
                        "score": [0.9, 0.8, 0.7, 0.6]})
    plot_search_text_to_image(t2i, folder, tmp_path / "t2i.png", "test")
    i2t = pd.DataFrame({"file": ["a.jpg", "a.jpg", "c_grey.png", "c_grey.png"],
                        "rank": [1, 2, 1, 2], "caption": ["x", "y", "z", "w"],
                        "score": [0.5, 0.4, 0.3, 0.2]})
    plot_search_image_to_text(i2t, folder, tmp_path / "i2t.png", "test", n_images=1)
    for name in ("t2i.png", "i2t.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 500
    (tmp_path / "gone.jpg").write_bytes(b"")  # emptied after it was embedded
    with pytest.raises(RuntimeError, match="folder changed during the run"):
        plot_search_text_to_image(t2i.assign(file="gone.jpg"), tmp_path, tmp_path / "x.png", "t")


