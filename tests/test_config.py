from dataclasses import dataclass, field
from typing import Literal

import pytest

from vaura.config import ConfigError, flatten, from_dict, to_dict
from vaura.profiles import validate_params


@dataclass
class Inner:
    n: int
    rate: float = 1.0


@dataclass
class Outer:
    mode: Literal["fusion", "prepend"]
    inner: Inner
    tags: list[str] = field(default_factory=list)


def test_from_dict_builds_nested_and_coerces_int_to_float():
    cfg = from_dict(Outer, {"mode": "fusion", "inner": {"n": 3, "rate": 2}, "tags": []})
    assert cfg.inner.n == 3 and isinstance(cfg.inner.rate, float) and cfg.tags == []


@pytest.mark.parametrize("data, key", [
    ({"mode": "fusion", "inner": {"n": 3, "rate": 2.0}}, r"params\.tags"),
    ({"mode": "fusion", "inner": {"n": 3}, "tags": []}, r"params\.inner\.rate"),
])
def test_a_key_with_a_dataclass_default_is_still_required(data, key):
    """One rule: params files name every key; the (paper-valued) dataclass defaults are never filled in."""
    with pytest.raises(ConfigError, match=rf"{key}: missing .*configs/offline\.yaml"):
        from_dict(Outer, data)


def test_a_section_check_failure_is_a_config_error_naming_the_section():
    from vaura.model.config import ModelConfig

    data = to_dict(ModelConfig())
    data["n_head"] = 5  # d_model is not divisible: ModelConfig.__post_init__ refuses it
    with pytest.raises(ConfigError, match=r"params\.model: .*not divisible"):
        from_dict(ModelConfig, data, "params.model")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mode": "fusion", "inner": {"n": 1}, "typo": 1}, "unknown key"),
        ({"mode": "fusion", "tags": []}, r"params\.inner: missing"),
        ({"mode": "concat", "inner": {"n": 1, "rate": 1.0}, "tags": []}, "not one of"),
        ({"mode": "fusion", "inner": {"n": 1.5, "rate": 1.0}, "tags": []}, "expected an integer"),
        ({"mode": "fusion", "inner": {"n": True, "rate": 1.0}, "tags": []}, "expected an integer"),
        ({"mode": "fusion", "inner": {"n": 1, "rate": 1.0}, "tags": "a"}, "expected a list"),
    ],
)
def test_from_dict_rejects_bad_input_with_location(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_error_names_the_dotted_location():
    with pytest.raises(ConfigError, match=r"params\.inner\.n"):
        from_dict(Outer, {"mode": "fusion", "inner": {"n": "x", "rate": 1.0}, "tags": []})


def test_flatten_uses_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_repo_params_yaml_validates(repo_root):
    validate_params(repo_root / "params.yaml")


def test_unknown_top_level_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown section"):
        validate_params({"profile": "offline", "seed": 0, "paths": {}, "bogus": {}})
