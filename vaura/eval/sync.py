"""Audio-visual synchrony of generated audio with Synchformer: V-AURA's ``sync`` and av-benchmark's ``desync``.

Synchformer (:mod:`vaura.eval.synchformer`) classifies the audio-visual offset of a 4.8 s window (14 segments ×
16 frames at 25 fps, stride 8; audio at 16 kHz) into 21 classes ``linspace(-2, 2, 21)`` s.
This module owns only the *protocols*, i.e. which 4.8 s windows are fed for a clip:

- ``sync`` (V-AURA): the 2.56 s clip — video frames and generated audio together — is looped to fill the model's
  input and ONE window (the start) is scored; the metric is the mean |offset| in **milliseconds**.
- ``desync`` (av-benchmark / MMAudio): the first and the last 4.8 s windows of the clip, offsets averaged per clip,
  mean |offset| in **seconds**. A clip shorter than 4.8 s is looped like ``sync`` first, so both windows coincide
  and ``desync`` = ``sync`` / 1000 for the paper's 2.56 s clips (av-benchmark targets 8 s clips).

The model is reached through an :class:`OffsetPredictor`: ``(frames uint8 [B, 120, H, W, 3], audio float32
[B, 76800] at 16 kHz) -> offsets in seconds [B]``; :func:`synchformer_predictor` adapts that network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchaudio

from vaura.eval.results import MetricResult, load_or_skip

VIDEO_FPS = 25
AUDIO_SR = 16000
WINDOW_S = 4.8  # 14 segments × 16 frames, stride 8 → 120 frames
WINDOW_FRAMES = 120
WINDOW_SAMPLES = int(WINDOW_S * AUDIO_SR)

OffsetPredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    wav = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate == AUDIO_SR:
        return wav
    return torchaudio.functional.resample(torch.from_numpy(wav), sample_rate, AUDIO_SR).numpy()


def loop_to_window(frames: np.ndarray, audio16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repeat a short clip (frames at 25 fps, audio at 16 kHz) until it covers 4.8 s; keep the first 4.8 s.

    Video and audio loop with the same period (the video's duration), so their relative alignment is kept
    across the loop seam.
    """
    n_frames = frames.shape[0]
    if n_frames == 0:
        raise ValueError("sync: the clip has no video frames")
    period = int(round(n_frames / VIDEO_FPS * AUDIO_SR))
    audio16k = np.pad(audio16k[:period], (0, max(0, period - audio16k.size)))
    reps = -(-WINDOW_FRAMES // n_frames)
    v = np.concatenate([frames] * reps)[:WINDOW_FRAMES]
    a = np.tile(audio16k, reps + 1)[:WINDOW_SAMPLES]
    return v, a


def clip_windows(frames: np.ndarray, audio16k: np.ndarray, which: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 4.8 s windows a protocol scores: ``"loop"`` → one looped window; ``"first_last"`` → the first and last
    4.8 s (a clip shorter than 4.8 s is looped first)."""
    duration = frames.shape[0] / VIDEO_FPS
    if which == "loop" or duration < WINDOW_S:
        return [loop_to_window(frames, audio16k)]
    if which != "first_last":
        raise ValueError(f"unknown window protocol {which!r}")
    audio16k = np.pad(audio16k, (0, max(0, int(round(duration * AUDIO_SR)) - audio16k.size)))
    last_f = frames.shape[0] - WINDOW_FRAMES
    last_s = int(round(last_f / VIDEO_FPS * AUDIO_SR))
    return [
        (frames[:WINDOW_FRAMES], audio16k[:WINDOW_SAMPLES]),
        (frames[last_f:], audio16k[last_s : last_s + WINDOW_SAMPLES]),
    ]


def _offsets(
    predictor: OffsetPredictor,
    frames: Sequence[np.ndarray],
    audios: Sequence[np.ndarray],
    sample_rate: int,
    which: str,
    batch_size: int,
) -> np.ndarray:
    """Mean predicted offset (s) per clip over its windows."""
    if len(frames) != len(audios):
        raise ValueError(f"sync: {len(frames)} videos but {len(audios)} audio clips")
    items: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i, (f, a) in enumerate(zip(frames, audios)):
        items += [(i, v, w) for v, w in clip_windows(f, _to_16k(a, sample_rate), which)]
    per_clip: list[list[float]] = [[] for _ in frames]
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        pred = np.asarray(predictor(np.stack([c[1] for c in chunk]), np.stack([c[2] for c in chunk])))
        for (i, _, _), off in zip(chunk, pred.reshape(-1)):
            per_clip[i].append(float(off))
    return np.array([np.mean(np.abs(p)) for p in per_clip])


def sync_score(
    predictor: OffsetPredictor | None,
    frames: Sequence[np.ndarray],
    audios: Sequence[np.ndarray],
    sample_rate: int,
    skip_reason: str = "",
    batch_size: int = 4,
) -> MetricResult:
    """V-AURA Sync: mean |offset| (ms) of the looped single window; skipped when no predictor is available."""
    if predictor is None:
        return MetricResult.skipped("sync", skip_reason or "no Synchformer", backbone="synchformer")
    off = _offsets(predictor, frames, audios, sample_rate, "loop", batch_size)
    return MetricResult.ok("sync", {"sync_ms": float(off.mean() * 1000.0)}, backbone="synchformer")


def desync_score(
    predictor: OffsetPredictor | None,
    frames: Sequence[np.ndarray],
    audios: Sequence[np.ndarray],
    sample_rate: int,
    skip_reason: str = "",
    batch_size: int = 4,
) -> MetricResult:
    """av-benchmark DeSync: mean over clips of the |offset| (s) averaged over the first and last 4.8 s windows."""
    if predictor is None:
        return MetricResult.skipped("desync", skip_reason or "no Synchformer", backbone="synchformer")
    off = _offsets(predictor, frames, audios, sample_rate, "first_last", batch_size)
    return MetricResult.ok("desync", {"desync_s": float(off.mean())}, backbone="synchformer")


def load_sync_predictor(
    weights: str | Path, device: str | torch.device = "cpu", size: Any = None
) -> tuple[OffsetPredictor | None, str]:
    """(predictor, "") from the strict Synchformer loader, or (None, reason) when the checkpoint is absent (a
    present one that does not fit the released layout raises). ``size`` lets tests use a tiny network."""
    from vaura.eval.synchformer import SynchformerSize, load_synchformer

    model, reason = load_or_skip(weights, lambda: load_synchformer(weights, size or SynchformerSize(), device=device))
    return (synchformer_predictor(model) if model is not None else None), reason


def synchformer_predictor(model: Any) -> OffsetPredictor:
    """Adapt :class:`vaura.eval.synchformer.Synchformer` to the :data:`OffsetPredictor` protocol."""

    def predict(frames: np.ndarray, audio16k: np.ndarray) -> np.ndarray:
        return model.offsets_seconds(model.predict_offsets(frames, audio16k)).numpy()

    return predict
