"""``hpo.space``: the Optuna search space, keyed by the dotted path of a variant's key.

    hpo:
      space:
        train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}      # float range, log-uniform
        train.batch_size: {choices: [32, 64, 128]}            # categorical
        model.dual_encoder.vision.depth: {low: 4, high: 12, step: 2}  # integer range
        model.dual_encoder.{vision,text}.dropout: {choices: [0.05, 0.1]}  # one value, both keys

Any numeric or categorical key of a variant's ``model`` or ``train`` section can be
searched; a key left out keeps the variant's value. A ``{a,b}`` group in a key ties
several keys to one sampled value (one Optuna parameter). Each key is checked against the
config schema at load time (a mistyped path, a range on a non-numeric key, a value the
key does not allow, ``low >= high``, ``log`` with ``low <= 0`` all fail naming the
key), so a search never starts with a space it cannot sample.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema

from cliptune.config.schema import ConfigError, is_section, load_schema, subschema

# The trial is trained on the variant's cached captions/images and downloaded weights,
# so keys that choose those inputs (or only the reported evaluation) cannot vary per trial.
SEARCHABLE_SECTIONS = ("model", "train")
FIXED = {
    "model.kind": "it picks the model family and its pretrained inputs",
    "model.weights": "it picks the pretrained weights the job downloads",
    "model.clip.model": "it picks the checkpoint the job downloads",
    "model.dual_encoder.tokenizer": "it picks the tokenizer files the job reads",
    "train.seeds": "replicate seeds are separate runs, not a hyperparameter",
    "train.devices": "the job's GPU count is fixed when it is scheduled",
    "train.nodes": "the job's node count is fixed when it is scheduled",
    "train.resume_from": "every trial trains from scratch in a scratch folder of its own",
    "train.keep_epoch_checkpoints": "a trial's folder is deleted when it ends",
    "train.keep_epoch_checkpoints_every": "a trial's folder is deleted when it ends",
    "train.subset": "it picks the training images the job reads (their caches)",
}
RANGE_KEYS = {"low", "high", "log", "step"}
_GROUP = re.compile(r"\{([^{}]*)\}")


def expand(key: str) -> list[str]:
    """The dotted paths one space key sets: ``a.{b,c}.d`` -> ``a.b.d``, ``a.c.d``."""
    groups = [[alt.strip() for alt in g.split(",")] for g in _GROUP.findall(key)]
    pieces = _GROUP.split(key)[::2]  # the text around the groups
    paths = []
    for combo in itertools.product(*groups):
        paths.append("".join(p + c for p, c in zip(pieces, (*combo, ""), strict=True)))
    return paths


@cache
def leaf_schemas() -> dict[str, dict]:
    """Every searchable dotted path -> its schema node (with ``$defs`` to resolve refs)."""
    schema = load_schema()
    out: dict[str, dict] = {}

    def walk(node: dict, path: tuple[str, ...]) -> None:
        if is_section(schema, node):
            for key, child in subschema(schema, node)["properties"].items():
                walk(child, (*path, key))
        else:
            out[".".join(path)] = {**node, "$defs": schema["$defs"]}

    variant = schema["$defs"]["variant"]["properties"]
    for section in SEARCHABLE_SECTIONS:
        walk(variant[section], (section,))
    return out


def _leaf(path: str) -> dict:
    leaves = leaf_schemas()
    if path in FIXED:
        raise ConfigError(f"config error: hpo.space.{path} cannot be searched: {FIXED[path]}; "
                          "make each value its own variant instead")
    if path not in leaves:
        close = difflib.get_close_matches(path, leaves, n=1, cutoff=0.5)
        if not close:  # a key without its section prefix (batch_size)
            close = [p for p in leaves if p.endswith("." + path)][:1]
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"config error: hpo.space.{path} is not a searchable config key{hint}; name a "
            f"key of a variant's {' or '.join(SEARCHABLE_SECTIONS)} section by its dotted "
            "path, e.g. train.lr or model.dual_encoder.vision.depth")
    return leaves[path]


def _types(leaf: dict) -> set[str]:
    kind = subschema(load_schema(), leaf).get("type", ())
    return {kind} if isinstance(kind, str) else set(kind)


def _check_value(path: str, leaf: dict, what: str, value: Any) -> None:
    errors = list(jsonschema.Draft202012Validator(leaf).iter_errors(value))
    if errors:
        raise ConfigError(f"config error: hpo.space.{path}: {what} {value!r} is not a valid "
                          f"value of {path} ({errors[0].message})")


def check_space(space: Mapping) -> None:
    """Raise ConfigError naming the first key of ``space`` that cannot be sampled."""
    if not space:
        raise ConfigError("config error: hpo.space is empty; list at least one key to search "
                          "(e.g. train.lr: {low: 1.0e-5, high: 1.0e-3, log: true})")
    for key, spec in space.items():
        paths = expand(key)
        leaves = [_leaf(path) for path in paths]  # first: a wrong path is the likeliest error
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"config error: hpo.space.{key} = {spec!r}: give a range {{low, high, log?, "
                "step?}} or a list of values {choices: [...]}")
        if len(set(paths)) < len(paths):
            raise ConfigError(f"config error: hpo.space.{key}: its {{a,b}} group repeats a key")
        if len({is_integer(path) for path in paths}) > 1:
            raise ConfigError(f"config error: hpo.space.{key} ties integer and non-integer "
                              f"keys {paths}; one sampled value cannot fit both")
        for path, leaf in zip(paths, leaves, strict=True):
            if "choices" in spec:
                _check_choices(path, spec, leaf)
            else:
                _check_range(path, spec, leaf)


def _check_choices(path: str, spec: Mapping, leaf: dict) -> None:
    extra = sorted(set(spec) - {"choices"})
    if extra:
        raise ConfigError(f"config error: hpo.space.{path} mixes choices with {extra}; "
                          "give either choices or a range (low, high, log, step)")
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"config error: hpo.space.{path}.choices must be a non-empty list")
    if len({repr(c) for c in choices}) < len(choices):
        raise ConfigError(f"config error: hpo.space.{path}.choices {choices} repeats a value")
    for value in choices:
        if isinstance(value, (list, dict)):
            raise ConfigError(f"config error: hpo.space.{path}.choices: {value!r} is not a "
                              "single value (numbers, strings, booleans or null)")
        _check_value(path, leaf, "choice", value)


def _check_range(path: str, spec: Mapping, leaf: dict) -> None:
    unknown = sorted(set(spec) - RANGE_KEYS)
    missing = sorted({"low", "high"} - set(spec))
    if unknown or missing:
        raise ConfigError(f"config error: hpo.space.{path}: a range takes low, high and "
                          f"optionally log and step (missing {missing}, unknown {unknown}); "
                          "for a list of values use {choices: [...]}")
    types = _types(leaf)
    if not types & {"number", "integer"}:
        raise ConfigError(f"config error: hpo.space.{path} is not numeric (type "
                          f"{sorted(types) or 'enum'}); search it with {{choices: [...]}}")
    integer = "number" not in types
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is None and name == "step":
            continue
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"config error: hpo.space.{path}.{name} = {value!r} must be "
                              f"{kind} ({path} is {'integer' if integer else 'numeric'})")
    if not isinstance(log, bool):
        raise ConfigError(f"config error: hpo.space.{path}.log must be true or false")
    if low >= high:
        raise ConfigError(f"config error: hpo.space.{path}: low = {low} must be below "
                          f"high = {high}")
    if log and low <= 0:
        raise ConfigError(f"config error: hpo.space.{path}: log: true needs low > 0 "
                          f"(got {low})")
    if step is not None and (log or step <= 0):
        raise ConfigError(f"config error: hpo.space.{path}: step must be > 0 and cannot be "
                          "combined with log: true")
    for name in ("low", "high"):
        _check_value(path, leaf, name, spec[name])


def is_integer(path: str) -> bool:
    return "number" not in _types(_leaf(path))


def suggest(trial, space: Mapping) -> dict[str, Any]:
    """One point of ``space`` (already checked): dotted path -> value, named by its path."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if "choices" in spec:
            out[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif is_integer(expand(key)[0]):
            out[key] = trial.suggest_int(key, spec["low"], spec["high"],
                                         step=spec.get("step") or 1, log=spec.get("log", False))
        else:
            out[key] = trial.suggest_float(key, spec["low"], spec["high"],
                                           step=spec.get("step"), log=spec.get("log", False))
    return out


def nest(params: Mapping[str, Any]) -> dict:
    """``{"train.lr": 1e-4}`` -> ``{"train": {"lr": 1e-4}}`` (a variant override); a tied
    key sets each of its paths."""
    out: dict = {}
    for key, value in params.items():
        for path in expand(key):
            *parents, leaf = path.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = copy.deepcopy(value)
    return out


def check_applies(space: Mapping, variant: Mapping) -> None:
    """Every searched model key must belong to ``variant``'s model kind (else a trial
    would change a setting that model never reads: a search over nothing)."""
    kind = variant["model"]["kind"]
    for path in (p for key in space for p in expand(key)):
        parts = path.split(".")
        if parts[0] != "model":
            continue
        owner = parts[1] if parts[1] in ("clip", "dual_encoder") else "resnet"
        if owner != kind:
            raise ConfigError(
                f"config error: hpo.space.{path} applies to model.kind {owner}, but variant "
                f"{variant['name']!r} is {kind}; drop the key or search another variant")
