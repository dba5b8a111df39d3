"""Relevance scorers behind one small interface, a registry by name, and the per-clip scoring loop.

A scorer answers "does this clip's sound come from what is visible?" with one float per clip (higher = more
relevant). The scale depends on the scorer (ImageBind: cosine in [-1, 1], typically 0–0.5 on VGGSound;
motion-onset: a normalised cross-correlation in [-1, 1]); ``filter.threshold`` must be chosen for the scorer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import pandas as pd
from tqdm import tqdm

from vaura.config import bounded
from vaura.curation.scorer import Scorer, ScoringError


@dataclass
class ScoreConfig:
    """params.yaml section ``score``."""

    scorer: Literal["motion-onset", "imagebind"] = "motion-onset"
    imagebind_weights: str = "weights/imagebind_huge.pth"
    batch_size: int = bounded(4, ge=1)
    workers: int = bounded(2, ge=1)
    motion_short_side: int = bounded(64, ge=1)
    motion_max_lag_frames: int = bounded(2, ge=0)
    motion_audio_rate: int = bounded(16000, ge=1)


def _build_motion_onset(cfg: ScoreConfig, root: Path, device: str) -> Scorer:
    from vaura.curation.motion_onset import MotionOnsetScorer

    return MotionOnsetScorer(
        short_side=cfg.motion_short_side, max_lag_frames=cfg.motion_max_lag_frames, audio_rate=cfg.motion_audio_rate,
        workers=cfg.workers,
    )


def _build_imagebind(cfg: ScoreConfig, root: Path, device: str) -> Scorer:
    from vaura.curation.imagebind_score import ImageBindScorer, load_imagebind

    model = load_imagebind(root / cfg.imagebind_weights, device=device)
    return ImageBindScorer(model, device=device, workers=cfg.workers)


SCORERS: dict[str, Callable[[ScoreConfig, Path, str], Scorer]] = {
    # name -> builder(cfg, repo root, device); builders import lazily (ImageBind pulls in pytorchvideo).
    "motion-onset": _build_motion_onset,
    "imagebind": _build_imagebind,
}


def build_scorer(cfg: ScoreConfig, root: str | Path = ".", device: str = "cpu") -> Scorer:
    """The scorer named by ``cfg.scorer``, with its weights (if any) loaded from paths under ``root``."""
    if cfg.scorer not in SCORERS:
        raise ValueError(f"unknown scorer {cfg.scorer!r}; known: {sorted(SCORERS)}")
    return SCORERS[cfg.scorer](cfg, Path(root), device)


def score_clips(
    clips: pd.DataFrame, scorer: Scorer, batch_size: int = 1, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every row of a manifest (``clip``, absolute ``path``, ``split``, ...).

    Returns ``(scores, rejected)``: scores has ``clip,path,split,score,scorer,duration_s`` (the duration from
    the manifest, probed from the file when the manifest lacks it: ``filter`` needs it); a clip whose scoring raises a :class:`vaura.media.MediaError` or :class:`ScoringError` is
    listed in ``rejected`` (``clip,path,split,reason``) instead of stopping the stage. A failing batch is
    retried clip by clip so one bad file does not reject its neighbours.
    """
    from vaura.media import MediaError, probe

    bad_input = (MediaError, ScoringError)
    rows, rejected = [], []
    records = clips.to_dict("records")
    bar = tqdm(total=len(records), desc=f"score[{scorer.name}]", unit="clip", disable=not progress)
    for start in range(0, len(records), max(1, batch_size)):
        batch = records[start : start + max(1, batch_size)]
        try:
            scores: list[float | None] = list(scorer.score_batch([r["path"] for r in batch]))
            errors: list[str | None] = [None] * len(batch)
        except bad_input:
            scores, errors = [], []
            for r in batch:
                try:
                    scores.append(scorer.score_clip(r["path"]))
                    errors.append(None)
                except bad_input as exc:
                    scores.append(None)
                    errors.append(str(exc))
        for r, s, err in zip(batch, scores, errors):
            duration = r.get("duration_s")
            if err is None and (duration is None or pd.isna(duration) or duration == ""):
                try:
                    duration = probe(r["path"]).duration_s
                except MediaError as exc:
                    err = str(exc)
            if err is not None:
                rejected.append({"clip": r["clip"], "path": r["path"], "split": r["split"], "reason": err})
                continue
            rows.append({"clip": r["clip"], "path": r["path"], "split": r["split"], "score": float(s),
                         "scorer": scorer.name, "duration_s": float(duration)})
        bar.update(len(batch))
    bar.close()
    columns = ["clip", "path", "split", "score", "scorer", "duration_s"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(rejected, columns=["clip", "path", "split", "reason"])


def relevance_auc(scores: pd.DataFrame, relevance: pd.DataFrame) -> dict:
    """ROC-AUC of the score for separating relevant clips (``relevant == 1``) from the injected irrelevant ones.

    ``relevance`` is the synthetic benchmark's ground truth (``clip,relevant,kind``). Also reports the AUC of
    relevant vs each irrelevant ``kind`` alone, so a scorer blind to one kind (e.g. ``music``) is visible.
    """
    from sklearn.metrics import roc_auc_score

    merged = scores.merge(relevance[["clip", "relevant", "kind"]], on="clip", how="inner")
    labels = merged["relevant"].astype(int).to_numpy()
    out: dict = {"n_relevant": int((labels == 1).sum()), "n_irrelevant": int((labels == 0).sum())}
    if out["n_relevant"] == 0 or out["n_irrelevant"] == 0:
        out["auc"] = None  # undefined with one class; None stays valid JSON (NaN would not)
        return out
    out["auc"] = float(roc_auc_score(labels, merged["score"].to_numpy()))
    by_kind = {}
    for kind, part in merged[merged["relevant"] == 0].groupby("kind"):
        both = pd.concat([merged[merged["relevant"] == 1], part])
        by_kind[str(kind)] = float(roc_auc_score(both["relevant"].astype(int), both["score"]))
    out["auc_by_kind"] = by_kind
    return out
