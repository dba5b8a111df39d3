"""Bootstrap confidence intervals over test clips × samples (seeded, so a table is reproducible).

A table value is a statistic of a set of generated items (one per test clip and sample). The interval resamples
that set the way it was drawn: first the clips, with replacement; then, within each drawn clip, its samples,
with replacement (a two-stage cluster bootstrap, so the several samples of one clip are not counted as
independent evidence). The interval is the percentile interval of the statistic over ``n`` resamples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from vaura.config import bounded


@dataclass
class BootstrapConfig:
    """params.yaml section ``evaluate.bootstrap``."""

    n: int = bounded(1000, ge=1)        # resamples of the cheap statistics (onset counts)
    fad_n: int = bounded(200, ge=1)     # resamples of FAD (each refits two covariances)
    seed: int = bounded(1234, ge=0)
    level: float = bounded(0.95, gt=0, lt=1)


def resample_indices(clips: Sequence[str], n: int, seed: int) -> list[np.ndarray]:
    """``n`` arrays of item indices: clips drawn with replacement, then each drawn clip's items likewise.

    ``clips[i]`` names the clip of item ``i``. With equally many samples per clip every resample has as many
    items as the original set.
    """
    if n < 1:
        raise ValueError(f"bootstrap: n must be >= 1, got {n}")
    labels = np.asarray([str(c) for c in clips])
    if labels.size == 0:
        raise ValueError("bootstrap: no items to resample")
    rng = np.random.default_rng(seed)
    # Items sorted by clip: clip g owns order[start[g] : start[g] + size[g]].
    _, codes = np.unique(labels, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    size = np.bincount(codes)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    out = []
    for _ in range(n):
        drawn = rng.integers(0, size.size, size=size.size)
        sizes = size[drawn]
        within = (rng.random(int(sizes.sum())) * np.repeat(sizes, sizes)).astype(np.int64)
        out.append(order[np.repeat(start[drawn], sizes) + within])
    return out


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap ``values`` (NaNs, e.g. an undefined offset, are ignored)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level must be in (0, 1), got {level}")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def bootstrap(stat: Callable[[np.ndarray], dict[str, float]], clips: Sequence[str], cfg: BootstrapConfig
              ) -> dict[str, tuple[float, float]]:
    """``{key: (low, high)}`` for every key of ``stat(indices)`` (a dict of statistics of the items at those
    indices), over ``cfg.n`` seeded two-stage resamples of ``clips``."""
    draws = resample_indices(clips, cfg.n, cfg.seed)
    values: dict[str, list[float]] = {}
    for idx in draws:
        for key, v in stat(idx).items():
            values.setdefault(key, []).append(v)
    return {k: interval(np.asarray(v, dtype=np.float64), cfg.level) for k, v in values.items()}
