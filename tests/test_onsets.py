import numpy as np
import pytest

from vaura.onsets import detect_onsets, event_f1, match_events


def _hits(times, sr, dur=3.0, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    x = noise * rng.standard_normal(int(dur * sr))
    n = int(0.2 * sr)
    tt = np.arange(n) / sr
    for k, t in enumerate(times):
        f = [220.0, 900.0, 2500.0, 450.0, 1400.0][k % 5]
        i = int(round(t * sr))
        x[i : i + n] += 0.5 * np.exp(-tt * 30) * np.sin(2 * np.pi * f * tt)
    return x.astype(np.float32)


@pytest.mark.parametrize("sr", [16000, 44100])
def test_detects_hits_at_their_times(sr):
    times = np.array([0.31, 0.87, 1.04, 1.66, 2.4])
    pred = detect_onsets(_hits(times, sr), sr)
    assert len(pred) == len(times)
    assert np.max(np.abs(pred - times)) <= 0.02


def test_no_onsets_in_noise_or_silence():
    rng = np.random.default_rng(1)
    assert detect_onsets(0.01 * rng.standard_normal(32000).astype(np.float32), 16000).size == 0
    assert detect_onsets(np.zeros(32000, np.float32), 16000).size == 0


def test_shifting_audio_shifts_onsets():
    sr = 16000
    times = np.array([0.5, 1.2, 2.0])
    shifted = detect_onsets(_hits(times + 0.3, sr), sr)
    np.testing.assert_allclose(shifted, times + 0.3, atol=0.02)


def test_match_events_counts_and_signed_offsets():
    m = match_events(np.array([0.55, 1.0, 3.0]), np.array([0.5, 1.02, 2.0]), tol=0.1)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    np.testing.assert_allclose(sorted(m.offsets_s), [-0.02, 0.05], atol=1e-12)
    assert m.mean_abs_offset_ms == pytest.approx(35.0)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)


def test_match_is_optimal_not_greedy():
    # Greedy nearest-first would pair 1.00 with 1.04 and leave 0.95 unmatched (|0.95-1.09| > tol).
    m = match_events(np.array([0.95, 1.04]), np.array([1.00, 1.09]), tol=0.06)
    assert m.tp == 2


def test_tolerance_is_inclusive_and_empty_inputs():
    assert match_events(np.array([1.1]), np.array([1.0]), tol=0.1 + 1e-9).tp == 1
    assert match_events(np.array([1.2]), np.array([1.0]), tol=0.1).tp == 0
    r = event_f1(np.zeros(0), np.array([1.0, 2.0]))
    assert (r["tp"], r["fn"], r["f1"]) == (0, 2, 0.0)
    assert np.isnan(r["mean_abs_offset_ms"])
