"""Metric results that can say "skipped" instead of silently vanishing or turning into a zero.

Every metric in :mod:`vaura.eval` returns a :class:`MetricResult`. A metric whose pretrained weights are absent
returns ``status="skipped"`` with the reason (:func:`load_or_skip`); ``evaluate`` writes it into ``metrics.json``
and MLflow tags, and ``report`` prints ``skipped: <reason>`` in the table cell. Weights that are there but cannot
be used (unreadable, another network's) are an error, not a skip: the file was put there to be used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from vaura.weights import WeightsError

T = TypeVar("T")


def load_or_skip(path: str | Path | None, load: Callable[[], T]) -> tuple[T | None, str]:
    """``(load(), "")``, or ``(None, reason)`` when the weights file ``path`` is absent (or not named: None).

    A present file that fails to load re-raises its :class:`WeightsError`: skipping the metric would hide it.
    """
    try:
        return load(), ""
    except WeightsError as exc:
        if path is not None and Path(path).exists():
            raise
        return None, str(exc)


@dataclass
class MetricResult:
    """One metric over one (test set, variant, γ) batch.

    ``values`` holds the numbers (e.g. ``{"f1": 0.7, "offset_ms": 40.0}``); ``backbone`` names the embedding or
    classifier so tables never mix e.g. VGGish FAD with the weight-free log-mel FAD; ``intervals`` holds the
    bootstrap interval of those values that have one.
    """

    name: str
    status: Literal["ok", "skipped"]
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    backbone: str = ""
    # value key → (low, high) bootstrap interval (vaura.eval.bootstrap); written as <key>_low / <key>_high
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    # per-item counts behind a pooled value (onset-sync: tp/fp/fn of each generated clip), in item order; kept
    # out of metrics.json and written as a table, so that two variants can be compared item by item
    items: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def ok(cls, name: str, values: dict[str, float], backbone: str = "") -> "MetricResult":
        return cls(name=name, status="ok", values={k: float(v) for k, v in values.items()}, backbone=backbone)

    @classmethod
    def skipped(cls, name: str, reason: str, backbone: str = "") -> "MetricResult":
        if not reason:
            raise ValueError(f"metric {name!r}: a skipped metric needs a reason")
        return cls(name=name, status="skipped", reason=reason, backbone=backbone)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "backbone": self.backbone}
        if self.status == "ok":
            # NaN (e.g. no matched onset → no offset) is written as null: metrics files must be strict JSON.
            out.update({k: (None if math.isnan(v) else v) for k, v in self.values.items()})
            for k, (lo, hi) in self.intervals.items():
                out[f"{k}_low"], out[f"{k}_high"] = (None if math.isnan(lo) else lo), (None if math.isnan(hi) else hi)
        else:
            out["reason"] = self.reason
        return out
