"""The config schema: the one source of every key's default and meaning, and validation.

``DEFAULTS`` is read from the schema's ``default:`` fields (config/README.md's tables
from its ``description`` fields, by tools/config_docs.py); ``validate`` turns the first
schema violation into one message naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key and the fix."""


def _path_str(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


@cache
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def subschema(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return schema["$defs"][ref.split("/")[-1]]
    return node


def is_section(schema: dict, node: dict) -> bool:
    """A mapping with named keys (recursed into); anything else is a leaf with one default."""
    node = subschema(schema, node)
    return node.get("type") == "object" and "properties" in node


def leaf_default(schema: dict, node: dict, where: str) -> Any:
    """A leaf's ``default:``, given beside a ``$ref`` or in the definition it points to."""
    for candidate in (node, subschema(schema, node)):
        if "default" in candidate:
            return copy.deepcopy(candidate["default"])
    raise RuntimeError(
        f"{SCHEMA_PATH.name}: {where} has no 'default:'; every key the schema does not list "
        "under 'required' needs one (the schema is the only place defaults live)"
    )


def schema_defaults(schema: dict, node: dict | None = None, path: tuple = ()) -> dict:
    """Nested defaults of every non-required key, read from the schema's ``default:`` fields."""
    node = subschema(schema, schema if node is None else node)
    required = set(node.get("required", ()))
    out: dict[str, Any] = {}
    for key, sub in node["properties"].items():
        if is_section(schema, sub):
            out[key] = schema_defaults(schema, sub, (*path, key))
        elif key not in required:
            out[key] = leaf_default(schema, sub, _path_str((*path, key)))
    return out


# Every default lives in the schema; this is the view the code merges configs over.
DEFAULTS: dict[str, Any] = schema_defaults(load_schema())


def _explain(error: jsonschema.ValidationError, schema: dict) -> str:
    """Turn a jsonschema error into one line that names the key and what is allowed."""
    where = _path_str(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(subschema(schema, error.schema).get("properties", {}))
        extra = re.findall(r"'([^']+)'", error.message.split("(")[-1])
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        prefix = f"{where}." if error.absolute_path else ""
        return (
            f"unknown key {prefix}{', '.join(hints)}; allowed keys here: {', '.join(allowed)}"
        )
    if error.validator == "enum":
        return f"{where} = {error.instance!r} is not allowed; use one of {error.validator_value}"
    if error.validator == "type":
        return f"{where} = {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return _explain(best, schema)
    return f"{where}: {error.message}"


def validate(config: Mapping) -> None:
    """Raise ConfigError describing the first (most relevant) schema violation."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"config error: {_explain(best, schema)}")
