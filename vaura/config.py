"""Typed configuration read from ``params.yaml``.

Every section is a dataclass; loading rejects unknown keys, missing keys and wrong types, so a typo in
``params.yaml`` (or a key a refactor stopped reading) fails loudly instead of silently doing nothing.
Sections are owned by the module that reads them; this file holds only the mechanism (the registry of all
sections is :data:`vaura.profiles.SECTIONS`, which imports them, so this module stays on the ground floor).

One rule for missing keys: a params file must set every key of every section it has; a missing one is a
:class:`ConfigError` naming ``section.key`` and ``configs/offline.yaml``, where each key is documented. The
dataclass defaults (mostly the paper's values, e.g. ``train.total_steps`` 200000) serve Python callers only
(tests, notebooks, ``vaura preprocess --input/--output``): loading a params file never falls back to them, so
an omission cannot silently pick a value no profile chose.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


DOCUMENTED_IN = "configs/offline.yaml"  # the full, commented params file every profile starts from


class ConfigError(ValueError):
    """A params file that does not match the typed schema."""


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric params key (each item, for a list); ``None`` bounds are open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]
        return " and ".join(parts)

    def contains(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with a range that :func:`from_dict` checks at load time (``-1`` batches, a NaN threshold
    or ``0`` workers fail with the key and the allowed range, not later with an empty result or a traceback)."""
    meta = {"range": Range(ge, gt, le, lt)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _check_range(value: Any, rng: Range | None, where: str) -> None:
    if rng is None or value is None:
        return
    for i, v in enumerate(value if isinstance(value, list) else [value]):
        if not rng.contains(v):
            at = f"{where}[{i}]" if isinstance(value, list) else where
            raise ConfigError(f"{at}: {v!r} is out of range; allowed: {rng.describe()}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _check_type(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            raise ConfigError(f"{where}: expected a number, got the string {value!r} (YAML 1.1 reads a number in "
                              f"exponent form as text unless it has a dot and a signed exponent: write "
                              f"{float(value)!r} or {_yaml_exponent(value.strip())})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported schema type {tp}")


def from_dict(cls: type, data: Any, where: str = "params") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly: unknown, missing or mistyped keys raise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    missing = [name for name in fields if name not in data]
    if missing:
        keys = ", ".join(f"{where}.{name}" for name in missing)
        raise ConfigError(f"{keys}: missing (every key must be set; {DOCUMENTED_IN} documents each one)")
    kwargs = {name: _check_type(data[name], hints[name], f"{where}.{name}") for name in fields}
    for name, f in fields.items():
        _check_range(kwargs[name], f.metadata.get("range"), f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the section's own consistency checks (__post_init__)
        raise ConfigError(f"{where}: {exc}") from exc


_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _yaml_exponent(text: str) -> str:
    """``3e-1`` → ``3.0e-1``: the spelling a YAML 1.1 loader (PyYAML, DVC) reads as a float."""
    mantissa, exponent = text.lower().split("e")
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    return f"{mantissa}e{exponent if exponent[:1] in '+-' else '+' + exponent}"


def to_dict(obj: Any) -> dict:
    """Plain-dict view of a config (for MLflow params and the resolved-config artifact)."""
    return dataclasses.asdict(obj)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: MLflow params and DVC ``-S`` overrides use dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_section(cls: type, name: str, params: str | Path | Mapping = "params.yaml") -> Any:
    """Load one section (e.g. ``load_section(ModelConfig, "model")``) strictly.

    Stages call this for the sections they own; :func:`vaura.profiles.validate_params` checks the whole file.
    """
    data = params if isinstance(params, Mapping) else load_yaml(params)
    if name not in data:
        raise ConfigError(f"params: missing section '{name}'")
    return from_dict(cls, data[name], f"params.{name}")


@dataclass
class PathsConfig:
    """Where pipeline outputs live (relative to the root: the params file's folder). Pretrained weights are
    named one file per key (``visual.weights``, ``evaluate.*_weights``, ...)."""

    data: str = "data"
    reports: str = "reports"
