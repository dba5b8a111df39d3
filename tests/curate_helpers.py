"""Shared helpers of the curation tests: tiny synthetic audio-visual clips with known event times, and fakes
that follow the codec / visual-encoder interfaces (so the cache logic is tested independently of their weights).

A clip shows a square that jumps to a new place at each event (visible contact-like motion) plus a smoothly
drifting distractor that makes no sound; its audio has a short decaying tone burst at each event time (or at
``audio_shift_s`` later, which makes the clip "irrelevant" the way the synthetic benchmark's shifted clips are).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

FPS = 25
SIZE = 64


def event_times(rng: np.random.Generator, duration_s: float, n: int = 4) -> np.ndarray:
    """``n`` event times at least 0.3 s apart, inside [0.2, duration - 0.2]."""
    while True:
        t = np.sort(rng.uniform(0.2, duration_s - 0.2, n))
        if np.all(np.diff(t) >= 0.3):
            return t


def render_frames(times: np.ndarray, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, 64, 64, 3]: a white square that jumps at each event, a grey distractor drifting slowly."""
    n = round(duration_s * FPS)
    frames = np.full((n, SIZE, SIZE, 3), 20, np.uint8)
    pos = rng.integers(4, SIZE - 20, 2)
    jumps = set(np.round(times * FPS).astype(int))
    for t in range(n):
        if t in jumps:
            pos = rng.integers(4, SIZE - 20, 2)
        y, x = pos
        frames[t, y : y + 16, x : x + 16] = 255
        dx = int(4 + 20 * (0.5 + 0.5 * math.sin(t / 12.0)))
        frames[t, 48:58, dx : dx + 10] = 120
    return frames


def render_audio(times: np.ndarray, duration_s: float, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """float32 mono: a 60 ms decaying tone burst at each time over low background noise."""
    audio = (rng.standard_normal(round(duration_s * sample_rate)) * 0.003).astype(np.float32)
    burst_t = np.arange(round(0.06 * sample_rate)) / sample_rate
    burst = (0.6 * np.sin(2 * np.pi * 880 * burst_t) * np.exp(-burst_t / 0.015)).astype(np.float32)
    for t in times:
        i = round(t * sample_rate)
        if i < len(audio):
            seg = burst[: len(audio) - i]
            audio[i : i + len(seg)] += seg
    return audio


def write_clip(path: Path, seed: int, duration_s: float = 2.56, audio_shift_s: float = 0.0,
               sample_rate: int = 16000) -> np.ndarray:
    """Write one synthetic clip; returns the visual event times."""
    from vaura.media import write_video

    rng = np.random.default_rng(seed)
    times = event_times(rng, duration_s)
    frames = render_frames(times, duration_s, rng)
    shifted = times + audio_shift_s
    shifted = np.where(shifted > duration_s - 0.1, shifted - (duration_s - 0.3), shifted)
    write_video(path, frames, FPS, render_audio(shifted, duration_s, rng, sample_rate), sample_rate)
    return times


class FakeCodec:
    """Codec-interface fake: codes are a deterministic function of the audio (local energy, sign)."""

    sample_rate, hop_length = 800, 32
    frame_rate = sample_rate / hop_length  # 25 frames/s: 2.56 s -> 64 frames
    n_codebooks, codebook_size, codebook_dim = 2, 16, 4

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        b, _, s = wav.shape
        t = math.ceil(s / self.hop_length)
        x = torch.nn.functional.pad(wav[:, 0], (0, t * self.hop_length - s)).reshape(b, t, self.hop_length)
        c0 = (x.abs().mean(-1) * 60).long().clamp(0, 15)
        c1 = (x[..., 0] * 8 + 8).long().clamp(0, 15)
        return torch.stack([c0, c1], 1)


class FakeVisual:
    """Visual-interface fake: 8 tokens per 16 frames, features from frame means (depends on the pixels)."""

    dim, frame_rate = 6, 12.5

    def n_tokens(self, n_frames: int) -> int:
        return 8 * (n_frames // 16)

    def encode_many(self, clips):
        out = []
        for frames in clips:
            n = self.n_tokens(len(frames))
            m = torch.from_numpy(frames[: 2 * n].reshape(n, 2, -1).astype(np.float32).mean((1, 2))) / 255.0
            out.append(torch.stack([torch.cos(m * (i + 1) * 2.0) for i in range(self.dim)], 1))
        return out
