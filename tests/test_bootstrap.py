"""Bootstrap intervals over clips × samples on constructed cases whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from vaura.eval.bootstrap import BootstrapConfig, bootstrap, interval, resample_indices
from vaura.eval.onset_sync import f1_difference, onset_sync


def _mean_interval(values: np.ndarray, clips: list[str], cfg: BootstrapConfig) -> tuple[float, float]:
    return bootstrap(lambda idx: {"mean": float(values[idx].mean())}, clips, cfg)["mean"]


def test_constant_values_give_a_zero_width_interval() -> None:
    values = np.full(40, 0.7)
    lo, hi = _mean_interval(values, [f"c{i // 2}" for i in range(40)], BootstrapConfig(n=200, seed=1))
    assert lo == hi == pytest.approx(0.7)


def test_large_normal_sample_matches_the_analytic_interval() -> None:
    """One sample per clip: the percentile interval of the mean ≈ mean ± 1.96 σ/√n."""
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=2000)
    lo, hi = _mean_interval(values, [str(i) for i in range(values.size)], BootstrapConfig(n=2000, seed=3))
    half = 1.959964 * values.std(ddof=1) / np.sqrt(values.size)
    assert lo == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(values.mean() + half, abs=0.15 * half)


def test_samples_of_one_clip_are_not_independent_evidence() -> None:
    """Duplicating every clip's value as a second sample adds no information: the interval must not shrink
    (an item-level bootstrap would narrow it by √2)."""
    rng = np.random.default_rng(1)
    per_clip = rng.normal(0.0, 1.0, size=400)
    cfg = BootstrapConfig(n=1500, seed=5)
    one = _mean_interval(per_clip, [str(i) for i in range(400)], cfg)
    two = _mean_interval(np.repeat(per_clip, 2), [str(i) for i in np.repeat(np.arange(400), 2)], cfg)
    assert (two[1] - two[0]) == pytest.approx(one[1] - one[0], rel=0.12)


def test_resamples_are_seeded_and_draw_whole_clips_first() -> None:
    clips = ["a", "a", "b", "b", "c", "c"]
    first, again = resample_indices(clips, 50, 9), resample_indices(clips, 50, 9)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not all(np.array_equal(x, y) for x, y in zip(first, resample_indices(clips, 50, 10)))
    for idx in first:
        assert idx.size == len(clips)
        # items come in per-clip blocks of two: each block's items belong to one clip
        assert all(clips[i] == clips[j] for i, j in idx.reshape(-1, 2))
    assert len({tuple(sorted(clips[i] for i in idx)) for idx in first}) > 1  # the clip mix varies


def test_interval_ignores_undefined_resamples_and_checks_level() -> None:
    assert interval(np.array([np.nan, 1.0, 1.0]), 0.95) == (1.0, 1.0)
    assert all(np.isnan(interval(np.array([np.nan]), 0.95)))
    with pytest.raises(ValueError, match="level"):
        interval(np.ones(3), 1.5)


def test_onset_f1_interval_brackets_the_value_and_is_degenerate_when_every_item_agrees() -> None:
    sr = 16000
    t = np.arange(int(2.56 * sr)) / sr
    hit = np.zeros_like(t, dtype=np.float32)
    for s in (0.5, 1.5):
        hit[int(s * sr): int(s * sr) + 800] = 0.8 * np.exp(-np.arange(800) / 128.0)
    hit += 0.001 * np.random.default_rng(0).standard_normal(t.size).astype(np.float32)
    truths = [np.array([0.5, 1.5])] * 6
    clips = ["a", "a", "b", "b", "c", "c"]
    res = onset_sync([hit] * 6, sr, truths, clips=clips, boot=BootstrapConfig(n=100, seed=2))
    assert res.values["f1"] == pytest.approx(1.0) and res.intervals["f1"] == pytest.approx((1.0, 1.0))
    assert res.items == {"tp": [2] * 6, "fp": [0] * 6, "fn": [0] * 6}  # per item, in item order
    silent = np.zeros_like(hit)
    mixed = onset_sync([hit, silent] * 3, sr, truths, clips=clips, boot=BootstrapConfig(n=300, seed=2))
    lo, hi = mixed.intervals["recall"]
    assert mixed.values["recall"] == pytest.approx(0.5) and lo < 0.5 < hi
    assert mixed.items == {"tp": [2, 0] * 3, "fp": [0] * 6, "fn": [0, 2] * 3}


def _counts(tp, fp, fn) -> dict[str, np.ndarray]:
    return {"tp": np.asarray(tp, float), "fp": np.asarray(fp, float), "fn": np.asarray(fn, float)}


def test_paired_f1_difference_known_answers() -> None:
    """Identical sides differ by exactly 0; a side that misses one of two events on every item has F1 2/3
    in every resample, so the difference is exactly 1/3 with a zero-width interval."""
    clips = ["a", "a", "b", "b", "c", "c"]
    cfg = BootstrapConfig(n=200, seed=1)
    perfect = _counts([2] * 6, [0] * 6, [0] * 6)
    assert f1_difference(perfect, perfect, clips, cfg) == pytest.approx((0.0, 0.0, 0.0))
    half = _counts([1] * 6, [0] * 6, [1] * 6)
    assert f1_difference(perfect, half, clips, cfg) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert f1_difference(half, perfect, clips, cfg) == pytest.approx((-1 / 3, -1 / 3, -1 / 3))
    with pytest.raises(ValueError, match="6 clips for 6 and 4 items"):
        f1_difference(perfect, _counts([1] * 4, [0] * 4, [1] * 4), clips, cfg)


def test_pairing_removes_the_clip_spread_both_sides_share() -> None:
    """Easy and hard clips alternate (F1 varies a lot by clip); side b is side a with one hit fewer and one
    extra onset on every item. Separately the two F1 intervals overlap; the paired difference excludes 0."""
    clips = [f"c{k:02d}" for k in range(12) for _ in range(2)]
    events = np.array([2.0 + k for k in range(12) for _ in range(2)])
    share = np.array([(0.1, 0.9)[k % 2] for k in range(12) for _ in range(2)])
    tp = np.round(events * share)
    a = _counts(tp, np.ones_like(tp), events - tp)
    b = _counts(np.maximum(tp - 1, 0), np.full_like(tp, 2.0), events - np.maximum(tp - 1, 0))
    cfg = BootstrapConfig(n=1000, seed=3)
    zero = _counts(np.zeros_like(tp), np.zeros_like(tp), np.zeros_like(tp))
    _, a_lo, a_hi = f1_difference(a, zero, clips, cfg)   # F1 of a alone (the zero side has F1 0 everywhere)
    _, b_lo, b_hi = f1_difference(b, zero, clips, cfg)
    assert a_lo < b_hi  # the separate intervals overlap: the unpaired test cannot tell them apart
    diff, lo, hi = f1_difference(a, b, clips, cfg)
    assert 0 < lo <= diff <= hi
