"""Named ablation variants: the ONE place where a variant's parameter overrides are applied.

params.yaml section ``ablation.variants`` maps a variant name to a nested overlay of the baseline parameters,
e.g. ``prepend: {model: {conditioning: prepend}}``; ``baseline: {}`` is the parameters as they stand. dvc.yaml
expands its per-variant stages (filter, train, sweep, evaluate) with ``foreach: ${ablation.variants}``, and each
stage's ``--variant NAME`` flag calls :func:`apply_variant`, so the pipeline, ``dvc exp run -S`` and the Prefect
``ablation`` flow all read one definition. A variant's outputs live under ``<paths.data>/<stage>/<name>/``.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vaura.config import ConfigError, flatten, load_section

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Sections a variant may not change: where outputs and runs go, and the variant list itself.
FIXED_SECTIONS = ("paths", "tracking", "ablation", "profile")


class VariantError(ConfigError):
    """An unknown variant name or an override that does not match the baseline parameters."""


@dataclass
class AblationConfig:
    """params.yaml section ``ablation``."""

    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"baseline": {}})
    baseline: str = "baseline"


def ablation_config(params: Mapping[str, Any]) -> AblationConfig:
    """The ``ablation`` section, checked: names are path-safe, the baseline exists, every override is valid."""
    cfg: AblationConfig = load_section(AblationConfig, "ablation", params)
    if cfg.baseline not in cfg.variants:
        raise VariantError(f"params.ablation.baseline: {cfg.baseline!r} is not one of the variants "
                           f"{sorted(cfg.variants)}")
    for name in cfg.variants:
        apply_variant(params, name)
    return cfg


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], where: str) -> None:
    for key, value in overlay.items():
        if key not in base:
            raise VariantError(f"{where}{key}: no such parameter in the baseline (a typo would silently do nothing)")
        if isinstance(base[key], Mapping) != isinstance(value, Mapping) and base[key] is not None:
            raise VariantError(f"{where}{key}: overrides a {'section' if isinstance(base[key], Mapping) else 'value'}"
                               f" with {value!r}")
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = copy.deepcopy(value)


def apply_variant(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A copy of ``params`` with variant ``name``'s overrides applied (raises :class:`VariantError`)."""
    variants = (params.get("ablation") or {}).get("variants") or {}
    if name not in variants:
        raise VariantError(f"params.ablation.variants: no variant {name!r}; defined: {sorted(variants)}")
    if not NAME.match(name):
        raise VariantError(f"params.ablation.variants.{name}: a variant name must be a plain folder name")
    overlay = variants[name] or {}
    if not isinstance(overlay, Mapping):
        raise VariantError(f"params.ablation.variants.{name}: expected a mapping of overrides, got {overlay!r}")
    fixed = sorted(set(overlay) & set(FIXED_SECTIONS))
    if fixed:
        raise VariantError(f"params.ablation.variants.{name}: may not override {fixed}")
    out = copy.deepcopy(dict(params))
    _merge(out, overlay, f"params.ablation.variants.{name}: ")
    return out


def overrides(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Variant ``name``'s overrides as dotted keys (``{"model.conditioning": "prepend"}``)."""
    return flatten((params.get("ablation") or {}).get("variants", {}).get(name) or {})


def resolve(params: Mapping[str, Any], variant: str | None) -> dict[str, Any]:
    """The parameters a stage runs with: ``params`` itself, or variant ``variant``'s (``--variant NAME``)."""
    return dict(params) if variant is None else apply_variant(params, variant)


def output_dir(data: str | Path, stage: str, variant: str | None) -> Path:
    """Where a per-variant stage writes: ``<data>/<stage>``, or ``<data>/<stage>/<variant>`` for a variant."""
    return Path(data) / stage if variant is None else Path(data) / stage / variant
