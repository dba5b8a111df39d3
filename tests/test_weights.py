"""One error for "pretrained weights missing or mismatched", raised by every pretrained network's loader."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaura.weights import WeightsError, load_released


def _missing_loaders():
    from vaura.codec import load_dac_file
    from vaura.curation.imagebind_score import load_imagebind
    from vaura.eval.passt import load_passt
    from vaura.eval.synchformer import load_synchformer
    from vaura.eval.vggish import load_vggish
    from vaura.model.official import load_official_checkpoint
    from vaura.visual import MotionFormer, MotionFormerSize, load_segment_avclip

    tiny = MotionFormerSize(dim=16, depth=1, heads=2, img_size=32, patch=16, frames=4)
    return {
        "dac": (load_dac_file, "descript-audio-codec/releases"),
        "segment_avclip": (lambda p: load_segment_avclip(MotionFormer(tiny), p), "Segment-AVCLIP"),
        "synchformer": (load_synchformer, "evaluate.synchformer_weights"),
        "imagebind": (load_imagebind, "score.imagebind_weights"),
        "vggish": (load_vggish, "torchvggish"),
        "passt": (load_passt, "kkoutini/PaSST"),
        "vaura_release": (load_official_checkpoint, "24-08-01T08-34-26"),
    }


@pytest.mark.parametrize("name", sorted(_missing_loaders()))
def test_a_missing_file_is_a_weights_error_naming_it_and_what_to_download(tmp_path: Path, name: str) -> None:
    load, hint = _missing_loaders()[name]
    path = tmp_path / "absent" / "w.pt"
    with pytest.raises(WeightsError) as err:
        load(path)
    assert str(path) in str(err.value) and hint in str(err.value)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)


def test_load_released_picks_the_inner_state_dict_and_loads_strictly(tmp_path: Path) -> None:
    ref = Tiny()
    torch.save({"model": ref.state_dict(), "epoch": 3}, tmp_path / "ok.pt")
    got = load_released(Tiny, tmp_path / "ok.pt", "tiny weights", inner="model")
    assert torch.equal(got.fc.weight, ref.fc.weight) and torch.equal(got.fc.bias, ref.fc.bias)
    torch.save({"model": {"fc.weight": torch.zeros(2, 4), "fc.extra": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError) as err:
        load_released(Tiny, tmp_path / "bad.pt", "tiny weights", inner="model")
    msg = str(err.value)
    assert "bad.pt" in msg and "missing keys (1): ['fc.bias']" in msg and "fc.extra" in msg and "(2, 4)" in msg


def test_an_unreadable_file_is_a_weights_error_and_the_network_is_never_built(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    built = []
    with pytest.raises(WeightsError, match=r"junk\.pt"):
        load_released(lambda: built.append(1) or Tiny(), tmp_path / "junk.pt", "tiny weights")
    assert built == []
