"""Relevance threshold → train/val/test clip lists with fixed evaluation windows.

The threshold applies to the splits in ``filter.apply_to`` — by default only ``train``: val/test are fixed
evaluation sets (as in VisualSound, whose val/test were filtered once by the dataset authors, and so that a
threshold ablation compares models on the same test clips). Every clip must hold one ``window_s`` window of
visual features, which cover whole 16-frame (0.64 s) segments; shorter clips are dropped from every split.
Val/test rows carry a fixed, deterministic window start (``eval_start_s``, clamped so the window lies inside
the clip, snapped down to a visual-token boundary of 0.08 s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from vaura.config import bounded

SPLITS = ("train", "val", "test")
VIDEO_FPS = 25.0
SEGMENT_FRAMES = 16  # Segment-AVCLIP encodes 16-frame segments; features exist only for whole segments
TOKEN_S = 0.08  # one visual token per 2 frames at 25 fps (12.5 Hz)


class FilterError(ValueError):
    """A scores table that cannot be filtered (names the file and the reason)."""


@dataclass
class FilterConfig:
    """params.yaml section ``filter``."""

    threshold: float = bounded(0.2, ge=-1, le=1)
    apply_to: list[Literal["train", "val", "test"]] = field(default_factory=lambda: ["train"])
    report_thresholds: list[float] = bounded([0.0, 0.2, 0.3, 0.4], ge=-1, le=1)
    eval_start_s: float = bounded(0.0, ge=0)
    window_s: float = bounded(2.56, gt=0)


def feature_span_s(duration_s: float) -> float:
    """Seconds covered by visual features of a clip: whole 16-frame segments at 25 fps."""
    frames = round(duration_s * VIDEO_FPS)
    return (frames // SEGMENT_FRAMES) * SEGMENT_FRAMES / VIDEO_FPS


def eval_window_start(duration_s: float, wanted_s: float, window_s: float) -> float:
    """Fixed window start: ``wanted_s`` clamped into the clip, snapped down to a 0.08 s token boundary."""
    latest = feature_span_s(duration_s) - window_s
    if latest < -1e-9:
        raise FilterError(f"clip of {duration_s:.3f} s cannot hold a {window_s} s window")
    start = min(max(wanted_s, 0.0), max(latest, 0.0))
    return round(math.floor(start / TOKEN_S + 1e-6) * TOKEN_S, 6)


def filter_scores(scores: pd.DataFrame, cfg: FilterConfig, source: str = "scores") -> tuple[dict[str, pd.DataFrame], dict]:
    """Split lists (``clip,path`` for train, ``clip,path,start_sec`` for val/test) and the filter metrics.

    Metrics include how many train clips each of ``report_thresholds`` keeps (the paper's Table II column).
    """
    missing = {"clip", "path", "split", "score", "duration_s"} - set(scores.columns)
    if missing:
        raise FilterError(f"{source}: missing column(s) {sorted(missing)}")
    bad_split = sorted(set(scores["split"]) - set(SPLITS))
    if bad_split:
        raise FilterError(f"{source}: unknown split(s) {bad_split}; expected {list(SPLITS)}")
    fits = scores["duration_s"].map(feature_span_s) >= cfg.window_s - 1e-9
    eligible = scores[fits]
    lists: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        part = eligible[eligible["split"] == split]
        if split in cfg.apply_to:
            part = part[part["score"] >= cfg.threshold]
        part = part[["clip", "path"]].assign(duration_s=part["duration_s"])
        if split != "train":
            part["start_sec"] = [eval_window_start(d, cfg.eval_start_s, cfg.window_s) for d in part["duration_s"]]
        lists[split] = part.drop(columns="duration_s").reset_index(drop=True)
    train_scores = eligible.loc[eligible["split"] == "train", "score"]
    metrics = {
        "scorer": str(scores["scorer"].iloc[0]) if "scorer" in scores and len(scores) else "",
        "threshold": cfg.threshold,
        "apply_to": list(cfg.apply_to),
        "scored": {s: int((scores["split"] == s).sum()) for s in SPLITS},
        "too_short": int((~fits).sum()),
        "kept": {s: len(lists[s]) for s in SPLITS},
        "kept_train_at": {f"{t:g}": int((train_scores >= t).sum()) for t in cfg.report_thresholds},
    }
    return lists, metrics


def read_split(path: str | Path) -> pd.DataFrame:
    """Read a split list (``clip,path[,start_sec]``) written by the ``filter`` stage; ``path`` comes back absolute."""
    from vaura.tables import read_table

    return read_table(path, {"clip"}, hint="run `vaura filter` first")
