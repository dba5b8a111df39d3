"""Parameter profiles: the committed params.yaml is the offline profile; overlays change only their own keys."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaura.config import ConfigError, flatten
from vaura.profiles import ProfileError, render, switch, validate_params

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def test_committed_params_are_the_offline_profile() -> None:
    assert (REPO / "params.yaml").read_text() == (CONFIGS / "offline.yaml").read_text(), (
        "params.yaml and configs/offline.yaml differ: after editing params.yaml run `cp params.yaml configs/offline.yaml`"
    )
    assert render("offline", CONFIGS) == (REPO / "params.yaml").read_text()


@pytest.mark.parametrize("name", ["micro", "paper"])
def test_overlay_changes_only_its_keys_and_keeps_comments(name: str) -> None:
    base = flatten(yaml.safe_load((CONFIGS / "offline.yaml").read_text()))
    overlay = flatten(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))
    text = render(name, CONFIGS)
    got = flatten(yaml.safe_load(text))
    validate_params(yaml.safe_load(text))
    assert got["profile"] == name
    changed = {k for k in base if got[k] != base[k]} - {"profile"}
    assert changed == {k for k, v in overlay.items() if base[k] != v}
    for key, value in overlay.items():
        assert got[key] == value
    assert text.count("#") >= (CONFIGS / "offline.yaml").read_text().count("#") - 2


def test_paper_profile_uses_the_published_setup() -> None:
    got = flatten(yaml.safe_load(render("paper", CONFIGS)))
    assert (got["model.n_layer"], got["model.d_model"], got["model.n_head"]) == (24, 1536, 16)
    assert (got["codec.kind"], got["codec.n_quantizers"]) == ("dac44", 9)
    assert (got["visual.kind"], got["visual.dim"]) == ("segment_avclip", 768)
    assert got["filter.threshold"] == 0.3 and got["generation.cfg_scale"] == 6.0


def test_unknown_overlay_key_is_refused_with_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "offline.yaml").write_text((CONFIGS / "offline.yaml").read_text())
    (tmp_path / "typo.yaml").write_text("model:\n  n_layers: 2\n")
    with pytest.raises(ProfileError, match=r"typo\.yaml: key 'model\.n_layers' does not exist"):
        render("typo", tmp_path)


def test_overlay_with_a_wrong_type_fails_validation(tmp_path: Path) -> None:
    (tmp_path / "offline.yaml").write_text((CONFIGS / "offline.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("model:\n  n_layer: four\n")
    with pytest.raises(ConfigError, match="model.n_layer"):
        render("bad", tmp_path)


def test_switch_and_check_via_the_cli(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((CONFIGS / "offline.yaml").read_text())
    cli = [sys.executable, "-m", "vaura.cli", "profile"]
    check = subprocess.run(cli + ["micro", "--check", "--params", str(params), "--configs", str(CONFIGS)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "differs" in check.stdout
    done = subprocess.run(cli + ["micro", "--params", str(params), "--configs", str(CONFIGS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(params.read_text())["profile"] == "micro"
    assert switch("micro", params, CONFIGS) is False  # already there: file untouched
    missing = subprocess.run(cli + ["nosuch", "--params", str(params), "--configs", str(CONFIGS)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no such profile" in missing.stderr
