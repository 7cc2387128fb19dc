"""Regenerate the key tables of config/README.md from the config schema.

The schema (workflow/schemas/config.schema.yaml) is the one source of every
key, default and meaning; the README keeps its hand-written prose, and each
table sits between markers naming the top-level keys it documents:

    <!-- config-table: dataset -->
    ...generated...
    <!-- /config-table -->

Usage: ``PYTHONPATH=workflow python tools/config_docs.py`` (rewrites the file)
or ``--check`` (exit 1 when the committed file is stale). tests/test_config_docs.py
runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from cliptune.config.datasets import (
    COCO_DOWNLOAD_ROOT,
    COCO_TRAIN_IMAGES,
    DEMO_ROOT,
    KAGGLE_IMAGES,
    KARPATHY_FILES,
    SELECT_IMAGES,
    SELECT_SPLIT,
    SOURCE_SPLITS,
)
from cliptune.config.schema import is_section, leaf_default, load_schema, subschema

README = Path(__file__).resolve().parents[1] / "config" / "README.md"
TABLE = re.compile(r"(<!-- config-table: ([^>]*?) -->\n)(.*?)(<!-- /config-table -->)", re.S)
# Named maps whose entries (a $defs section with a default for each optional key) get
# their own rows: `report.zero_shot.tasks.<name>.classes`, ...
NAMED_MAPS = ("report.zero_shot.tasks",)
LONG_LIST = 4  # longer default lists show their first item and the count


def _splits_default() -> str:
    """SOURCE_SPLITS grouped by identical mapping: `coco/demo: {train: train2014, ...}`."""
    groups: dict[str, list[str]] = {}
    for source, mapping in SOURCE_SPLITS.items():
        text = "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"
        groups.setdefault(text, []).append(source)
    return "; ".join(f"{'/'.join(sources)}: `{text}`" for text, sources in groups.items())


# Defaults resolved per dataset source in cliptune.config.datasets.resolve_dataset (schema: null).
DYNAMIC = {
    "dataset.root": lambda: (
        f"demo: `{DEMO_ROOT}`; download: `{COCO_DOWNLOAD_ROOT}`; download: kaggle: "
        f"`{KAGGLE_IMAGES}`; json/table: the annotations file's folder; otherwise required"),
    "dataset.annotations": lambda: "; ".join(
        [f"{source}: `{{root}}/{name}`" for source, name in KARPATHY_FILES.items()]
        + ["download: kaggle: `results.csv` beside `{root}`"]),
    "dataset.splits": _splits_default,
    "dataset.selection.split": lambda: (
        f"`val` with a `test` split (karpathy_coco/flickr30k), else `{SELECT_SPLIT}` (a "
        "holdout of train)"),
    "dataset.selection.images": lambda: (
        f"`{SELECT_IMAGES}`; demo: `dataset.demo.train_images` × {SELECT_IMAGES}/"
        f"{COCO_TRAIN_IMAGES:,} (at least 2)"),
    "eval.split": lambda: "`test` with a `test` split (karpathy_coco/flickr30k), else `val`",
}


def format_value(value) -> str:
    """A default as YAML flow text in backticks (lists longer than LONG_LIST abridged)."""
    if isinstance(value, list) and len(value) > LONG_LIST:
        return f"`[{json.dumps(value[0], ensure_ascii=False)}, …]` ({len(value)} items)"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, dict) and value:  # one `key: value` per line (hpo.space)
        return "<br>".join(f"`{key}: {_flow(item)}`" for key, item in value.items())
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _flow(value) -> str:
    """A mapping or list as YAML flow text ({low: 1.0e-05, high: 0.01}), one line."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()


def leaf_rows(schema: dict, node: dict, path: tuple[str, ...], required: bool) -> list[str]:
    """Table rows for one key: itself when a leaf, else every leaf below it, in schema order."""
    if is_section(schema, node):
        sub = subschema(schema, node)
        needed = set(sub.get("required", ()))
        rows = []
        for key, child in sub["properties"].items():
            rows += leaf_rows(schema, child, (*path, key), key in needed)
        return rows
    dotted = ".".join(path)
    if required:
        default = "(required)"
    elif dotted in DYNAMIC:
        default = DYNAMIC[dotted]()
    else:
        default = format_value(leaf_default(schema, node, dotted))
    meaning = node.get("description") or subschema(schema, node).get("description")
    if not meaning:
        raise SystemExit(f"config schema: {dotted} has no description; add one")
    meaning = " ".join(meaning.split()).replace("|", "\\|")
    rows = [f"| `{dotted}` | {default} | {meaning} |"]
    if dotted in NAMED_MAPS:  # document the keys of each entry too
        rows += leaf_rows(schema, node["additionalProperties"], (*path, "<name>"), False)
    return rows


def render_table(schema: dict, keys: list[str]) -> str:
    top = schema["properties"]
    unknown = [k for k in keys if k not in top]
    if unknown:
        raise SystemExit(f"config/README.md: marker names {unknown}, not schema keys")
    required = set(schema.get("required", ()))
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in keys:
        rows += leaf_rows(schema, top[key], (key,), key in required)
    return "\n".join(rows) + "\n"


def render(text: str, schema: dict | None = None) -> str:
    """``text`` with every marked table regenerated; each top-level key documented once."""
    schema = schema or load_schema()
    seen: list[str] = []

    def fill(match: re.Match) -> str:
        keys = match.group(2).split()
        seen.extend(keys)
        return match.group(1) + render_table(schema, keys) + match.group(4)

    out = TABLE.sub(fill, text)
    missing = [k for k in schema["properties"] if k not in seen]
    doubled = sorted({k for k in seen if seen.count(k) > 1})
    if missing or doubled:
        raise SystemExit(f"config/README.md tables: undocumented top-level keys {missing}, "
                         f"documented twice {doubled}; edit the <!-- config-table --> markers")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README is stale")
    args = parser.parse_args(argv)
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("config/README.md is stale; run: PYTHONPATH=workflow python "
                  "tools/config_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
