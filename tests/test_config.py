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


def _repo_params(repo_root) -> dict:
    import yaml

    return yaml.safe_load((repo_root / "params.yaml").read_text())


@pytest.mark.parametrize("key, value, allowed", [
    ("sweep.batch_size", -1, ">= 1"),            # was: an empty sweep and empty metrics, exit 0
    ("cache.batch_size", 0, ">= 1"),             # was: a traceback later in the cache stage
    ("train.batch_size", -4, ">= 1"),            # was: a misleading message from the data loader
    ("filter.threshold", 1.5, ">= -1 and <= 1"),  # scores are cosines / correlations in [-1, 1]
    ("model.cfg_dropout", 1.2, ">= 0 and <= 1"),
    ("train.betas", [0.9, 1.0], ">= 0 and < 1"),
    ("sweep.cfg_scales", [1.0, -3.0], ">= 0"),
])
def test_out_of_range_values_fail_at_load_naming_key_and_range(repo_root, key, value, allowed):
    params = _repo_params(repo_root)
    section, name = key.split(".")
    params[section][name] = value
    with pytest.raises(ConfigError) as err:
        validate_params(params)
    assert str(err.value).startswith(f"params.{key}") and f"allowed: {allowed}" in str(err.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(repo_root, value):
    """`filter.threshold: .nan` used to keep 0 train clips and exit 0."""
    params = _repo_params(repo_root)
    params["filter"]["threshold"] = value
    with pytest.raises(ConfigError, match=r"params\.filter\.threshold: .* is not a finite number"):
        validate_params(params)


def test_yaml_exponent_without_dot_is_explained(repo_root, tmp_path):
    import yaml

    text = (repo_root / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["train"]["lr"] = "PLACEHOLDER"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params).replace("PLACEHOLDER", "3e-1"))
    with pytest.raises(ConfigError) as err:
        validate_params(tmp_path / "p.yaml")
    message = str(err.value)
    assert message.startswith("params.train.lr: expected a number, got the string '3e-1'")
    assert "write 0.3 or 3.0e-1" in message
    assert yaml.safe_load("lr: 3.0e-1")["lr"] == 0.3  # the suggested spelling really is a number to YAML 1.1


def test_every_numeric_key_has_a_range():
    """One mechanism for every section: a new numeric key without a range fails here."""
    import dataclasses
    import typing

    from vaura.profiles import SECTIONS

    def unbounded(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                yield from unbounded(tp, f"{prefix}{f.name}.")
            elif any(t in str(tp) for t in ("int", "float")) and "range" not in f.metadata:
                yield prefix + f.name

    assert [k for name, cls in SECTIONS.items() for k in unbounded(cls, f"{name}.")] == []
