"""Onset-sync: the weight-free temporal-alignment metric on the synthetic benchmark's ground truth.

It measures what the paper's Fig. 2 shows by eye: for each generated clip, onsets detected in the audio are
matched one-to-one to the clip's true (visible) event times within ±``tol``; the result pools all clips of a
batch — mean |offset| of the matched pairs in ms, event precision / recall / F1, and the counts of missed
(ground-truth events with no onset) and extra (onsets with no event) hits.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from vaura.eval.bootstrap import BootstrapConfig, bootstrap
from vaura.onsets import EventMatch, detect_onsets, match_events
from vaura.eval.results import MetricResult

# Values that get a bootstrap interval (the counts pool over the resampled items, as the point values do).
INTERVAL_KEYS = ("f1", "precision", "recall", "offset_ms", "missed", "extra")


def _pool(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> EventMatch:
    """The items at ``idx`` pooled into one match (repeats count repeatedly): its precision/recall/F1 are the
    micro-averaged ones."""
    return EventMatch(int(tp[idx].sum()), int(fp[idx].sum()), int(fn[idx].sum()), offsets)


def _pooled(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, offsets: list[np.ndarray], idx: np.ndarray
            ) -> dict[str, float]:
    """Micro-averaged onset statistics of the items at ``idx`` (repeats count repeatedly)."""
    m = _pool(tp, fp, fn, np.concatenate([offsets[i] for i in idx]) if len(idx) else np.zeros(0), idx)
    return {
        "offset_ms": m.mean_abs_offset_ms,
        "signed_offset_ms": float(np.mean(m.offsets_s) * 1000.0) if m.offsets_s.size else float("nan"),
        "precision": m.precision, "recall": m.recall, "f1": m.f1, "matched": m.tp, "missed": m.fn, "extra": m.fp,
    }


def onset_sync(
    generated: Sequence[np.ndarray],
    sample_rate: int,
    true_times: Sequence[np.ndarray],
    tol: float = 0.1,
    clips: Sequence[str] | None = None,
    boot: BootstrapConfig | None = None,
) -> MetricResult:
    """Pool onset matches over a batch of generated clips.

    ``generated[i]`` is mono float audio, ``true_times[i]`` the ground-truth event times (s) *relative to the
    clip's start*. Counts are pooled (micro-average) so clips with more events weigh more, as in event-detection
    benchmarks; ``offset_ms`` is NaN-free only when at least one pair matched (otherwise it is reported as NaN).
    With ``clips`` (the clip of each item) and ``boot``, every value of :data:`INTERVAL_KEYS` gets a bootstrap
    interval over clips × samples.
    """
    if len(generated) != len(true_times):
        raise ValueError(f"onset_sync: {len(generated)} clips but {len(true_times)} ground-truth lists")
    if not generated:
        return MetricResult.skipped("onset_sync", "no generated clips to score", backbone="spectral-flux onsets")
    matches = [match_events(detect_onsets(audio, sample_rate), np.asarray(truth, dtype=np.float64), tol)
               for audio, truth in zip(generated, true_times)]
    tp, fp, fn = (np.asarray([getattr(m, k) for m in matches], dtype=np.float64) for k in ("tp", "fp", "fn"))
    offsets = [np.asarray(m.offsets_s, dtype=np.float64) for m in matches]
    values = _pooled(tp, fp, fn, offsets, np.arange(len(matches)))
    result = MetricResult.ok("onset_sync", {**values, "n_clips": len(generated)},
                             backbone=f"spectral-flux onsets, ±{tol * 1000:.0f} ms")
    result.items = {k: v.astype(np.int64).tolist() for k, v in (("tp", tp), ("fp", fp), ("fn", fn))}
    if clips is not None and boot is not None:
        result.intervals = bootstrap(
            lambda idx: {k: v for k, v in _pooled(tp, fp, fn, offsets, idx).items() if k in INTERVAL_KEYS},
            clips, boot)
    return result


def f1_difference(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], clips: Sequence[str],
                  boot: BootstrapConfig) -> tuple[float, float, float]:
    """Pooled onset F1 of ``a`` minus that of ``b`` and its paired bootstrap interval: ``(diff, low, high)``.

    ``a`` and ``b`` hold per-item counts (``tp``, ``fp``, ``fn``) of the same items — item ``i`` of both is a
    sample of clip ``clips[i]`` — so every resample draws the same clips for both and the clip-to-clip spread,
    which the two variants share, cancels from the difference. Non-overlapping separate intervals are a
    stricter (and less powerful) test of the same question.
    """
    counts = [tuple(np.asarray(side[k], dtype=np.float64) for k in ("tp", "fp", "fn")) for side in (a, b)]
    if not len(clips) == len(counts[0][0]) == len(counts[1][0]):
        raise ValueError(f"f1_difference: {len(clips)} clips for {len(counts[0][0])} and {len(counts[1][0])} items")

    def diff(idx: np.ndarray) -> float:
        return _pool(*counts[0], np.zeros(0), idx).f1 - _pool(*counts[1], np.zeros(0), idx).f1

    low, high = bootstrap(lambda idx: {"diff": diff(idx)}, clips, boot)["diff"]
    return diff(np.arange(len(clips))), low, high
