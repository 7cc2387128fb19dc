"""Truthful, differently worded captions of a demo scene (cliptune.demo.scenes):
synonym tables and sentence templates, several captions per image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cliptune.demo.scenes import COLOURS, SceneSpec, ShapeSpec, pick

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
    words = [pick(rng, _SIZE_WORDS[s.size])] if size else []
    suffix = ""
    if texture:
        if s.texture != "solid" and rng.random() < 0.4:
            suffix = " " + pick(rng, _TEXTURE_SUFFIX[s.texture])
        else:
            words.append(pick(rng, _TEXTURE_PREFIX[s.texture]))
    words += [pick(rng, _COLOUR_WORDS[s.colour]), pick(rng, _SHAPE_WORDS[s.shape])]
    phrase = " ".join(w for w in words if w)
    return (_article(phrase) if article else phrase) + suffix


def _where(s: ShapeSpec, rng: np.random.Generator) -> str:
    return pick(rng, _POSITION_WORDS[s.position])


def _bg(scene: SceneSpec, rng: np.random.Generator) -> str:
    return pick(rng, _BACKGROUND_WORDS[scene.background])


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
    noun = pick(rng, ("shapes", "objects"))
    return f"{_cap(_count(n))} {noun} on {_article(bg)} background: {_join(parts)}."


def _t_there_is(scene, rng):
    parts = [f"{_noun_phrase(s, rng)} {_where(s, rng)}" for s in _ordered(scene, rng)]
    return f"There is {_join(parts)}."


def _t_salient(scene, rng):
    s = scene.shapes[0]
    head = f"{_noun_phrase(s, rng)} {_where(s, rng)}"
    n_other = len(scene.shapes) - 1
    if n_other == 0:
        tail = pick(rng, ("", " on its own", " and nothing else"))
    else:
        other = "shape" if n_other == 1 else "shapes"
        tail = pick(rng, (f" next to {_count(n_other)} other {other}", " among other shapes"))
    return _cap(head + tail + ".")


def _t_background_first(scene, rng):
    parts = [_noun_phrase(s, rng) for s in _ordered(scene, rng)]
    lead = pick(rng, ("background", "backdrop"))
    return _cap(f"{_article(_bg(scene, rng))} {lead} with {_join(parts)}.")


def _t_position_first(scene, rng):
    parts = [f"{_where(s, rng)} {pick(rng, ('there is', 'sits', 'is'))} {_noun_phrase(s, rng)}"
             for s in sorted(scene.shapes, key=lambda s: s.cell)]
    return _cap("; ".join(parts) + ".")


def _t_picture(scene, rng):
    lead = pick(rng, ("a picture of", "an image showing", "a drawing of", "a simple scene with"))
    parts = [f"{_noun_phrase(s, rng)} {_where(s, rng)}" for s in _ordered(scene, rng)]
    return _cap(f"{lead} {_join(parts)}.")


def _t_plain(scene, rng):
    # Only colour + shape here, so identical objects are merged ("two red stars").
    groups: dict[tuple[str, str], int] = {}
    for s in _ordered(scene, rng):
        groups[(s.colour, s.shape)] = groups.get((s.colour, s.shape), 0) + 1
    parts = []
    for (colour, shape), k in groups.items():
        words = f"{pick(rng, _COLOUR_WORDS[colour])} {pick(rng, _SHAPE_WORDS[shape])}"
        plural = words + ("es" if words.endswith("s") else "s")
        parts.append(_article(words) if k == 1 else f"{_count(k)} {plural}")
    prep = pick(rng, ("against", "over", "on"))
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
