"""Bootstrap intervals over clips × samples on constructed cases whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from vaura.eval.bootstrap import BootstrapConfig, bootstrap, interval, resample_indices
from vaura.eval.onset_sync import onset_sync


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
    silent = np.zeros_like(hit)
    mixed = onset_sync([hit, silent] * 3, sr, truths, clips=clips, boot=BootstrapConfig(n=300, seed=2))
    lo, hi = mixed.intervals["recall"]
    assert mixed.values["recall"] == pytest.approx(0.5) and lo < 0.5 < hi
