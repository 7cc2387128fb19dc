"""Synthetic captioned-image dataset in the MS COCO 2014 captions layout.

The demo pipeline must run offline, in minutes, on CPUs, yet still show that
fine-tuning moves retrieval Recall@K.  Real COCO is far too large for that, so
this module draws compositional scenes (1..N coloured, textured shapes on a
named background, placed on a 3x3 grid) and writes several differently worded,
truthful captions per image.  The combination space is large enough that
chance Recall@1 is tiny, while colour/shape/position are easy visual features
that a small image encoder learns within a few epochs.

The output mirrors COCO exactly (``annotations/captions_{train,val}2014.json``,
``{train,val}2014/COCO_{split}2014_<12-digit id>.jpg``) so the same loaders run
on the demo data and on the real dataset.

Everything is deterministic: each image draws from its own
``numpy.random.default_rng([seed, split, index])`` stream, so the train split
does not change when only the val size changes, and PIL's JPEG encoder with
fixed settings yields identical bytes run to run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from cliptune.config import DEFAULTS

# --------------------------------------------------------------------------- vocabulary

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "yellow": (250, 220, 30),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "sky blue": (140, 195, 235),
    "sand": (215, 190, 140),
    "dark": (35, 40, 60),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
SIZES: tuple[str, ...] = ("large", "small")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
# Row-major 3x3 grid; index = 3 * row + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

# Pairs closer than this (Euclidean RGB) are never sampled, so every shape
# stands out from its background (drops purple-on-grey and black-on-dark).
MIN_CONTRAST = 110.0
# Shape diameter as a fraction of its grid cell; small vs large must be obvious.
SIZE_FRACTION = {"large": 0.9, "small": 0.5}
SPLITS = ("train", "val")
# Val ids live in their own range so ids stay unique across splits whatever
# the split sizes (real COCO ids are unique across train/val too).
VAL_ID_OFFSET = 1_000_000
SUPERSAMPLE = 2
JPEG_QUALITY = 90

_ALLOWED_COLOURS: dict[str, tuple[str, ...]] = {
    bg: tuple(
        c for c, rgb in COLOURS.items() if float(np.linalg.norm(np.subtract(rgb, bg_rgb))) >= MIN_CONTRAST
    )
    for bg, bg_rgb in BACKGROUNDS.items()
}

# Synonyms make the five captions of one image read differently to a
# sentence encoder while staying truthful.
_SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little")}
_COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"purple": ("purple", "violet")}
_SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop"),
}
_TEXTURE_PREFIX = {
    "solid": ("", "", "solid", "plain"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dot"),
}
_TEXTURE_SUFFIX = {
    "solid": ("",),
    "striped": ("with stripes", "with diagonal stripes"),
    "dotted": ("with dots", "covered in dots"),
}
_BACKGROUND_WORDS = {
    "grey": ("grey", "gray"),
    "sky blue": ("sky blue", "light blue", "pale blue"),
    "sand": ("sand-coloured", "beige", "sandy"),
    "dark": ("dark", "dark navy", "very dark"),
}
_POSITION_WORDS = {
    "top left": ("in the top left corner", "at the top left", "in the upper left"),
    "top": ("at the top", "near the top", "at the top center"),
    "top right": ("in the top right corner", "at the top right", "in the upper right"),
    "left": ("on the left", "on the left side", "at the left"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "on the right side", "at the right"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom center"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "in the lower right"),
}
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# --------------------------------------------------------------------------- scene spec


@dataclass(frozen=True)
class ShapeSpec:
    """One object: what it is plus where it sits (cell and in-cell jitter)."""

    shape: str
    colour: str
    size: str
    texture: str
    cell: int  # 0..8, row-major over the 3x3 grid
    dx: float = 0.0  # jitter as a fraction of the cell, keeps shapes inside it
    dy: float = 0.0

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class SceneSpec:
    """A background plus shapes, most salient first (large before small)."""

    background: str
    shapes: tuple[ShapeSpec, ...]

    def to_dict(self) -> dict:
        return {"background": self.background, "shapes": [asdict(s) for s in self.shapes]}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, max_shapes: int = 3) -> SceneSpec:
    """Draw a random scene; one shape per grid cell so objects never overlap."""
    if not 1 <= max_shapes <= len(POSITIONS):
        raise ValueError(f"max_shapes must be in 1..{len(POSITIONS)}, got {max_shapes}")
    background = _pick(rng, tuple(BACKGROUNDS))
    n = int(rng.integers(1, max_shapes + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    shapes = []
    for cell in cells:
        size = _pick(rng, SIZES)
        slack = (1.0 - SIZE_FRACTION[size]) / 2 * 0.8
        dx, dy = (float(v) for v in rng.uniform(-slack, slack, size=2))
        shapes.append(
            ShapeSpec(
                shape=_pick(rng, SHAPES),
                colour=_pick(rng, _ALLOWED_COLOURS[background]),
                size=size,
                texture=_pick(rng, TEXTURES),
                cell=int(cell),
                dx=round(dx, 4),
                dy=round(dy, 4),
            )
        )
    shapes.sort(key=lambda s: (SIZES.index(s.size), s.cell))
    return SceneSpec(background=background, shapes=tuple(shapes))


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=16)
def _texture_mask(texture: str, canvas: int, image_size: int) -> Image.Image:
    """Full-canvas 0/255 pattern; the period scales with the output size."""
    period = max(4, round(image_size / 14)) * (canvas // image_size)
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    if texture == "striped":
        on = ((xx + yy) // (period / 2)).astype(int) % 2 == 0
    elif texture == "dotted":
        half = period / 2
        on = (xx % period - half) ** 2 + (yy % period - half) ** 2 <= (0.36 * period) ** 2
    else:
        on = np.ones((canvas, canvas), dtype=bool)
    return Image.fromarray(np.where(on, 255, 0).astype(np.uint8), mode="L")


def _gap_tone(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Second tone between stripes/dots: the shape keeps a solid silhouette."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    target = 0 if luminance > 140 else 255
    return tuple(round(v + 0.4 * (target - v)) for v in rgb)  # type: ignore[return-value]


def _regular_polygon(cx: float, cy: float, radii: Sequence[float], start_deg: float) -> list:
    k = len(radii)
    angles = np.deg2rad(start_deg + 360.0 * np.arange(k) / k)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]


def _draw_shape_mask(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ri = 0.55 * r
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif shape == "square":
        h = 0.82 * r  # roughly the circle's visual weight
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif shape == "triangle":
        # Centroid sits below the bbox centre; shift so the triangle looks centred.
        draw.polygon(_regular_polygon(cx, cy + 0.2 * r, [1.1 * r] * 3, -90.0), fill=255)
    elif shape == "star":
        draw.polygon(_regular_polygon(cx, cy + 0.08 * r, [r, 0.45 * r] * 5, -90.0), fill=255)
    elif shape == "cross":
        a = 0.32 * r
        draw.rectangle((cx - r, cy - a, cx + r, cy + a), fill=255)
        draw.rectangle((cx - a, cy - r, cx + a, cy + r), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: SceneSpec, image_size: int = 96) -> Image.Image:
    """Rasterise a scene to an RGB image of ``image_size`` x ``image_size``.

    Drawn at 2x and box-downsampled: cheap anti-aliasing that stays deterministic.
    """
    canvas = image_size * SUPERSAMPLE
    img = Image.new("RGB", (canvas, canvas), BACKGROUNDS[scene.background])
    cell = canvas / 3
    for s in scene.shapes:
        row, col = divmod(s.cell, 3)
        cx = (col + 0.5 + s.dx) * cell
        cy = (row + 0.5 + s.dy) * cell
        r = SIZE_FRACTION[s.size] * cell / 2
        mask = Image.new("L", (canvas, canvas), 0)
        _draw_shape_mask(ImageDraw.Draw(mask), s.shape, cx, cy, r)
        # Masked paste over the whole canvas dominated the runtime; touch only the bbox.
        bbox = mask.getbbox()
        if bbox is None:
            continue
        mask = mask.crop(bbox)
        rgb = COLOURS[s.colour]
        if s.texture == "solid":
            img.paste(rgb, bbox, mask)
        else:
            img.paste(_gap_tone(rgb), bbox, mask)
            pattern = _texture_mask(s.texture, canvas, image_size).crop(bbox)
            img.paste(rgb, bbox, ImageChops.darker(mask, pattern))
    return img.reduce(SUPERSAMPLE)


# --------------------------------------------------------------------------- captions


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _noun_phrase(
    s: ShapeSpec,
    rng: np.random.Generator,
    *,
    size: bool = True,
    texture: bool = True,
    article: bool = True,
) -> str:
    """E.g. 'a big striped red circle' or 'a red circle with dots' (with article)."""
    words = [_pick(rng, _SIZE_WORDS[s.size])] if size else []
    suffix = ""
    if texture:
        if s.texture != "solid" and rng.random() < 0.4:
            suffix = " " + _pick(rng, _TEXTURE_SUFFIX[s.texture])
        else:
            words.append(_pick(rng, _TEXTURE_PREFIX[s.texture]))
    words += [_pick(rng, _COLOUR_WORDS[s.colour]), _pick(rng, _SHAPE_WORDS[s.shape])]
    phrase = " ".join(w for w in words if w)
    return (_article(phrase) if article else phrase) + suffix


def _where(s: ShapeSpec, rng: np.random.Generator) -> str:
    return _pick(rng, _POSITION_WORDS[s.position])


def _bg(scene: SceneSpec, rng: np.random.Generator) -> str:
    return _pick(rng, _BACKGROUND_WORDS[scene.background])


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _count(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _ordered(scene: SceneSpec, rng: np.random.Generator) -> list[ShapeSpec]:
    # Salience order or reading order: both are natural ways people list objects.
    if rng.random() < 0.5:
        return list(scene.shapes)
    return sorted(scene.shapes, key=lambda s: s.cell)


def _t_full_list(scene, rng):
    parts = [f"{_noun_phrase(s, rng)} {_where(s, rng)}" for s in _ordered(scene, rng)]
    return _cap(f"{_join(parts)}, on {_article(_bg(scene, rng))} background.")


def _t_count(scene, rng):
    n = len(scene.shapes)
    bg = _bg(scene, rng)
    if n == 1:
        s = scene.shapes[0]
        return f"A single {_noun_phrase(s, rng, article=False)} {_where(s, rng)} on {_article(bg)} background."
    parts = [f"{_noun_phrase(s, rng)} {_where(s, rng)}" for s in _ordered(scene, rng)]
    noun = _pick(rng, ("shapes", "objects"))
    return f"{_cap(_count(n))} {noun} on {_article(bg)} background: {_join(parts)}."


def _t_there_is(scene, rng):
    parts = [f"{_noun_phrase(s, rng)} {_where(s, rng)}" for s in _ordered(scene, rng)]
    return f"There is {_join(parts)}."


def _t_salient(scene, rng):
    s = scene.shapes[0]
    head = f"{_noun_phrase(s, rng)} {_where(s, rng)}"
    n_other = len(scene.shapes) - 1
    if n_other == 0:
        tail = _pick(rng, ("", " on its own", " and nothing else"))
    else:
        other = "shape" if n_other == 1 else "shapes"
        tail = _pick(rng, (f" next to {_count(n_other)} other {other}", " among other shapes"))
    return _cap(head + tail + ".")


def _t_background_first(scene, rng):
    parts = [_noun_phrase(s, rng) for s in _ordered(scene, rng)]
    lead = _pick(rng, ("background", "backdrop"))
    return _cap(f"{_article(_bg(scene, rng))} {lead} with {_join(parts)}.")


def _t_position_first(scene, rng):
    parts = [f"{_where(s, rng)} {_pick(rng, ('there is', 'sits', 'is'))} {_noun_phrase(s, rng)}"
             for s in sorted(scene.shapes, key=lambda s: s.cell)]
    return _cap("; ".join(parts) + ".")


def _t_picture(scene, rng):
    lead = _pick(rng, ("a picture of", "an image showing", "a drawing of", "a simple scene with"))
    parts = [f"{_noun_phrase(s, rng)} {_where(s, rng)}" for s in _ordered(scene, rng)]
    return _cap(f"{lead} {_join(parts)}.")


def _t_plain(scene, rng):
    # Only colour + shape here, so identical objects are merged ("two red stars").
    groups: dict[tuple[str, str], int] = {}
    for s in _ordered(scene, rng):
        groups[(s.colour, s.shape)] = groups.get((s.colour, s.shape), 0) + 1
    parts = []
    for (colour, shape), k in groups.items():
        words = f"{_pick(rng, _COLOUR_WORDS[colour])} {_pick(rng, _SHAPE_WORDS[shape])}"
        plural = words + ("es" if words.endswith("s") else "s")
        parts.append(_article(words) if k == 1 else f"{_count(k)} {plural}")
    prep = _pick(rng, ("against", "over", "on"))
    return _cap(f"{_join(parts)} {prep} {_article(_bg(scene, rng))} backdrop.")


_TEMPLATES = (
    _t_full_list,
    _t_count,
    _t_there_is,
    _t_salient,
    _t_background_first,
    _t_position_first,
    _t_picture,
    _t_plain,
)


def describe_scene(scene: SceneSpec, rng: np.random.Generator, n: int = 5) -> list[str]:
    """Return ``n`` pairwise different, truthful captions for ``scene``.

    Templates are drawn without replacement first, so captions differ in
    structure (not just in a synonym) whenever ``n`` <= number of templates.
    """
    captions: list[str] = []
    order = list(rng.permutation(len(_TEMPLATES)))
    attempts = 0
    while len(captions) < n:
        if not order:
            order = list(rng.permutation(len(_TEMPLATES)))
        text = _TEMPLATES[order.pop(0)](scene, rng)
        attempts += 1
        if text not in captions:
            captions.append(text)
        elif attempts > 50 * n:
            raise RuntimeError(f"could not produce {n} distinct captions for {scene}")
    return captions


# --------------------------------------------------------------------------- dataset


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per image: adding val images never shifts train."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def image_id_for(split: str, index: int) -> int:
    return index + 1 + (VAL_ID_OFFSET if split == "val" else 0)


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def scene_for_image(split: str, index: int, seed: int = 0, max_shapes: int = 3) -> SceneSpec:
    """Recreate the ground-truth scene of image ``index`` of ``split`` (for tests/analysis)."""
    return sample_scene(image_rng(seed, split, index), max_shapes)


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 chroma keeps small coloured shapes from bleeding at 64-96 px.
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, separators=(",", ":")))
    os.replace(tmp, path)


def _build_split(
    root: Path,
    split: str,
    count: int,
    *,
    image_size: int,
    seed: int,
    captions_per_image: int,
    max_shapes: int,
) -> dict:
    img_dir = root / f"{split}2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    base_date = datetime(2013, 11, 14, 8, 0, 0)
    images, annotations = [], []
    for index in range(count):
        rng = image_rng(seed, split, index)
        scene = sample_scene(rng, max_shapes)
        captions = describe_scene(scene, rng, captions_per_image)
        image_id = image_id_for(split, index)
        file_name = coco_file_name(split, image_id)
        (img_dir / file_name).write_bytes(_jpeg_bytes(render_scene(scene, image_size)))
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "coco_url": f"cliptune-demo://{split}2014/{file_name}",
                "height": image_size,
                "width": image_size,
                "date_captured": (base_date + timedelta(minutes=index)).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                "flickr_url": "",
                "id": image_id,
            }
        )
        # id * k + j is unique across splits because image ids are.
        annotations.extend(
            {"image_id": image_id, "id": image_id * captions_per_image + j, "caption": text}
            for j, text in enumerate(captions)
        )
    return {
        "info": {
            "description": "cliptune synthetic shapes demo (MS COCO 2014 captions layout)",
            "url": "",
            "version": "1.0",
            "year": 2014,
            "contributor": "cliptune",
            "date_created": "2014-01-01 00:00:00",
            "generator": {
                "seed": seed,
                "image_size": image_size,
                "captions_per_image": captions_per_image,
                "max_shapes": max_shapes,
            },
        },
        "licenses": [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1,
                      "name": "CC0 1.0 (synthetic)"}],
        "images": images,
        "annotations": annotations,
    }


DEMO = DEFAULTS["dataset"]["demo"]  # dataset.demo defaults, shared by the CLI below


def generate_demo_dataset(
    root: str | os.PathLike,
    train_images: int,
    val_images: int,
    image_size: int = DEMO["image_size"],
    seed: int = DEMO["seed"],
    captions_per_image: int = DEMO["captions_per_image"],
    max_shapes: int = DEMO["max_shapes"],
) -> dict:
    """Write the demo dataset under ``root`` and return a summary of counts.

    Images are written first and each annotation JSON last (temp + rename), so
    a present JSON file means its split is complete.
    """
    if not 0 <= train_images < VAL_ID_OFFSET or val_images < 0:
        raise ValueError("train_images must be in [0, 1e6) and val_images >= 0")
    if image_size < 16 or captions_per_image < 1:
        raise ValueError("image_size must be >= 16 and captions_per_image >= 1")
    if not 1 <= max_shapes <= len(POSITIONS):
        raise ValueError(f"max_shapes must be in 1..{len(POSITIONS)}")
    root = Path(root)
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary: dict = {"root": str(root), "image_size": image_size, "seed": seed}
    for split, count in (("train", train_images), ("val", val_images)):
        payload = _build_split(
            root,
            split,
            count,
            image_size=image_size,
            seed=seed,
            captions_per_image=captions_per_image,
            max_shapes=max_shapes,
        )
        ann_file = ann_dir / f"captions_{split}2014.json"
        _write_json_atomic(ann_file, payload)
        summary[split] = {
            "images": len(payload["images"]),
            "captions": len(payload["annotations"]),
            "annotation_file": str(ann_file),
            "image_dir": str(root / f"{split}2014"),
        }
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cliptune.data.demo_data",
        description="Generate the synthetic shapes dataset in MS COCO 2014 captions layout.",
    )
    parser.add_argument("--root", required=True, help="output directory")
    # One option per dataset.demo key with its config default: the CLI writes what the
    # workflow would, and a key added to the schema becomes an option here.
    for key, value in DEMO.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value,
                            help=f"dataset.demo.{key} (default {value})")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = vars(build_parser().parse_args(argv))
    summary = generate_demo_dataset(args.pop("root"), **args)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
