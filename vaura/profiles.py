"""Parameter profiles: ``configs/offline.yaml`` is the full, commented base; other profiles are overlays.

An overlay (``configs/paper.yaml``, ``configs/micro.yaml``) lists only the keys whose values differ from the
offline profile. Applying it keeps the base's comments and key order (ruamel round-trip), refuses keys the
base does not have (a typo would otherwise silently do nothing), and validates the result strictly
(:func:`validate_params` over :data:`SECTIONS`, the registry of every section's schema) before ``params.yaml`` is replaced atomically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import yaml
from ruamel.yaml import YAML

from vaura.cache import CacheConfig
from vaura.codec.config import CodecConfig
from vaura.config import ConfigError, PathsConfig, load_section, load_yaml
from vaura.curation.filtering import FilterConfig
from vaura.curation.scoring import ScoreConfig
from vaura.data.preprocess import PreprocessConfig
from vaura.data.sources import AcquireConfig
from vaura.data.synthetic import SyntheticConfig
from vaura.eval.evaluate import EvaluateConfig
from vaura.eval.report import ReportConfig
from vaura.generate.sweep import SweepConfig
from vaura.io import atomic_write_text
from vaura.model.config import GenerationConfig, ModelConfig
from vaura.tracking import TrackingConfig
from vaura.train.config import TrainConfig
from vaura.visual.config import AVClipConfig, VisualConfig

BASE_PROFILE = "offline"
TOP_SCALARS = ("profile", "seed")
SECTIONS: dict[str, type] = {
    # section name -> schema dataclass, owned by the module that reads the section.
    "paths": PathsConfig,
    "synthetic": SyntheticConfig,
    "acquire": AcquireConfig,
    "preprocess": PreprocessConfig,
    "codec": CodecConfig,
    "train": TrainConfig,
    "tracking": TrackingConfig,
    "visual": VisualConfig,
    "avclip": AVClipConfig,
    "score": ScoreConfig,
    "filter": FilterConfig,
    "cache": CacheConfig,
    "model": ModelConfig,
    "generation": GenerationConfig,
    "sweep": SweepConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
}


class ProfileError(ConfigError):
    """A profile file that is missing or names keys the base profile does not have."""


def validate_params(params: str | Path | Mapping = "params.yaml") -> dict[str, Any]:
    """Strictly load every section of a params file; unknown top-level sections are errors."""
    data = params if isinstance(params, Mapping) else load_yaml(params)
    unknown = sorted(set(data) - set(SECTIONS) - set(TOP_SCALARS))
    if unknown:
        raise ConfigError(f"params: unknown section(s) {unknown}; allowed: {sorted(set(SECTIONS) | set(TOP_SCALARS))}")
    out: dict[str, Any] = {k: data[k] for k in TOP_SCALARS if k in data}
    for name, cls in SECTIONS.items():
        out[name] = load_section(cls, name, data)
    return out


def available(configs_dir: str | Path = "configs") -> list[str]:
    return sorted(p.stem for p in Path(configs_dir).glob("*.yaml"))


def _merge(base: Any, overlay: Mapping, where: str, source: Path) -> None:
    for key, value in overlay.items():
        if key not in base:
            raise ProfileError(f"{source}: key '{where}{key}' does not exist in the {BASE_PROFILE} profile")
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            _merge(base[key], value, f"{where}{key}.", source)
        else:
            base[key] = value


def render(name: str, configs_dir: str | Path = "configs") -> str:
    """Text of ``params.yaml`` for profile ``name`` (validated; raises ProfileError/ConfigError)."""
    configs_dir = Path(configs_dir)
    base_path = configs_dir / f"{BASE_PROFILE}.yaml"
    path = configs_dir / f"{name}.yaml"
    if not path.exists():
        raise ProfileError(f"{path}: no such profile; available: {available(configs_dir)}")
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 120
    doc = rt.load(base_path.read_text())
    if name != BASE_PROFILE:
        overlay = yaml.safe_load(path.read_text()) or {}
        if not isinstance(overlay, Mapping):
            raise ProfileError(f"{path}: top level must be a mapping")
        _merge(doc, overlay, "", path)
    doc["profile"] = name
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    try:
        validate_params(yaml.safe_load(text))
    except ConfigError as exc:
        raise ProfileError(f"profile '{name}' ({path}) is invalid: {exc}") from exc
    return text


def switch(name: str, params: str | Path = "params.yaml", configs_dir: str | Path = "configs") -> bool:
    """Write ``params.yaml`` for profile ``name``; returns whether the file changed."""
    text = render(name, configs_dir)
    params = Path(params)
    if params.exists() and params.read_text() == text:
        return False
    atomic_write_text(params, text)
    return True
