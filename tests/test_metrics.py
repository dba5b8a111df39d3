"""Metrics of vaura.eval: onset-sync, FAD (log-mel and VGGish), KLD, IB-score, Sync/DeSync, skipped results."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vaura.eval.fad import LogMelEmbedding, fad, frechet_distance
from vaura.eval.onset_sync import onset_sync
from vaura.eval.results import MetricResult
from vaura.weights import WeightsError

SR = 16000


def _clicks(times: list[float], duration: float = 2.56, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Decaying noise bursts starting at ``times`` over faint noise: an unambiguous onset at each time."""
    rng = np.random.default_rng(seed)
    audio = 0.002 * rng.standard_normal(int(duration * sr))
    burst_len = int(0.05 * sr)
    env = np.exp(-np.arange(burst_len) / (0.008 * sr))
    for t in times:
        i = int(round(t * sr))
        seg = audio[i : i + burst_len]
        seg += 0.8 * env[: seg.size] * rng.standard_normal(seg.size)
    return audio.astype(np.float32)


def test_onset_sync_recovers_known_offsets() -> None:
    truth = [np.array([0.40, 1.00, 1.60, 2.20]), np.array([0.50, 1.50])]
    offsets_s = [0.04, 0.06]  # every hit of clip i is late by offsets_s[i]
    gen = [_clicks(list(t + o), seed=i) for i, (t, o) in enumerate(zip(truth, offsets_s))]
    res = onset_sync(gen, SR, truth, tol=0.1)
    assert res.status == "ok"
    # 4 hits at +40 ms and 2 at +60 ms → mean |offset| 46.7 ms; the detector's 10 ms frames bound the error.
    assert res.values["offset_ms"] == pytest.approx((4 * 40 + 2 * 60) / 6, abs=12)
    assert res.values["signed_offset_ms"] > 0  # late, not early
    assert res.values["f1"] == pytest.approx(1.0)
    assert res.values["missed"] == 0 and res.values["extra"] == 0


def test_onset_sync_counts_missed_and_extra_hits() -> None:
    truth = [np.array([0.40, 1.00, 1.60, 2.20])]
    # 1.00 is missed, 1.30 is an extra hit; 0.40 lands 0.25 s late: outside ±100 ms → one miss + one extra.
    gen = [_clicks([0.65, 1.30, 1.60, 2.20])]
    res = onset_sync(gen, SR, truth, tol=0.1)
    assert res.values["matched"] == 2
    assert res.values["missed"] == 2
    assert res.values["extra"] == 2
    assert res.values["precision"] == pytest.approx(0.5)
    assert res.values["recall"] == pytest.approx(0.5)
    assert res.values["offset_ms"] < 15  # the two matched hits are on time


def test_onset_sync_rejects_mismatched_batch() -> None:
    with pytest.raises(ValueError, match="ground-truth"):
        onset_sync([np.zeros(SR, np.float32)], SR, [])


def test_frechet_distance_matches_closed_form_for_gaussians() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 3))
    y = rng.standard_normal((4000, 3)) * 2.0 + np.array([1.0, 0.0, 0.0])
    # N(0, I) vs N(m, 4I): |m|² + tr(I + 4I − 2·2I) = 1 + 3·(1 + 4 − 4) = 4
    assert frechet_distance(x, y) == pytest.approx(4.0, rel=0.08)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_logmel_fad_is_zero_on_itself_and_grows_with_shift() -> None:
    rng = np.random.default_rng(1)
    base = [_clicks(sorted(rng.uniform(0.1, 2.3, 4)), seed=s) for s in range(12)]
    res_self = fad(base, base, SR, backbone="logmel")
    assert res_self.status == "ok" and res_self.backbone == "log-mel, weight-free"
    assert res_self.values["fad"] == pytest.approx(0.0, abs=1e-6)
    t = np.arange(int(2.56 * SR)) / SR
    tone = [b + 0.05 * np.sin(2 * np.pi * 440 * t).astype(np.float32) for b in base]
    loud_tone = [b + 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32) for b in base]
    d1 = fad(tone, base, SR).values["fad"]
    d2 = fad(loud_tone, base, SR).values["fad"]
    assert 0.0 < d1 < d2


def test_logmel_embedding_shape_and_rate_independence() -> None:
    emb = LogMelEmbedding()
    a = _clicks([0.5, 1.5])
    e16 = emb([a], SR)
    assert e16.shape == (14, 128)  # 2.56 s → 1 + (40960 − 400) // 160 = 254 frames → 1 + (254 − 32) // 16 windows
    import torchaudio

    a44 = torchaudio.functional.resample(torch.from_numpy(a), SR, 44100).numpy()
    e44 = emb([a44], 44100)
    assert e44.shape == e16.shape
    assert np.abs(e44 - e16).mean() < 0.2 * np.abs(e16).mean()


def test_vggish_missing_weights_is_skipped_with_reason(tmp_path) -> None:
    res = fad([np.zeros(SR, np.float32)] * 2, [np.zeros(SR, np.float32)] * 2, SR, backbone="vggish",
              vggish_weights=tmp_path / "vggish.pth")
    assert res.status == "skipped"
    assert "vggish-10086976.pth" in res.reason and str(tmp_path / "vggish.pth") in res.reason
    assert res.to_dict()["status"] == "skipped" and "fad" not in res.to_dict()


def test_a_corrupt_vggish_file_is_an_error_naming_it_not_a_skipped_fad(tmp_path) -> None:
    (tmp_path / "vggish.pth").write_bytes(b"\x00 truncated download")
    with pytest.raises(WeightsError, match=rf"{tmp_path / 'vggish.pth'}: cannot read"):
        fad([np.zeros(SR, np.float32)] * 2, [np.zeros(SR, np.float32)] * 2, SR, backbone="vggish",
            vggish_weights=tmp_path / "vggish.pth")


def test_vggish_strict_loader_and_shapes(tmp_path) -> None:
    from vaura.eval.vggish import VGGish, examples_from_log_mel, load_vggish

    expected = {
        "features.0.weight": (64, 1, 3, 3), "features.3.weight": (128, 64, 3, 3),
        "features.6.weight": (256, 128, 3, 3), "features.8.weight": (256, 256, 3, 3),
        "features.11.weight": (512, 256, 3, 3), "features.13.weight": (512, 512, 3, 3),
        "embeddings.0.weight": (4096, 12288), "embeddings.2.weight": (4096, 4096), "embeddings.4.weight": (128, 4096),
    }
    state = {k: torch.randn(s) * 0.01 for k, s in expected.items()}
    state.update({k.replace("weight", "bias"): torch.zeros(s[0]) for k, s in expected.items()})
    path = tmp_path / "vggish-10086976.pth"
    torch.save(state, path)
    model = load_vggish(path)
    assert torch.equal(model.embeddings[4].weight, state["embeddings.4.weight"])
    ex = examples_from_log_mel(torch.randn(250, 64))
    assert ex.shape == (2, 1, 96, 64)
    assert model(ex).shape == (2, 128)
    bad = dict(state)
    bad["embeddings.4.weight"] = torch.zeros(127, 4096)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"bad\.pth.*embeddings\.4\.weight"):
        load_vggish(tmp_path / "bad.pth")
    del bad["embeddings.4.weight"]
    torch.save(bad, tmp_path / "bad2.pth")
    with pytest.raises(WeightsError, match=r"bad2\.pth.*missing keys \(1\)"):
        load_vggish(tmp_path / "bad2.pth")
    assert isinstance(VGGish(), torch.nn.Module)


def test_skipped_result_needs_reason() -> None:
    with pytest.raises(ValueError):
        MetricResult.skipped("kld", "")


def test_kl_divergence_known_value_and_asymmetry() -> None:
    from vaura.eval.kld import kl_divergence

    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.9, 0.1], [1.0, 0.0]])
    # row 0: 0.5·ln(0.5/0.9) + 0.5·ln(0.5/0.1) = 0.5108; row 1: 0 → mean 0.2554
    assert kl_divergence(p, q) == pytest.approx(0.2554, abs=1e-3)
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    assert kl_divergence(q, p) != pytest.approx(kl_divergence(p, q), abs=1e-3)
    with pytest.raises(ValueError):
        kl_divergence(p, q[:1])


def test_kld_without_passt_weights_is_skipped(tmp_path) -> None:
    from vaura.eval.kld import kld_score, load_kld_model

    model, reason = load_kld_model(tmp_path / "passt.pt")
    assert model is None and "passt-s-f128" in reason and str(tmp_path / "passt.pt") in reason
    res = kld_score(None, [], [], SR, reason)
    assert res.status == "skipped" and res.reason == reason


def _tiny_passt_size():
    from vaura.eval.passt import PaSSTSize

    return PaSSTSize(dim=32, depth=1, heads=2, n_classes=10)


def test_passt_strict_loads_and_kld_compares_clip_pairs(tmp_path) -> None:
    from vaura.eval.kld import kld_score, load_kld_model
    from vaura.eval.passt import PaSST, passt_mel

    assert passt_mel(_clicks([0.5]), SR).shape == (128, 256)  # 2.56 s at 32 kHz, hop 320, centred
    size = _tiny_passt_size()
    torch.manual_seed(0)
    net = PaSST(size)
    for p in net.parameters():  # zero-initialised tokens/embeddings would make every clip look alike
        torch.nn.init.normal_(p, std=0.5)
    torch.save({"model": net.state_dict()}, tmp_path / "passt.pt")
    model, reason = load_kld_model(tmp_path / "passt.pt", size=size)
    assert model is not None and reason == ""
    refs = [_clicks([0.5, 1.5], seed=1), _clicks([1.0], seed=2)]
    same = kld_score(model, refs, refs, SR)
    assert same.status == "ok" and same.values["kld"] == pytest.approx(0.0, abs=1e-6)
    t = np.arange(int(2.56 * SR)) / SR
    tones = [(0.3 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)] * 2
    assert kld_score(model, tones, refs, SR).values["kld"] > 1e-3
    state = net.state_dict()
    state["head.1.weight"] = torch.zeros(9, 32)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"bad\.pt"):  # present but unusable: an error, not a skipped metric
        load_kld_model(tmp_path / "bad.pt", size=size)


def test_passt_full_size_matches_the_released_layout() -> None:
    from vaura.eval.passt import PaSST

    with torch.device("meta"):
        state = PaSST().state_dict()
    assert {"cls_token", "dist_token", "new_pos_embed", "blocks.11.attn.qkv.bias", "blocks.11.mlp.fc2.weight",
            "norm.weight", "head.0.weight", "head_dist.bias"} <= set(state)
    assert "blocks.12.norm1.weight" not in state and state["new_pos_embed"].shape == (1, 2, 768)
    assert state["time_new_pos_embed"].shape == (1, 768, 1, 99)
    assert state["freq_new_pos_embed"].shape == (1, 768, 12, 1)
    assert state["patch_embed.proj.weight"].shape == (768, 1, 16, 16)
    assert state["head.1.weight"].shape == state["head_dist.weight"].shape == (527, 768)


def _fake_predictor(calls: list):
    """Offset = mean brightness of the window's first frame minus that of its audio, in s; records shapes."""

    def predict(frames: np.ndarray, audio: np.ndarray) -> np.ndarray:
        calls.append((frames.shape, audio.shape))
        return frames[:, 0].reshape(len(frames), -1).mean(1) / 100.0 - audio.mean(1)

    return predict


def test_sync_loops_short_clip_into_one_window() -> None:
    from vaura.eval.sync import sync_score

    calls: list = []
    frames = [np.full((64, 8, 8, 3), v, np.uint8) for v in (10, 50)]  # 2.56 s at 25 fps
    audios = [np.zeros(int(2.56 * 44100), np.float32)] * 2
    res = sync_score(_fake_predictor(calls), frames, audios, 44100)
    assert calls == [((2, 120, 8, 8, 3), (2, 76800))]
    assert res.values["sync_ms"] == pytest.approx((100 + 500) / 2)


def test_desync_scores_first_and_last_windows_of_long_clips() -> None:
    from vaura.eval.sync import desync_score

    calls: list = []
    frames = np.zeros((200, 4, 4, 3), np.uint8)  # 8 s
    frames[:50] = 20  # the first window starts bright (0.2 s), the last (frames 80..199) dark (0 s)
    res = desync_score(_fake_predictor(calls), [frames], [np.zeros(8 * 16000, np.float32)], 16000)
    assert calls == [((2, 120, 4, 4, 3), (2, 76800))]
    assert res.values["desync_s"] == pytest.approx(0.1)


def test_loop_keeps_audio_video_alignment() -> None:
    from vaura.eval.sync import loop_to_window

    frames = np.arange(64, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    audio = np.repeat(np.arange(64, dtype=np.float32), 640)  # audio sample value = index of its video frame
    v, a = loop_to_window(frames, audio)
    assert v.shape[0] == 120 and a.shape[0] == 76800
    for f in (0, 63, 64, 100, 119):
        assert a[f * 640 + 10] == v[f, 0, 0, 0]  # still aligned after the loop seam


def test_sync_without_model_is_skipped() -> None:
    from vaura.eval.sync import desync_score, sync_score

    r = sync_score(None, [], [], 16000, skip_reason="Synchformer weights not found at w.pt")
    assert r.status == "skipped" and "w.pt" in r.reason
    assert desync_score(None, [], [], 16000, skip_reason="x").status == "skipped"


def _tiny_imagebind() -> torch.nn.Module:
    from imagebind.models.imagebind_model import ImageBindModel

    torch.manual_seed(0)
    small = dict(embed_dim=32, num_blocks=1, num_heads=2)
    return ImageBindModel(
        out_embed_dim=32,
        **{f"{m}_{k}": v for m in ("vision", "audio", "text", "depth", "thermal", "imu") for k, v in small.items()},
    )


def test_ib_score_strict_loads_and_scores_clips(tmp_path) -> None:
    from vaura.eval.ib import ib_score, load_ib_model

    weights = tmp_path / "imagebind_tiny.pth"
    torch.save(_tiny_imagebind().state_dict(), weights)
    model, reason = load_ib_model(weights, build=_tiny_imagebind)
    assert model is not None and reason == ""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 224, 224, 3), dtype=np.uint8) for _ in range(2)]
    audios = [_clicks([0.5, 1.5], sr=22050), _clicks([1.0], sr=22050, seed=3)]
    res = ib_score(model, frames, audios, 22050)
    assert res.status == "ok" and -100.0 <= res.values["ib"] <= 100.0
    swapped = ib_score(model, frames, [audios[0], audios[0]], 22050)
    assert swapped.values["ib"] != pytest.approx(res.values["ib"], abs=1e-6)


def test_ib_loader_rejects_wrong_layout_and_missing_file(tmp_path) -> None:
    from vaura.eval.ib import ib_score, load_ib_model

    state = _tiny_imagebind().state_dict()
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"partial\.pth"):  # present but unusable: an error, not a skip
        load_ib_model(tmp_path / "partial.pth", build=_tiny_imagebind)
    model, reason = load_ib_model(tmp_path / "absent.pth")
    assert model is None and "imagebind_huge.pth" in reason
    res = ib_score(None, [], [], 16000, skip_reason=reason)
    assert res.status == "skipped" and "absent.pth" in res.reason


def _tiny_synchformer_size():
    from vaura.visual.motionformer import MotionFormerSize
    from vaura.eval.synchformer import SynchformerSize

    return SynchformerSize(
        visual=MotionFormerSize(dim=32, depth=1, heads=2, mlp_ratio=2, img_size=32, patch=16, tubelet=2, frames=16),
        audio_depth=1, audio_heads=2, audio_ffn=64, n_layer=1, n_head=2,
    )


def test_sync_strict_loads_a_random_synchformer_and_scores(tmp_path) -> None:
    from vaura.eval.sync import desync_score, load_sync_predictor, sync_score
    from vaura.eval.synchformer import Synchformer

    size = _tiny_synchformer_size()
    torch.manual_seed(0)
    path = tmp_path / "24-01-04T16-39-21.pt"
    torch.save({"model": Synchformer(size).state_dict(), "epoch": 3}, path)
    predictor, reason = load_sync_predictor(path, size=size)
    assert predictor is not None and reason == ""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
    audios = [_clicks([0.5, 1.5]), _clicks([1.0], seed=2)]
    res = sync_score(predictor, frames, audios, SR)
    # one window per clip, each |offset| on the 0.2 s grid → the 2-clip mean is a multiple of 100 ms in [0, 2000]
    ms = res.values["sync_ms"]
    assert 0.0 <= ms <= 2000.0 and ms / 100.0 == pytest.approx(round(ms / 100.0), abs=1e-4)
    assert desync_score(predictor, frames, audios, SR).values["desync_s"] == pytest.approx(ms / 1000.0)


def test_sync_loader_reports_missing_and_mismatched_checkpoints(tmp_path) -> None:
    from vaura.eval.sync import load_sync_predictor
    from vaura.eval.synchformer import Synchformer

    size = _tiny_synchformer_size()
    predictor, reason = load_sync_predictor(tmp_path / "absent.pt", size=size)
    assert predictor is None and "absent.pt" in reason and "Synchformer" in reason
    state = Synchformer(size).state_dict()
    state["transformer.off_head.weight"] = torch.zeros(20, 32)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"bad\.pt"):  # present but unusable: an error, not a skip
        load_sync_predictor(tmp_path / "bad.pt", size=size)


def test_metric_values_serialise_as_strict_json() -> None:
    import json

    silent = onset_sync([np.zeros(int(2.56 * SR), np.float32)], SR, [np.array([1.0])])
    assert silent.values["missed"] == 1 and np.isnan(silent.values["offset_ms"])
    doc = json.loads(json.dumps(silent.to_dict(), allow_nan=False))
    assert doc["offset_ms"] is None and doc["recall"] == 0.0


def test_damaged_passt_and_synchformer_files_are_errors_naming_them(tmp_path) -> None:
    """Missing weights skip a metric (not installed); a file that is there but unreadable must not pass as
    'skipped': KLD (PaSST) and Sync (Synchformer) raise, naming the file (VGGish: test_a_corrupt_vggish_file_is_an_error_naming_it_not_a_skipped_fad)."""
    from vaura.eval.kld import load_kld_model
    from vaura.eval.sync import load_sync_predictor

    for name in ("passt.pt", "synchformer.pt"):
        (tmp_path / name).write_bytes(b"<html>404 Not Found</html>")  # a typical failed download
    with pytest.raises(WeightsError, match=r"passt\.pt: cannot read checkpoint"):
        load_kld_model(tmp_path / "passt.pt")
    with pytest.raises(WeightsError, match=r"synchformer\.pt: cannot read checkpoint"):
        load_sync_predictor(tmp_path / "synchformer.pt")
    assert load_kld_model(tmp_path / "absent.pt")[0] is None  # absent: skipped, as before
