"""Scenes of the synthetic demo dataset: the vocabulary (colours, backgrounds, shapes,
sizes, textures, grid positions), the scene spec each image is drawn from, and its
rendering. Captions are cliptune.demo.captions; the dataset writer is
cliptune.demo.dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from cliptune.config.load import DEFAULTS

DEMO = DEFAULTS["dataset"]["demo"]  # dataset.demo: default scene size and shape count

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
SUPERSAMPLE = 2

_ALLOWED_COLOURS: dict[str, tuple[str, ...]] = {
    bg: tuple(
        c for c, rgb in COLOURS.items() if float(np.linalg.norm(np.subtract(rgb, bg_rgb))) >= MIN_CONTRAST
    )
    for bg, bg_rgb in BACKGROUNDS.items()
}

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


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, max_shapes: int = DEMO["max_shapes"]) -> SceneSpec:
    """Draw a random scene; one shape per grid cell so objects never overlap."""
    if not 1 <= max_shapes <= len(POSITIONS):
        raise ValueError(f"max_shapes must be in 1..{len(POSITIONS)}, got {max_shapes}")
    background = pick(rng, tuple(BACKGROUNDS))
    n = int(rng.integers(1, max_shapes + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    shapes = []
    for cell in cells:
        size = pick(rng, SIZES)
        slack = (1.0 - SIZE_FRACTION[size]) / 2 * 0.8
        dx, dy = (float(v) for v in rng.uniform(-slack, slack, size=2))
        shapes.append(
            ShapeSpec(
                shape=pick(rng, SHAPES),
                colour=pick(rng, _ALLOWED_COLOURS[background]),
                size=size,
                texture=pick(rng, TEXTURES),
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


def render_scene(scene: SceneSpec, image_size: int = DEMO["image_size"]) -> Image.Image:
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
