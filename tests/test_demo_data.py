"""Tests for the synthetic COCO-layout demo dataset generator."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliptune.demo import captions as demo_captions
from cliptune.demo import dataset as dd
from cliptune.demo import scenes as demo_scenes

SMALL = {"train_images": 20, "val_images": 10, "image_size": 64}


def _hashes(root: Path, pattern: str = "**/*") -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, dd.generate_demo_dataset(root, **SMALL, seed=3)


# ---------------------------------------------------------------------- determinism


def test_two_runs_are_byte_identical(tmp_path, small_dataset):
    root_a, _ = small_dataset
    dd.generate_demo_dataset(tmp_path, **SMALL, seed=3)
    a, b = _hashes(root_a), _hashes(tmp_path)
    assert len(a) == 4 + SMALL["train_images"] + SMALL["val_images"]  # captions + scenes
    assert a == b


def test_seed_changes_output(tmp_path, small_dataset):
    root_a, _ = small_dataset
    dd.generate_demo_dataset(tmp_path, **SMALL, seed=4)
    a, b = _hashes(root_a), _hashes(tmp_path)
    assert a.keys() == b.keys()
    assert a["annotations/captions_train2014.json"] != b["annotations/captions_train2014.json"]
    assert sum(a[k] != b[k] for k in a) > 0.8 * len(a)


def test_val_size_does_not_change_train(tmp_path, small_dataset):
    root_a, _ = small_dataset
    dd.generate_demo_dataset(tmp_path, **{**SMALL, "val_images": 3}, seed=3)
    train_a = _hashes(root_a, "train2014/*") | _hashes(root_a, "annotations/*train*")
    train_b = _hashes(tmp_path, "train2014/*") | _hashes(tmp_path, "annotations/*train*")
    assert train_a == train_b
    # Val is a prefix-stable stream too: the first val images are unchanged.
    val_a, val_b = _hashes(root_a, "val2014/*"), _hashes(tmp_path, "val2014/*")
    assert len(val_b) == 3 and all(val_a[k] == v for k, v in val_b.items())


# ---------------------------------------------------------------------- layout


def test_coco_layout(small_dataset):
    from pycocotools.coco import COCO

    root, summary = small_dataset
    assert summary["train"]["images"] == 20 and summary["val"]["images"] == 10
    assert not list(root.glob("annotations/*.tmp"))
    all_image_ids, all_ann_ids = [], []
    for split, n in (("train", 20), ("val", 10)):
        ann_file = root / "annotations" / f"captions_{split}2014.json"
        raw = json.loads(ann_file.read_text())
        assert set(raw) == {"info", "licenses", "images", "annotations"}
        coco = COCO(str(ann_file))
        assert len(coco.getImgIds()) == n
        pattern = re.compile(rf"COCO_{split}2014_(\d{{12}})\.jpg")
        for img in raw["images"]:
            assert {"id", "file_name", "width", "height", "license", "coco_url",
                    "date_captured"} <= set(img)  # fmt: skip
            m = pattern.fullmatch(img["file_name"])
            assert m and int(m.group(1)) == img["id"]
            with Image.open(root / f"{split}2014" / img["file_name"]) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (img["width"], img["height"]) == (64, 64)
            caps = [a["caption"] for a in coco.imgToAnns[img["id"]]]
            assert len(caps) == 5 and len(set(caps)) == 5
            assert all(c.strip() and c[0].isupper() and c.endswith(".") for c in caps)
        all_image_ids += [img["id"] for img in raw["images"]]
        all_ann_ids += [a["id"] for a in raw["annotations"]]
        # Beside the captions, as COCO's instances: every image's ground-truth scene.
        scenes = json.loads((root / "annotations" / f"scenes_{split}2014.json").read_text())
        assert [s["image_id"] for s in scenes["scenes"]] == [img["id"] for img in raw["images"]]
        assert scenes["info"] == raw["info"]
        assert summary[split]["scenes_file"].endswith(f"scenes_{split}2014.json")
        for s in scenes["scenes"]:
            index = s["image_id"] - 1 - (dd.VAL_ID_OFFSET if split == "val" else 0)
            assert s == {"image_id": s["image_id"],
                         **dd.scene_for_image(split, index, seed=3).to_dict()}
    assert len(set(all_image_ids)) == len(all_image_ids) == 30
    assert len(set(all_ann_ids)) == len(all_ann_ids) == 150


# ---------------------------------------------------------------------- content


def _nearest_colour(rgb) -> str:
    return min(demo_scenes.COLOURS, key=lambda c: np.linalg.norm(np.subtract(demo_scenes.COLOURS[c], rgb)))


def _cell_centre(cell: int, size: int) -> tuple[int, int]:
    row, col = divmod(cell, 3)
    return int((col + 0.5) * size / 3), int((row + 0.5) * size / 3)


@pytest.mark.parametrize("colour", list(demo_scenes.COLOURS))
def test_rendered_colour_and_position(colour):
    bg = next(b for b, ok in demo_scenes._ALLOWED_COLOURS.items() if colour in ok)
    for cell in range(9):
        shape = demo_scenes.ShapeSpec("square", colour, "large", "solid", cell)
        px = np.asarray(demo_scenes.render_scene(demo_scenes.SceneSpec(bg, (shape,)), 48)).astype(int)
        bg_dist = np.linalg.norm(px - demo_scenes.BACKGROUNDS[bg], axis=-1)
        ys, xs = np.nonzero(bg_dist > 60)
        # The shape's pixels are the requested colour and sit in the requested cell.
        assert 3 * int(ys.mean() * 3 // 48) + int(xs.mean() * 3 // 48) == cell
        cx, cy = _cell_centre(cell, 48)
        assert _nearest_colour(px[cy - 2 : cy + 3, cx - 2 : cx + 3].mean((0, 1))) == colour


@pytest.mark.parametrize("texture", demo_scenes.TEXTURES)
def test_red_shape_pixels_are_red(texture):
    scene = demo_scenes.SceneSpec("grey", (demo_scenes.ShapeSpec("circle", "red", "large", texture, 4),))
    px = np.asarray(demo_scenes.render_scene(scene, 64)).astype(int)
    yy, xx = np.mgrid[0:64, 0:64]
    inside = (yy - 32) ** 2 + (xx - 32) ** 2 <= 7**2  # circle radius is ~9.6 px
    r, g, b = (px[..., i][inside] for i in range(3))
    assert (r > g + 60).mean() > 0.95 and (r > b + 60).mean() > 0.95
    outside = (yy - 32) ** 2 + (xx - 32) ** 2 >= 12**2
    assert np.abs(px[outside] - demo_scenes.BACKGROUNDS["grey"]).max() <= 4


def test_textures_differ():
    def render(texture):
        shape = demo_scenes.ShapeSpec("square", "blue", "large", texture, 4)
        return np.asarray(demo_scenes.render_scene(demo_scenes.SceneSpec("sand", (shape,)), 64)).astype(int)

    solid, striped, dotted = render("solid"), render("striped"), render("dotted")
    patch = np.s_[26:38, 26:38]
    def spread(a):
        return a[patch].reshape(-1, 3).std(0).max()

    assert spread(solid) < 3 < min(spread(striped), spread(dotted))
    assert np.abs(striped[patch] - dotted[patch]).mean() > 10


_COLOUR_RE = re.compile(r"\b(" + "|".join(w for ws in demo_captions._COLOUR_WORDS.values() for w in ws) + r")\b")
_SHAPE_RE = re.compile(
    r"\b(" + "|".join(sorted((w for ws in demo_captions._SHAPE_WORDS.values() for w in ws), key=len,
                             reverse=True)) + r")\b"  # fmt: skip
)
_BG_RE = re.compile("|".join(sorted((w for ws in demo_captions._BACKGROUND_WORDS.values() for w in ws),
                                    key=len, reverse=True)))  # fmt: skip
_WORD_TO = {w: k for k, ws in {**demo_captions._COLOUR_WORDS, **demo_captions._SHAPE_WORDS}.items() for w in ws}


def test_captions_match_scene(small_dataset):
    root, _ = small_dataset
    raw = json.loads((root / "annotations" / "captions_train2014.json").read_text())
    caps: dict[int, list[str]] = {}
    for a in raw["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    for index, img in enumerate(raw["images"]):
        scene = dd.scene_for_image("train", index, seed=3)
        colours = {s.colour for s in scene.shapes}
        shapes = {s.shape for s in scene.shapes}
        mentioned_c, mentioned_s = set(), set()
        for cap in caps[img["id"]]:
            bg_words = _BG_RE.findall(cap)
            assert all(w in demo_captions._BACKGROUND_WORDS[scene.background] for w in bg_words), cap
            body = _BG_RE.sub("", cap)
            c = {_WORD_TO[w] for w in _COLOUR_RE.findall(body)}
            s = {_WORD_TO[w] for w in _SHAPE_RE.findall(body)}
            assert c <= colours and s <= shapes, (cap, scene)
            mentioned_c |= c
            mentioned_s |= s
        # At most one template names only the salient shape, so all are covered.
        assert mentioned_c == colours and mentioned_s == shapes
        # Pixels agree with the spec: solid filled shapes show their colour at the centre.
        with Image.open(root / "train2014" / img["file_name"]) as im:
            px = np.asarray(im).astype(int)
        for s in scene.shapes:
            if s.texture == "solid" and s.shape != "ring":
                row, col = divmod(s.cell, 3)
                cx = int((col + 0.5 + s.dx) * 64 / 3)
                cy = int((row + 0.5 + s.dy) * 64 / 3)
                patch = px[cy - 1 : cy + 2, cx - 1 : cx + 2].mean((0, 1))
                assert _nearest_colour(patch) == s.colour


def test_colours_contrast_with_background():
    for bg, allowed in demo_scenes._ALLOWED_COLOURS.items():
        assert len(allowed) >= 6
        for c in allowed:
            assert np.linalg.norm(np.subtract(demo_scenes.COLOURS[c], demo_scenes.BACKGROUNDS[bg])) >= 100


def test_describe_scene_distinct_for_many_captions():
    rng = np.random.default_rng(0)
    scene = demo_scenes.sample_scene(rng, 3)
    caps = demo_captions.describe_scene(scene, rng, 12)
    assert len(set(caps)) == 12


# ---------------------------------------------------------------------- diversity


def test_diversity(tmp_path):
    def key(scene):
        return (scene.background,
                tuple((s.shape, s.colour, s.size, s.texture, s.cell) for s in scene.shapes))  # fmt: skip

    scenes = [dd.scene_for_image("train", i, seed=0) for i in range(200)]
    assert len({key(s) for s in scenes}) > 190
    assert {len(s.shapes) for s in scenes} == {1, 2, 3}
    assert {s.background for s in scenes} == set(demo_scenes.BACKGROUNDS)
    shapes = list(itertools.chain.from_iterable(s.shapes for s in scenes))
    assert {s.shape for s in shapes} == set(demo_scenes.SHAPES)
    assert {s.texture for s in shapes} == set(demo_scenes.TEXTURES)
    assert {s.cell for s in shapes} == set(range(9))

    dd.generate_demo_dataset(tmp_path, train_images=200, val_images=0, image_size=32)
    raw = json.loads((tmp_path / "annotations" / "captions_train2014.json").read_text())
    firsts = {}
    for a in raw["annotations"]:
        firsts.setdefault(a["image_id"], a["caption"])
    assert len(set(firsts.values())) > 150
    assert len({a["caption"] for a in raw["annotations"]}) > 0.95 * len(raw["annotations"])


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        dd.generate_demo_dataset(tmp_path, 1, 1, max_shapes=10)
    with pytest.raises(ValueError):
        dd.generate_demo_dataset(tmp_path, -1, 1)
