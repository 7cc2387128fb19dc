"""Zero-shot prompts: class names written into templates with the right article.

Templates hold one placeholder:

* ``{article}``: the class with its indefinite article: "an apple", "a person",
  "a unicorn", "an hour glass", but "skis" and "broccoli" (plural / mass nouns take
  none) and "the sky" (a class written with its own article is used as it is);
* ``{}``: the bare class name, its own leading article removed ("the large {}" never
  reads "the large a person").

A literal ``a {}`` / ``an {}`` in a template (CLIP's own "a photo of a {}.") means
"the class's indefinite article" and is read as ``{article}``, so no template can
produce "a photo of a apple" or "a photo of a a person".

The article of a class comes from, in order: a leading a/an/the in its name; the
``article`` of its mapping form (``{name: broccoli, article: ""}``); a heuristic: none
for a plural (last word ending in -s, not -ss/-us; an irregular plural such as
"people" first or last) or a listed mass noun, else a/an by
the sound of the first word (vowel letter, silent h, "uni-"/"eu-"/"one" sound like a
consonant, spelled-out acronyms by their first letter's name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ARTICLES = ("a", "an", "the")
ARTICLE_SLOT, BARE_SLOT = "{article}", "{}"
# Uncountable nouns common in image classes: "a photo of broccoli", not "of a broccoli".
MASS_NOUNS = frozenset({
    "broccoli", "bread", "food", "furniture", "grass", "hair", "luggage", "meat", "pasta",
    "rice", "sand", "snow", "traffic", "water", "clothing", "equipment", "fruit",
})
# Irregular plurals: "a photo of people", never "of a people".
IRREGULAR_PLURALS = frozenset({"people", "children", "men", "women", "mice", "geese", "teeth",
                               "feet"})
# Vowel letters read as a consonant ("a unicorn", "a one-way sign") and silent h's.
_VOWEL_AS_CONSONANT = ("uni", "use", "usu", "uten", "uku", "eu", "one", "once", "ewe")
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")
# Letters whose spoken name starts with a vowel sound: "an SUV", "an LED lamp".
_VOWEL_SOUND_LETTERS = set("aefhilmnorsx")
_LEGACY_ARTICLE = re.compile(r"\b([Aa]n?) \{\}")


@dataclass(frozen=True)
class ClassName:
    """One class: ``name`` as shown in figures, ``bare`` (no article) and the article
    its ``{article}`` form uses ("" for none)."""
    name: str
    bare: str
    article: str
    keywords: tuple[str, ...]  # lower-case phrases that label it from captions

    @property
    def with_article(self) -> str:
        return f"{self.article} {self.bare}" if self.article else self.bare


def indefinite_article(phrase: str) -> str:
    """'a', 'an' or '' (plural / mass noun) for a bare noun phrase."""
    words = phrase.split()
    last, first = words[-1].lower(), words[0]
    if first.lower() in IRREGULAR_PLURALS:  # "people playing baseball"
        return ""
    if last in MASS_NOUNS or last in IRREGULAR_PLURALS or (last.endswith("s") and not last.endswith(("ss", "us"))):
        return ""
    if first.isupper() and len(first) > 1:  # an acronym, spelled out: "an SUV", "a TV"
        return "an" if first[0].lower() in _VOWEL_SOUND_LETTERS else "a"
    low = first.lower()
    if low.startswith(_SILENT_H):
        return "an"
    if low.startswith(_VOWEL_AS_CONSONANT):
        return "a"
    return "an" if low[0] in "aeiou" else "a"


def class_name(spec: str | Mapping) -> ClassName:
    """A class from its config form: a string, or ``{name, article?, keywords?}``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    name = " ".join(str(spec["name"]).split())
    head, _, rest = name.partition(" ")
    if head.lower() in ARTICLES and rest:
        bare, article = rest, head
        if "article" in spec and spec["article"] != head.lower():
            raise ValueError(f"class {name!r} starts with the article {head!r} but also sets "
                             f"article: {spec['article']!r}; keep one of them")
    else:
        bare = name
        article = spec["article"] if "article" in spec else indefinite_article(name)
    keywords = tuple(k.lower() for k in spec.get("keywords") or [bare])
    return ClassName(name, bare, article, keywords)


def check_templates(templates: Sequence[str], where: str = "report.zero_shot.templates",
                    ) -> list[str]:
    """Templates in their ``{article}`` / ``{}`` form, each with exactly one slot."""
    out = [_LEGACY_ARTICLE.sub(lambda m: "{Article}" if m.group(1)[0] == "A"
                               else ARTICLE_SLOT, t) for t in templates]
    bad = [t for t, o in zip(templates, out, strict=True)
           if o.count(BARE_SLOT) + o.lower().count(ARTICLE_SLOT) != 1]
    if bad or not templates:
        raise ValueError(
            f"{where}: every template needs exactly one placeholder, '{{}}' (the bare class "
            f"name) or '{{article}}' (the class with its article), got {bad or list(templates)!r}")
    return out


def render(template: str, cls: ClassName) -> str:
    """One prompt: ``template`` (from check_templates) with ``cls`` written in."""
    if "{Article}" in template:
        text = cls.with_article
        return template.replace("{Article}", text[:1].upper() + text[1:])
    if ARTICLE_SLOT in template:
        return template.replace(ARTICLE_SLOT, cls.with_article)
    return template.replace(BARE_SLOT, cls.bare)
