"""Fréchet audio distance with a named embedding backbone.

Two backbones, never mixed in one table (the backbone name travels with every result):
- ``vggish``: the VGGish network (:mod:`vaura.eval.vggish`) with real weights from a path, 16 kHz, 0.96 s
  log-mel patches — the paper's FAD.
- ``logmel``: a weight-free embedding for the offline profile — per 0.32 s window (hop 0.16 s) the mean and
  standard deviation over time of each of 64 log-mel bands (VGGish's own front-end) → 128-d. It sees spectral
  balance and transient-ness, so it separates timbres and "hits vs. hum", but it is *not* comparable to
  published FAD numbers; tables label it "FAD (log-mel, weight-free)".
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import scipy.linalg
import torch
import torchaudio

from vaura.eval.results import MetricResult, load_or_skip
from vaura.weights import WeightsError

EMBED_SR = 16000  # both backbones embed 16 kHz audio (VGGish's rate), so they share one front-end


class AudioEmbedder(Protocol):
    name: str

    def __call__(self, audios: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Embeddings ``[n_frames_total, D]`` of all frames of all clips."""


def log_mel_16k(audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """VGGish front-end: 16 kHz, 25 ms Hann window, 10 ms hop, |STFT| → 64 HTK mels 125–7500 Hz, log(x + 0.01).

    Returns ``[frames, 64]``.
    """
    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)
    if sample_rate != EMBED_SR:
        wav = torchaudio.functional.resample(wav, sample_rate, EMBED_SR)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=EMBED_SR, n_fft=512, win_length=400, hop_length=160, f_min=125.0, f_max=7500.0,
        n_mels=64, power=1.0, center=False, mel_scale="htk", norm=None,
    )
    if wav.numel() < 400:
        wav = torch.nn.functional.pad(wav, (0, 400 - wav.numel()))
    return torch.log(mel(wav) + 0.01).T


class LogMelEmbedding:
    """Weight-free 128-d embedding: per-band mean and std of the log-mel over 0.32 s windows, hop 0.16 s."""

    name = "logmel"

    def __init__(self, window_frames: int = 32, hop_frames: int = 16) -> None:
        self.window_frames = window_frames
        self.hop_frames = hop_frames

    def __call__(self, audios: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        out = []
        for audio in audios:
            lm = log_mel_16k(audio, sample_rate)
            if lm.shape[0] < self.window_frames:
                lm = torch.nn.functional.pad(lm, (0, 0, 0, self.window_frames - lm.shape[0]), value=float(np.log(0.01)))
            win = lm.unfold(0, self.window_frames, self.hop_frames)  # [n, 64, window]
            out.append(torch.cat([win.mean(-1), win.std(-1)], dim=1))
        return torch.cat(out).double().numpy()


class VGGishEmbedding:
    """VGGish 128-d embeddings (pre-PCA) of non-overlapping 0.96 s patches; needs real weights."""

    name = "vggish"

    def __init__(self, weights: str | Path) -> None:
        from vaura.eval.vggish import load_vggish

        self.model = load_vggish(weights)

    @torch.no_grad()
    def __call__(self, audios: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        from vaura.eval.vggish import examples_from_log_mel

        out = []
        for audio in audios:
            ex = examples_from_log_mel(log_mel_16k(audio, sample_rate))
            out.append(self.model(ex))
        return torch.cat(out).double().numpy()


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets ``[n, D]``:
    |μx − μy|² + tr(Σx + Σy − 2 (Σx Σy)^½)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"frechet_distance: embeddings must be [n, D] with equal D, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"frechet_distance: need ≥ 2 embeddings per set, got {len(x)} and {len(y)}")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_x @ cov_y)
    if not np.isfinite(covmean).all():
        # Singular product (few samples, D large): regularise both covariances slightly, as FID code does.
        eps = np.eye(cov_x.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_x + eps) @ (cov_y + eps))
    covmean = np.real(covmean)
    dist = float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x) + np.trace(cov_y) - 2.0 * np.trace(covmean))
    return max(dist, 0.0)


def make_embedder(backbone: str, vggish_weights: str | Path | None = None) -> AudioEmbedder:
    """``logmel`` (weight-free) or ``vggish`` (:class:`WeightsError` when its weights are absent or do not fit)."""
    if backbone == "logmel":
        return LogMelEmbedding()
    if backbone == "vggish":
        if vggish_weights is None:
            raise WeightsError("FAD backbone 'vggish' needs a weights path (evaluate.vggish_weights)")
        return VGGishEmbedding(vggish_weights)
    raise ValueError(f"unknown FAD backbone {backbone!r}; choose 'logmel' or 'vggish'")


def fad(
    generated: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    sample_rate: int,
    backbone: str = "logmel",
    vggish_weights: str | Path | None = None,
) -> MetricResult:
    """FAD between generated and reference audio sets; skipped (with the reason) when the weights file is absent
    (a present, unusable one raises)."""
    label = "log-mel, weight-free" if backbone == "logmel" else backbone
    embedder, reason = load_or_skip(vggish_weights, lambda: make_embedder(backbone, vggish_weights))
    if embedder is None:
        return MetricResult.skipped("fad", reason, backbone=label)
    gen = embedder(generated, sample_rate)
    ref = embedder(reference, sample_rate)
    return MetricResult.ok("fad", {"fad": frechet_distance(gen, ref)}, backbone=label)
