"""Give ``snakemake --config key=value`` overrides the types a config file would give them.

Snakemake parses a ``--config`` value with ``int``/``float``/``True``/``False`` and
otherwise YAML's BaseLoader, which keeps every scalar a string: ``train='{epochs: 1}'``
arrives as ``{"epochs": "1"}`` and ``include_untrained=false`` as ``"false"``, and the
schema would reject both. Cluster jobs receive the overrides re-serialised the same
way, so the fix belongs where the config is read, not in the command line.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml


def _typed(value: Any) -> Any:
    """A BaseLoader value re-read with safe_load (strings), element-wise in lists/mappings."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:  # e.g. 'a: b: c' is a plain string to the user
            return value
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _typed(v) for k, v in value.items()}
    return value


def _apply(target: dict, overrides: Mapping) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _apply(target[key], value)
        elif key in target and target[key] == value:
            # Only a leaf still holding the command-line string is retyped; a value the
            # override did not set (merged from a config file) keeps its file type.
            target[key] = _typed(value)


def typed_cli_overrides(config: Mapping, overrides: Mapping) -> dict:
    """``config`` (already merged with ``overrides`` by Snakemake) with every value that
    came from ``--config`` re-read as YAML. Returns a new dict."""
    out = copy.deepcopy(dict(config))
    _apply(out, overrides or {})
    return out
