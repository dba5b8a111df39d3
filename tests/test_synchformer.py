"""Synchformer network: released layout (full manifest), strict loading, preprocessing, output shapes."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vaura.visual import MotionFormerSize, VisualInputError
from vaura.eval.synchformer import Synchformer, SynchformerSize, load_synchformer, parameter_count
from vaura.weights import WeightsError

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "synchformer_24-01-04T16-39-21.json").read_text())
# Same depths as the release (so the same 513 key names), tiny widths.
TINY_FULL_DEPTH = SynchformerSize(
    visual=MotionFormerSize(dim=16, depth=12, heads=2, mlp_ratio=2, img_size=32, patch=16),
    audio_depth=12, audio_heads=2, audio_ffn=32, n_layer=3, n_head=2,
)
TINY = SynchformerSize(
    visual=MotionFormerSize(dim=16, depth=1, heads=2, mlp_ratio=2, img_size=32, patch=16),
    audio_depth=1, audio_heads=2, audio_ffn=32, n_layer=1, n_head=2,
)


def _meta_manifest_state() -> dict[str, torch.Tensor]:
    return {k: torch.empty(v[0], device="meta") for k, v in MANIFEST["params"].items()}


def test_release_size_matches_manifest_keys_shapes_and_total():
    with torch.device("meta"):
        model = Synchformer()
    mine = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v[0] for k, v in MANIFEST["params"].items()}
    assert len(expected) == 513
    assert sorted(set(expected) ^ set(mine)) == []
    assert {k: s for k, s in mine.items() if s != expected[k]} == {}
    assert parameter_count() == MANIFEST["totals"]["all"]["numel"] == 237_460_245
    per_child = {c: sum(math.prod(s) for k, s in mine.items() if k.startswith(c + ".")) for c in
                 MANIFEST["totals"]["per_top_level_submodule"]}
    assert per_child == {c: v["numel"] for c, v in MANIFEST["totals"]["per_top_level_submodule"].items()}


def test_release_layout_strict_load_on_meta_and_named_errors():
    with torch.device("meta"):
        model = Synchformer()
    from vaura.weights import load_strict

    load_strict(model, _meta_manifest_state(), "meta")
    state = _meta_manifest_state()
    del state["afeat_extractor.ast.encoder.layer.11.layernorm_after.bias"]
    state["transformer.sync_head.weight"] = torch.empty(2, 768, device="meta")
    with pytest.raises(WeightsError) as err:
        load_strict(model, state, "x.pt")
    msg = str(err.value)
    assert "missing keys (1)" in msg and "afeat_extractor.ast.encoder.layer.11.layernorm_after.bias" in msg
    assert "unexpected keys (1)" in msg and "transformer.sync_head.weight" in msg


def test_release_forward_shapes_on_meta():
    with torch.device("meta"):
        model = Synchformer()
        logits = model(torch.empty(3, 14, 16, 3, 224, 224), torch.empty(3, 14, 1, 128, 66))
    assert tuple(logits.shape) == (3, 21)


def test_random_checkpoint_file_loads_values_from_ckpt_model(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    src = Synchformer(TINY_FULL_DEPTH)
    assert sorted(src.state_dict()) == sorted(MANIFEST["params"])
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in src.state_dict().items()}
    path = tmp_path / "24-01-04T16-39-21.pt"
    torch.save({"model": weights, "epoch": 3, "model_type": "Synchformer",
                "args": omegaconf.OmegaConf.create({"model": {"target": "x"}})}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    model = load_synchformer(path, TINY_FULL_DEPTH)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k
    weights.pop("transformer.off_head.bias")
    with pytest.raises(WeightsError, match=r"missing keys \(1\).*transformer\.off_head\.bias"):
        load_synchformer({"model": weights}, TINY_FULL_DEPTH)


def test_missing_checkpoint_says_what_to_download(tmp_path):
    with pytest.raises(WeightsError, match="24-01-04T16-39-21"):
        load_synchformer(tmp_path / "sync.pt", TINY)


def test_prepare_inputs_centres_segments_and_aligns_audio():
    model = Synchformer(TINY)
    n = 125  # the 5 s input of the V-AURA Sync protocol
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)  # frame index written into one pixel
    audio = np.zeros(80000, np.float32)
    click = 1280 + 3 * 5120 + 4000  # inside audio segment 3 (segments start at 1280 + 5120 k, 10240 long)
    audio[click] = 1.0
    vis, aud = model.prepare_inputs(frames, audio)
    assert vis.shape == (14, 16, 3, 32, 32) and aud.shape == (14, 1, 128, 66)
    first_frames = ((vis[:, 0, 0, 0, 0] + 1) / 2 * 255).round().long()
    assert first_frames.tolist() == [2 + 8 * k for k in range(14)]  # (125 - 120) // 2 = 2, stride 8
    silent = (math.log(1e-6) + 4.2677393) / (2 * 4.5689974)
    padded = (0.0 + 4.2677393) / (2 * 4.5689974)
    assert torch.allclose(aud[0, 0, :, :65], torch.full((128, 65), silent), atol=1e-4)
    assert torch.allclose(aud[:, 0, :, 65], torch.full((14, 128), padded), atol=1e-5)  # 65 frames, padded to 66
    loud = aud[:, 0, :, :65].amax(dim=(1, 2)) > silent + 0.5
    # the click lies in segment 3 (at offset 4000) and in the overlapping segment 2 (at offset 9120), not in 4
    assert torch.nonzero(loud).flatten().tolist() == [2, 3]
    frame_of_click = aud[3, 0, :, :65].amax(dim=0).argmax().item()
    assert abs(frame_of_click - 4000 / 160) <= 1
    with pytest.raises(VisualInputError, match="at least 120 frames"):
        model.prepare_inputs(frames[:100], audio)


def test_predict_offsets_single_and_batch_shapes_and_grid():
    torch.manual_seed(0)
    model = load_synchformer(Synchformer(TINY).state_dict(), TINY)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(2, 120, 32, 32, 3), dtype=np.uint8)  # 4.8 s windows (DeSync protocol)
    audio = rng.standard_normal((2, 76800)).astype(np.float32) * 0.1
    logits = model.predict_offsets(clips, audio)
    assert logits.shape == (2, 21)
    single = model.predict_offsets(clips[1], audio[1])
    assert single.shape == (1, 21) and torch.allclose(single[0], logits[1], atol=1e-4)
    grid = model.offset_grid
    assert grid.shape == (21,) and grid[0] == -2.0 and grid[-1] == 2.0 and torch.isclose(grid[11], torch.tensor(0.2))
    forced = torch.full((2, 21), -5.0)
    forced[0, 0], forced[1, 13] = 1.0, 1.0
    assert model.offsets_seconds(forced).tolist() == pytest.approx([-2.0, 0.6])
