"""vaura.codec: strict DAC loading (real 44.1 kHz manifest layout), the tokenizer wrapper against dac's own API,
offline checkpoints, the training losses and the onset quality gate."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vaura.codec import Codec, CodecConfig, CodecInputError, load_codec, load_dac_state_dict
from vaura.codec.codec import offline_checkpoint
from vaura.codec.config import CodecGateConfig, TinyDACConfig
from vaura.codec.standin import MultiScaleMelLoss, quality_gate, reconstruct, train_offline_codec
from vaura.io import atomic_torch_save
from vaura.weights import WeightsError

FIXTURES = Path(__file__).parent / "fixtures"
TINY = dict(encoder_dim=4, encoder_rates=[2, 4], decoder_dim=16, decoder_rates=[4, 2], n_codebooks=3,
            codebook_size=16, codebook_dim=4, sample_rate=8000)
DAC_PREFIX = "audio_encoder.model."


def _dac(kwargs: dict, seed: int = 0):
    import dac

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dac.DAC(**kwargs).eval()


def _manifest_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp16 tensors in the exact layout of the V-AURA checkpoint's DAC (prefix stripped)."""
    params = json.loads((FIXTURES / "vaura_official.json").read_text())["params"]
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in params.items():
        if key.startswith(DAC_PREFIX):
            assert dtype == "float16"
            out[key[len(DAC_PREFIX):]] = (torch.randn(shape, generator=gen) * 0.05).half()
    return out


@pytest.fixture(scope="module")
def dac44_state_dict() -> dict[str, torch.Tensor]:
    return _manifest_state_dict()


def test_manifest_layout_loads_strictly_as_fp32_and_tokenises_2_56_s_to_221_frames(dac44_state_dict):
    assert len(dac44_state_dict) == 301
    model = load_dac_state_dict(dac44_state_dict)
    loaded = model.state_dict()
    for key, value in dac44_state_dict.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], value.float()), key
    codec = Codec(model, n_quantizers=9)
    assert (codec.sample_rate, codec.hop_length, codec.n_codebooks, codec.codebook_size, codec.codebook_dim) == (
        44100, 512, 9, 1024, 8)
    assert codec.frame_rate == pytest.approx(86.1328125)
    wav = torch.randn(1, 1, 112_896, generator=torch.Generator().manual_seed(1)) * 0.1  # 2.56 s at 44.1 kHz
    codes = codec.encode(wav)
    assert codes.shape == (1, 9, 221) and codes.dtype == torch.int64
    assert codec.n_frames(2.56) == 221


def test_manifest_layout_with_a_missing_key_fails_naming_it(dac44_state_dict):
    broken = dict(dac44_state_dict)
    del broken["quantizer.quantizers.3.out_proj.weight_v"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\): \['quantizer\.quantizers\.3\.out_proj\.weight_v'\]"):
        load_dac_state_dict(broken, source="ckpt.pt")


def test_manifest_layout_with_an_extra_key_fails_naming_it(dac44_state_dict):
    broken = {**dac44_state_dict, "quantizer.quantizers.9.codebook.weight": torch.zeros(1024, 8)}
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): \['quantizer\.quantizers\.9\.codebook\.weight'\]"):
        load_dac_state_dict(broken)


def test_wrong_shape_fails_naming_the_tensor_and_the_source():
    sd = _dac(TINY).state_dict()
    sd["quantizer.quantizers.0.codebook.weight"] = torch.zeros(17, 4)
    with pytest.raises(WeightsError, match=r"my\.pth.*quantizers\.0\.codebook\.weight: checkpoint \(17, 4\)"):
        load_dac_state_dict(sd, TINY, source="my.pth")


@pytest.mark.parametrize("n_quantizers, length", [(3, 800), (2, 803), (1, 5)])
def test_codes_equal_dacs_own_encode_for_the_same_weights(n_quantizers, length):
    ref = _dac(TINY, seed=3)
    codec = Codec(load_dac_state_dict(ref.state_dict(), TINY), n_quantizers)
    wav = torch.randn(2, 1, length, generator=torch.Generator().manual_seed(4)) * 0.3
    with torch.no_grad():
        _, expected, *_ = ref.encode(ref.preprocess(wav, 8000), n_quantizers=n_quantizers)
    codes = codec.encode(wav)
    assert torch.equal(codes, expected[:, :n_quantizers])
    assert codes.shape[-1] == codec.n_frames(length / 8000) == -(-length // 8)


def test_decode_of_all_codebooks_matches_dacs_forward_pass():
    ref = _dac(TINY, seed=5)
    codec = Codec(load_dac_state_dict(ref.state_dict(), TINY), 3)
    wav = torch.randn(1, 1, 800, generator=torch.Generator().manual_seed(6)) * 0.3
    with torch.no_grad():
        expected = ref(wav, 8000)["audio"]
    out = codec.decode(codec.encode(wav))
    assert out.shape == (1, 1, 800)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_codebooks_and_out_projections_rebuild_the_quantized_latent():
    ref = _dac(TINY, seed=7)
    codec = Codec(load_dac_state_dict(ref.state_dict(), TINY), 3)
    codes = torch.randint(0, 16, (2, 3, 9), generator=torch.Generator().manual_seed(8))
    books, projs = codec.codebooks(), codec.out_projections()
    assert [tuple(b.shape) for b in books] == [(16, 4)] * 3
    with torch.no_grad():
        rebuilt = sum(projs[k](books[k][codes[:, k]].transpose(1, 2)) for k in range(3))
        expected, _, _ = ref.quantizer.from_codes(codes)
    torch.testing.assert_close(rebuilt, expected)


def test_codec_stays_frozen_and_in_eval_mode():
    codec = Codec(load_dac_state_dict(_dac(TINY).state_dict(), TINY), 2)
    codec.train()
    assert not codec.dac.training and not codec.dac.quantizer.training
    assert all(not p.requires_grad for p in codec.parameters())
    assert codec.encode(torch.zeros(1, 1, 64)).shape == (1, 2, 8)  # a training-mode RVQ would emit all 3


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: c.encode(torch.zeros(1, 64)), r"\[B, 1, S\]"),
        (lambda c: c.encode(torch.zeros(1, 1, 0)), "empty"),
        (lambda c: c.decode(torch.zeros(1, 2, 4, dtype=torch.long)), r"\[B, 3, T\]"),
        (lambda c: c.decode(torch.full((1, 3, 4), 16)), "out of range"),
        (lambda c: c.decode(torch.zeros(1, 3, 4)), "integer"),
    ],
)
def test_bad_input_gets_a_typed_error(call, match):
    codec = Codec(load_dac_state_dict(_dac(TINY).state_dict(), TINY), 3)
    with pytest.raises(CodecInputError, match=match):
        call(codec)


def test_too_many_quantizers_is_refused():
    with pytest.raises(ValueError, match="n_quantizers=4"):
        Codec(_dac(TINY), 4)


def test_dac_file_format_loads_through_load_codec(tmp_path):
    ref = _dac(TINY, seed=9)
    path = tmp_path / "weights" / "dac.pth"
    atomic_torch_save(path, {"state_dict": ref.state_dict(), "metadata": {"kwargs": TINY}})
    codec = load_codec(CodecConfig(kind="dac44", weights="weights/dac.pth", n_quantizers=2), root=tmp_path)
    wav = torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(1)) * 0.3
    with torch.no_grad():
        _, expected, *_ = ref.encode(ref.preprocess(wav, 8000), n_quantizers=2)
    assert torch.equal(codec.encode(wav), expected[:, :2])


def test_missing_pretrained_weights_say_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        load_codec(CodecConfig(kind="dac44", weights="", n_quantizers=9), root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / ".cache/descript/dac/weights_44khz_8kbps_0.0.1.pth") in msg
    assert "releases/download/0.0.1/weights.pth" in msg


def test_unreadable_dac_file_is_reported_with_its_path(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"w\.pth: cannot read checkpoint"):
        load_codec(CodecConfig(kind="dac44", weights=str(bad)), root=tmp_path)


def test_offline_checkpoint_is_weights_only_and_loads_by_config(tmp_path):
    model = _dac(TINY, seed=11)
    atomic_torch_save(tmp_path / "d" / "codec" / "codec.pt", offline_checkpoint(model, TINY, 3, seed=1))
    blob = torch.load(tmp_path / "d" / "codec" / "codec.pt", weights_only=True)
    assert blob["kwargs"] == TINY
    codec = load_codec(CodecConfig(kind="offline", n_quantizers=2), root=tmp_path, data_dir="d")
    wav = torch.randn(1, 1, 160, generator=torch.Generator().manual_seed(2)) * 0.3
    with torch.no_grad():
        _, expected, *_ = model.encode(model.preprocess(wav, 8000), n_quantizers=2)
    assert torch.equal(codec.encode(wav), expected[:, :2])


def test_missing_offline_codec_names_the_stage_that_makes_it(tmp_path):
    with pytest.raises(WeightsError, match=r"codec\.pt.*vaura codec --params params\.yaml"):
        load_codec(CodecConfig(kind="offline"), root=tmp_path)


def test_foreign_file_is_not_taken_for_an_offline_checkpoint(tmp_path):
    atomic_torch_save(tmp_path / "data" / "codec" / "codec.pt", {"state_dict": {}})
    with pytest.raises(WeightsError, match="not a vaura offline codec checkpoint"):
        load_codec(CodecConfig(kind="offline"), root=tmp_path)


def test_multiscale_mel_loss_is_zero_for_identical_audio_and_grows_with_distortion():
    loss = MultiScaleMelLoss(8000, windows=(64, 256))
    x = torch.randn(2, 1, 4000, generator=torch.Generator().manual_seed(0)) * 0.2
    noise = torch.randn(2, 1, 4000, generator=torch.Generator().manual_seed(1))
    assert float(loss(x, x)) == 0.0
    assert 0.0 < float(loss(x + 0.01 * noise, x)) < float(loss(x + 0.1 * noise, x))


def _clicks(times: list[float], sr: int, dur: float, seed: int) -> np.ndarray:
    """Decaying noise bursts at ``times`` over faint background noise."""
    rng = np.random.default_rng(seed)
    wav = rng.normal(0, 0.002, int(dur * sr)).astype(np.float32)
    for t in times:
        i = int(t * sr)
        n = min(len(wav) - i, int(0.15 * sr))
        wav[i : i + n] += (0.5 * np.exp(-np.arange(n) / (0.02 * sr)) * rng.normal(0, 1, n)).astype(np.float32)
    return wav


def test_training_lowers_the_reconstruction_loss():
    sr = 8000
    cfg = CodecConfig(offline=TinyDACConfig(**TINY))
    cfg.train.steps, cfg.train.batch_size, cfg.train.segment_s, cfg.train.lr = 30, 4, 0.25, 1e-2
    t = np.arange(int(1.2 * sr)) / sr
    audio = [(0.3 * np.sin(2 * np.pi * (300 + 100 * k) * t) * np.exp(-5 * (t % 0.4))).astype(np.float32)
             for k in range(4)]
    result = train_offline_codec(audio, cfg, seed=0, progress=False, log_every=10)
    assert result.steps == 30 and [h["step"] for h in result.history] == [10, 20, 30]
    assert result.history[-1]["mel"] < 0.75 * result.history[0]["mel"]
    assert not result.model.training


def test_training_refuses_odd_strides_and_empty_data():
    cfg = CodecConfig(offline=TinyDACConfig(**{**TINY, "encoder_rates": [2, 5], "decoder_rates": [5, 2]}))
    with pytest.raises(ValueError, match="even"):
        train_offline_codec([np.zeros(1000, np.float32)], cfg, seed=0, progress=False)
    with pytest.raises(ValueError, match="no training audio"):
        train_offline_codec([], CodecConfig(), seed=0, progress=False)


class _FakeCodec:
    """Follows the Codec interface; ``mode`` decides what the 'reconstruction' is."""

    sample_rate = 16000

    def __init__(self, mode: str):
        self.mode = mode

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return wav

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity":
            return codes
        if self.mode == "silence":
            return torch.zeros_like(codes)
        return torch.roll(codes, int(0.3 * self.sample_rate), dims=-1)  # every hit 300 ms late


def test_quality_gate_compares_reconstruction_f1_with_the_original():
    sr, gate = 16000, CodecGateConfig(tolerance_s=0.1, max_gap=0.05, max_clips=8)
    truth = {"a": np.array([0.4, 1.1, 1.9]), "b": np.array([0.5, 1.4])}
    clips = [(c, _clicks(list(t), sr, 2.56, i)) for i, (c, t) in enumerate(truth.items())]
    same = quality_gate(_FakeCodec("identity"), clips, truth, gate, progress=False)
    assert same["n_clips"] == 2 and same["n_events"] == 5
    assert same["f1_original"] > 0.8
    assert same["f1_reconstructed"] == same["f1_original"] and same["gate_pass"] and same["log_mel_distance"] == 0.0
    silent = quality_gate(_FakeCodec("silence"), clips, truth, gate, progress=False)
    assert silent["f1_reconstructed"] == 0.0 and silent["recall_reconstructed"] == 0.0 and not silent["gate_pass"]
    assert silent["f1_gap"] == pytest.approx(silent["f1_original"])
    late = quality_gate(_FakeCodec("late"), clips, truth, gate, progress=False)
    assert late["f1_reconstructed"] < 0.5 and not late["gate_pass"]


def test_reconstruct_returns_the_input_length():
    codec = Codec(load_dac_state_dict(_dac(TINY).state_dict(), TINY), 3)
    assert reconstruct(codec, np.zeros(1001, np.float32)).shape == (1001,)


def test_building_a_dac_prints_no_warning_the_user_cannot_act_on():
    """dac's own use of deprecated torch APIs (jit.script at import, weight_norm per layer) is filtered at the
    source; a fresh interpreter (dac not yet imported) shows every warning that is left."""
    import subprocess
    import sys

    code = ("from vaura.codec.codec import _new_dac\n"
            "_new_dac(dict(encoder_dim=4, encoder_rates=[2, 4], decoder_dim=8, decoder_rates=[4, 2], n_codebooks=2,"
            " codebook_size=8, codebook_dim=4, sample_rate=8000))\n")
    res = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr, res.stderr
