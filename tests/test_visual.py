"""Visual encoder: checkpoint layout, strict loading, preprocessing, shapes and token timing."""
from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vaura.visual import (
    PAPER_SIZE,
    MotionFormer,
    MotionFormerSize,
    VisualConfig,
    VisualEncoder,
    VisualInputError,
    frames_to_input,
    load_segment_avclip,
    load_visual_encoder,
    to_segments,
)
from vaura.visual.encoder import load_standin, standin_payload
from vaura.visual.motionformer import DividedAttention
from vaura.weights import WeightsError

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "segment_avclip_vggsound_v_encoder.json").read_text())
# Tiny model with the manifest's depth: same key set as the released checkpoint, small tensors.
TINY12 = MotionFormerSize(dim=16, depth=12, heads=2, mlp_ratio=2, img_size=32, patch=16)
TINY = MotionFormerSize(dim=32, depth=2, heads=4, mlp_ratio=2, img_size=32, patch=16)


def _random_state(model: MotionFormer, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in model.state_dict().items()}


def test_paper_size_matches_released_key_and_shape_manifest():
    with torch.device("meta"):
        model = MotionFormer(PAPER_SIZE)
    mine = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v[0] for k, v in MANIFEST["params"].items()}
    assert sorted(set(expected) - set(mine)) == [] and sorted(set(mine) - set(expected)) == []
    assert {k: s for k, s in mine.items() if s != expected[k]} == {}
    assert sum(math.prod(s) for s in mine.values()) == MANIFEST["totals"]["v_encoder"]["numel"] == 122_440_704


@pytest.mark.parametrize(
    "prefix, others",
    [
        ("module.v_encoder.", ["module.a_encoder.ast.layernorm.weight", "logit_scale"]),
        ("v_encoder.", ["a_encoder.ast.layernorm.weight", "logit_scale"]),
        ("visual_feature_extractor.", ["sampler.out_norm.weight", "audio_encoder.model.encoder.block.0.bias"]),
    ],
)
def test_full_manifest_layout_loads_strictly_on_meta(prefix, others):
    """Key/shape accounting with the full-size layout (meta tensors: no memory, no compute); the checkpoint's
    other entries (audio encoder, logit scale, sampler, codec) are ignored."""
    state = {prefix + k: torch.empty(v[0], device="meta") for k, v in MANIFEST["params"].items()}
    state.update({k: torch.empty(768, device="meta") for k in others})
    with torch.device("meta"):
        model = MotionFormer(PAPER_SIZE)
    load_segment_avclip(model, {"state_dict": state, "epoch": 1})


def test_manifest_key_missing_or_extra_is_named_in_the_error():
    state = {"module.v_encoder." + k: torch.empty(v[0], device="meta") for k, v in MANIFEST["params"].items()}
    del state["module.v_encoder.blocks.7.timeattn.proj.bias"]
    with torch.device("meta"):
        model = MotionFormer(PAPER_SIZE)
    with pytest.raises(WeightsError, match=r"missing keys \(1\).*blocks\.7\.timeattn\.proj\.bias"):
        load_segment_avclip(model, {"state_dict": state})
    state["module.v_encoder.blocks.7.timeattn.proj.bias"] = torch.empty(768, device="meta")
    state["module.v_encoder.blocks.3.temporal_fc.weight"] = torch.empty(768, 768, device="meta")
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\).*blocks\.3\.temporal_fc\.weight"):
        load_segment_avclip(model, {"state_dict": state})
    del state["module.v_encoder.blocks.3.temporal_fc.weight"]
    state["module.v_encoder.pos_embed"] = torch.empty(1, 50, 768, device="meta")
    with pytest.raises(WeightsError, match=r"pos_embed: checkpoint \(1, 50, 768\)"):
        load_segment_avclip(model, {"state_dict": state})


def test_random_checkpoint_file_with_pickled_config_loads_values(tmp_path):
    """The real epoch_best.pt pickles an OmegaConf config (weights_only refuses it); the weights must still load."""
    omegaconf = pytest.importorskip("omegaconf")
    src = MotionFormer(TINY12)
    assert sorted(src.state_dict()) == sorted(MANIFEST["params"])  # same layout as the released file
    weights = _random_state(src, seed=3)
    ckpt = {
        "epoch": 7, "name": "23-12-22T16-10-50",
        "state_dict": {**{"module.v_encoder." + k: v for k, v in weights.items()},
                       "module.a_encoder.ast.layernorm.bias": torch.zeros(16), "logit_scale": torch.tensor(2.0)},
        "args": omegaconf.OmegaConf.create({"model": {"params": {"vfeat_extractor": {"params": {"ckpt_path": None}}}}}),
    }
    path = tmp_path / "epoch_best.pt"
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    model = load_segment_avclip(MotionFormer(TINY12), path)
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_vaura_checkpoint_prefix_and_bare_state_dict_load(tmp_path):
    weights = _random_state(MotionFormer(TINY), seed=5)
    vaura_sd = {"visual_feature_extractor." + k: v for k, v in weights.items()}
    vaura_sd["sampler.transformer.norm.weight"] = torch.ones(4)
    a = load_segment_avclip(MotionFormer(TINY), {"state_dict": vaura_sd})
    b = load_segment_avclip(MotionFormer(TINY), weights)
    assert torch.equal(a.blocks[1].mlp.fc2.weight, weights["blocks.1.mlp.fc2.weight"])
    assert torch.equal(b.spatial_attn_agg.cls_token, weights["spatial_attn_agg.cls_token"])
    with pytest.raises(WeightsError, match="no visual-encoder weights"):
        load_segment_avclip(MotionFormer(TINY), {"state_dict": {"a_encoder.x": torch.zeros(1)}})


def test_missing_weights_file_says_what_to_download_and_where(tmp_path):
    cfg = VisualConfig(kind="segment_avclip", weights="weights/nope/epoch_best.pt")
    with pytest.raises(WeightsError) as err:
        load_visual_encoder(cfg, root=tmp_path)
    msg = str(err.value)
    assert "23-12-22T16-10-50/checkpoints/epoch_best.pt" in msg and str(tmp_path / "weights/nope/epoch_best.pt") in msg
    assert "visual.weights" in msg


def test_segment_avclip_kind_refuses_non_paper_sizes(tmp_path):
    with pytest.raises(WeightsError, match=r"visual\.dim=64 \(paper 768\).*visual\.crop=96 \(paper 224\)"):
        load_visual_encoder(VisualConfig(kind="segment_avclip", dim=64, crop=96), root=tmp_path)


def test_paper_size_shapes_for_2_56_s_and_longer_clips():
    with torch.device("meta"):
        model = MotionFormer(PAPER_SIZE)
        out = model(torch.empty(2, 4, 3, 16, 224, 224))  # 2.56 s = 4 segments
        assert tuple(out.shape) == (2, 4, 8, 768)
        out = model(torch.empty(1, 15, 3, 16, 224, 224))  # 9.6 s
        assert tuple(out.shape) == (1, 15, 8, 768)
    with pytest.raises(ValueError, match="16 frames of 32x32, got 8"):
        MotionFormer(TINY)(torch.zeros(1, 1, 3, 8, 32, 32))


def _naive_divided_attention(att: DividedAttention, x: torch.Tensor, over: str, nt: int, ns: int) -> torch.Tensor:
    """Direct transcription of the documented rule: per group (one position over time, or one frame over space),
    softmax over [CLS, group]; CLS attends to everything."""
    b, length, d = x.shape
    h = att.heads
    dh = d // h
    q, k, v = att.qkv(x).chunk(3, dim=-1)
    out = torch.zeros(b, length, d)
    for bi in range(b):
        for hi in range(h):
            sl = slice(hi * dh, (hi + 1) * dh)
            qq, kk, vv = q[bi, :, sl], k[bi, :, sl], v[bi, :, sl]
            w = torch.softmax(qq[0] @ kk.T / math.sqrt(dh), -1)
            out[bi, 0, sl] = w @ vv
            for tok in range(1, length):
                ti, si = divmod(tok - 1, ns)
                if over == "time":
                    idx = [0] + [1 + t * ns + si for t in range(nt)]
                else:
                    idx = [0] + [1 + ti * ns + s for s in range(ns)]
                w = torch.softmax(qq[tok] @ kk[idx].T / math.sqrt(dh), -1)
                out[bi, tok, sl] = w @ vv[idx]
    return att.proj(out)


@pytest.mark.parametrize("over", ["time", "space"])
def test_divided_attention_matches_naive_definition(over):
    torch.manual_seed(0)
    att = DividedAttention(8, 2)
    nt, ns = 3, 4
    x = torch.randn(2, 1 + nt * ns, 8)
    with torch.no_grad():
        assert torch.allclose(att(x, over, nt, ns), _naive_divided_attention(att, x, over, nt, ns), atol=1e-5)


def test_frames_to_input_normalises_resizes_and_crops():
    frames = np.zeros((4, 40, 60, 3), np.uint8)
    frames[..., 0] = 255
    x = frames_to_input(frames, crop=32, train=False, short_side=40)
    assert x.shape == (4, 3, 32, 32)
    assert torch.allclose(x[:, 0], torch.ones(1)) and torch.allclose(x[:, 1:], -torch.ones(1))
    # short side 20 -> resized to 40x60 then centre-cropped: a marker column at the centre stays at the centre
    small = np.zeros((1, 20, 30, 3), np.uint8)
    small[:, :, 15] = 255
    y = frames_to_input(small, crop=32, train=False, short_side=40)
    col = y[0, 0].mean(0)
    assert int(col.argmax()) in (15, 16) and float(col[0]) == -1.0
    # training crops are random but reproducible from the generator, and sometimes flipped
    ramp = np.tile(np.arange(60, dtype=np.uint8)[None, None, :, None] * 4, (1, 40, 1, 3))
    outs = {tuple(frames_to_input(ramp, 32, True, 40, torch.Generator().manual_seed(s))[0, 0, 0, :2].tolist())
            for s in range(12)}
    assert len(outs) > 2
    assert any(a > b for a, b in outs) and any(a < b for a, b in outs)  # both orientations occur
    with pytest.raises(VisualInputError, match="uint8"):
        frames_to_input(frames.astype(np.float32), crop=32, train=False)


def test_to_segments_layout_and_short_input():
    x = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1).expand(40, 3, 2, 2)
    segs = to_segments(x, 16)
    assert segs.shape == (2, 3, 16, 2, 2)
    assert segs[1, 0, :, 0, 0].tolist() == list(range(16, 32))
    with pytest.raises(VisualInputError, match="at least 16"):
        to_segments(x[:10], 16)


def test_encoder_token_count_rate_and_segment_locality():
    enc = VisualEncoder(MotionFormer(TINY), short_side=32, batch_size=3)
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)  # 2.56 s
    feats = enc.encode(clip)
    assert feats.shape == (32, 32) and enc.frame_rate == 12.5 and enc.n_tokens(64) == 32
    longer = rng.integers(0, 256, size=(125, 32, 32, 3), dtype=np.uint8)  # 5 s -> 7 whole segments
    assert enc.encode(longer).shape == (56, 32)
    # tokens of segment k depend only on frames 16k..16k+15
    changed = clip.copy()
    changed[40] = 255 - changed[40]  # frame 40 is in segment 2 (tokens 16..23)
    diff = (enc.encode(changed) - feats).abs().amax(dim=1)
    assert torch.all(diff[:16] == 0) and torch.all(diff[24:] == 0) and torch.all(diff[16:24] > 0)
    # batching several clips gives the same features as one at a time
    many = enc.encode_many([clip, longer])
    assert torch.allclose(many[0], feats, atol=1e-5)


def test_encoder_is_frozen_and_stays_in_eval_mode():
    enc = VisualEncoder(MotionFormer(TINY))
    enc.train()
    assert not enc.model.training and not any(p.requires_grad for p in enc.parameters())


def test_offline_standin_roundtrip_and_architecture_check(tmp_path):
    cfg = VisualConfig(kind="offline", dim=32, depth=2, heads=4, mlp_ratio=2,
                       crop=32, short_side=32, patch=16, batch_size=4, device="cpu")
    with pytest.raises(WeightsError, match="avclip"):
        load_visual_encoder(cfg, root=tmp_path)
    model = MotionFormer(TINY)
    (tmp_path / "data/avclip").mkdir(parents=True)
    torch.save(standin_payload(model, {"metrics": {"acc": 0.5}}), tmp_path / "data/avclip/visual.pt")
    enc = load_visual_encoder(cfg, root=tmp_path)
    clip = np.random.default_rng(1).integers(0, 256, size=(32, 32, 32, 3), dtype=np.uint8)
    expected = model.eval()(frames_to_input(clip, 32, False).view(2, 16, 3, 32, 32).transpose(1, 2)[None])
    assert torch.allclose(enc.encode(clip), expected.reshape(16, 32), atol=1e-5)
    with pytest.raises(WeightsError, match=r"different architecture.*'depth': \(2, 3\)"):
        load_visual_encoder(replace(cfg, depth=3), root=tmp_path)


class _Hostile:
    """Pickles as a call to os.system: a checkpoint reader that executes pickled code would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_checkpoint_reader_never_runs_pickled_code(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    weights = _random_state(MotionFormer(TINY), seed=9)
    path = tmp_path / "epoch_best.pt"
    torch.save({"state_dict": {"v_encoder." + k: v for k, v in weights.items()}, "args": _Hostile(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    if zip_format:
        model = load_segment_avclip(MotionFormer(TINY), path)
        assert torch.equal(model.pos_embed, weights["pos_embed"])
    else:  # the pre-1.6 format is refused with a clear error rather than unpickled
        with pytest.raises(WeightsError, match=r"epoch_best\.pt: not a torch zip checkpoint"):
            load_segment_avclip(MotionFormer(TINY), path)
    assert not marker.exists()


def test_own_stand_in_files_with_an_extra_pickled_global_are_refused(tmp_path):
    """A released file may pickle configs (read around, inertly); a stand-in vaura wrote never does, so one that
    does was tampered with: the visual stand-in and the codec stand-in both refuse it, naming the file."""
    from vaura.codec.codec import read_offline_checkpoint

    marker = tmp_path / "pwned"
    visual = tmp_path / "visual.pt"
    torch.save({**standin_payload(MotionFormer(TINY)), "extra": _Hostile(marker)}, visual)
    with pytest.raises(WeightsError, match=r"visual\.pt: holds pickled Python objects"):
        load_standin(visual, TINY)
    codec = tmp_path / "codec.pt"
    torch.save({"format": "x", "kwargs": {}, "n_quantizers": 1, "state_dict": {}, "extra": _Hostile(marker)}, codec)
    with pytest.raises(WeightsError, match=r"codec\.pt: holds pickled Python objects"):
        read_offline_checkpoint(codec)
    assert not marker.exists()
