from dataclasses import dataclass, field
from typing import Literal

import pytest

from vaura.config import ConfigError, flatten, from_dict
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
    cfg = from_dict(Outer, {"mode": "fusion", "inner": {"n": 3, "rate": 2}})
    assert cfg.inner.n == 3 and isinstance(cfg.inner.rate, float) and cfg.tags == []


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mode": "fusion", "inner": {"n": 1}, "typo": 1}, "unknown key"),
        ({"mode": "fusion"}, "missing key 'inner'"),
        ({"mode": "concat", "inner": {"n": 1}}, "not one of"),
        ({"mode": "fusion", "inner": {"n": 1.5}}, "expected an integer"),
        ({"mode": "fusion", "inner": {"n": True}}, "expected an integer"),
        ({"mode": "fusion", "inner": {"n": 1}, "tags": "a"}, "expected a list"),
    ],
)
def test_from_dict_rejects_bad_input_with_location(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_error_names_the_dotted_location():
    with pytest.raises(ConfigError, match=r"params\.inner\.n"):
        from_dict(Outer, {"mode": "fusion", "inner": {"n": "x"}})


def test_flatten_uses_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_repo_params_yaml_validates(repo_root):
    validate_params(repo_root / "params.yaml")


def test_unknown_top_level_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown section"):
        validate_params({"profile": "offline", "seed": 0, "paths": {}, "bogus": {}})
