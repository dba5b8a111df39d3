"""Ablation variants: one place applies overrides; profiles declare the paper's and the offline ablation."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vaura.profiles import render
from vaura.variants import VariantError, ablation_config, apply_variant, output_dir, overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _params() -> dict:
    return {
        "paths": {"data": "data"},
        "filter": {"threshold": 0.3, "apply_to": ["train"]},
        "model": {"conditioning": "fusion", "n_layer": 4},
        "ablation": {"baseline": "baseline", "variants": {
            "baseline": {}, "prepend": {"model": {"conditioning": "prepend"}}, "unfiltered": {"filter": {"apply_to": []}},
        }},
    }


def test_a_variant_overrides_only_its_keys_and_leaves_the_baseline_untouched() -> None:
    params = _params()
    pre = apply_variant(params, "prepend")
    assert pre["model"] == {"conditioning": "prepend", "n_layer": 4}
    assert pre["filter"] == params["filter"] and params["model"]["conditioning"] == "fusion"
    assert apply_variant(params, "unfiltered")["filter"] == {"threshold": 0.3, "apply_to": []}
    assert apply_variant(params, "baseline") == params
    assert overrides(params, "prepend") == {"model.conditioning": "prepend"}


@pytest.mark.parametrize("overlay, message", [
    ({"model": {"conditoning": "prepend"}}, r"prepend: model.conditoning: no such parameter"),
    ({"paths": {"data": "elsewhere"}}, r"may not override \['paths'\]"),
    ({"model": "prepend"}, r"model: overrides a section"),
])
def test_bad_overrides_are_errors_naming_the_key(overlay, message) -> None:
    params = _params()
    params["ablation"]["variants"]["prepend"] = overlay
    with pytest.raises(VariantError, match=message):
        ablation_config(params)


def test_unknown_variant_and_missing_baseline_are_errors() -> None:
    with pytest.raises(VariantError, match="no variant 'nope'"):
        apply_variant(_params(), "nope")
    params = _params()
    params["ablation"]["baseline"] = "fusion"
    with pytest.raises(VariantError, match="'fusion' is not one of the variants"):
        ablation_config(params)


def test_outputs_of_a_variant_live_under_its_own_folder() -> None:
    assert output_dir("data", "train", "prepend") == Path("data/train/prepend")
    assert output_dir("data", "train", None) == Path("data/train")


def test_profiles_declare_the_offline_and_paper_ablations() -> None:
    offline = yaml.safe_load(render("offline", CONFIGS))
    assert list(ablation_config(offline).variants) == ["baseline", "prepend", "unfiltered"]
    assert apply_variant(offline, "unfiltered")["filter"]["apply_to"] == []
    paper = yaml.safe_load(render("paper", CONFIGS))
    thresholds = sorted(apply_variant(paper, n)["filter"]["threshold"] for n in list(ablation_config(paper).variants)
                        if apply_variant(paper, n)["model"]["conditioning"] == "fusion")
    assert thresholds == [0.0, 0.2, 0.3, 0.4]
    assert [n for n in list(ablation_config(paper).variants) if apply_variant(paper, n)["model"]["conditioning"] == "prepend"]
    assert paper["report"]["cfg_scale"] == 6.0  # no onset ground truth on real data: the paper's γ
