"""The schema is the one source of config defaults and docs: DEFAULTS and the README agree."""

from __future__ import annotations

import copy
import importlib.util

import pytest

from cliptune.config.datasets import SOURCE_SPLITS
from cliptune.config.load import DEFAULTS, deep_merge
from cliptune.config.schema import (
    is_section,
    load_schema,
    schema_defaults,
    subschema,
    validate,
)

REGENERATE = "PYTHONPATH=workflow python tools/config_docs.py  (or: make config-docs)"


@pytest.fixture(scope="module")
def config_docs(repo):
    spec = importlib.util.spec_from_file_location("config_docs", repo / "tools" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema_leaves(schema, node, path=()):
    """(dotted key, node, required) for every leaf below node, $refs followed."""
    node = subschema(schema, node)
    needed = set(node.get("required", ()))
    for key, sub in node["properties"].items():
        if is_section(schema, sub):
            yield from _schema_leaves(schema, sub, (*path, key))
        else:
            yield ".".join((*path, key)), sub, key in needed


# Leaves whose default is itself a mapping (dotted key -> search range), not a section.
MAPPING_LEAVES = {"hpo.space"}


def _default_leaves(tree, path=()):
    for key, value in tree.items():
        dotted = ".".join((*path, key))
        # A section ({} is a leaf's empty default; a mapping leaf's default is a leaf too).
        if isinstance(value, dict) and value and dotted not in MAPPING_LEAVES:
            yield from _default_leaves(value, (*path, key))
        else:
            yield ".".join((*path, key)), value


def test_every_schema_leaf_has_a_default_and_description():
    schema = load_schema()
    for dotted, node, required in _schema_leaves(schema, schema):
        target = subschema(schema, node)
        if not required:
            assert "default" in node or "default" in target, f"{dotted} has no default"
        assert node.get("description") or target.get("description"), f"{dotted}: no description"


def test_defaults_equal_schema_defaults_leaf_by_leaf():
    schema = load_schema()
    from_schema = {}
    for dotted, node, required in _schema_leaves(schema, schema):
        if not required:
            from_schema[dotted] = node.get("default", subschema(schema, node).get("default"))
    assert dict(_default_leaves(DEFAULTS)) == from_schema


def test_defaults_satisfy_their_own_schema():
    minimal = {"dataset": {"name": "d", "source": "demo"}, "variants": {"baseline": {}}}
    validate(deep_merge(DEFAULTS, minimal))


def test_a_key_without_default_is_named():
    schema = copy.deepcopy(load_schema())
    del schema["$defs"]["train"]["properties"]["lr"]["default"]
    with pytest.raises(RuntimeError, match=r"train\.lr has no 'default:'"):
        schema_defaults(schema)


def test_readme_tables_are_generated_from_schema(repo, config_docs):
    readme = (repo / "config" / "README.md").read_text()
    assert config_docs.render(readme) == readme, f"config/README.md is stale; run {REGENERATE}"


def test_readme_shows_per_source_defaults(repo):
    readme = (repo / "config" / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `dataset.splits`"))
    for source, mapping in SOURCE_SPLITS.items():
        assert source in row and ", ".join(f"{k}: {v}" for k, v in mapping.items()) in row


def test_generator_rejects_an_undocumented_section(repo, config_docs):
    readme = (repo / "config" / "README.md").read_text()
    without_hpo = readme.replace("<!-- config-table: hpo -->", "<!-- dropped -->")
    with pytest.raises(SystemExit, match=r"undocumented top-level keys \['hpo'\]"):
        config_docs.render(without_hpo)
