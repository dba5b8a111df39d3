"""Typed params sections ``visual`` (the frozen visual encoder) and ``avclip`` (its offline stand-in training).

The architecture knobs live in ``visual`` because the encoder used by ``cache`` must be the one ``avclip``
trained (or the real Segment-AVCLIP, whose shape is fixed: ``kind: segment_avclip`` requires the paper sizes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vaura.config import bounded


@dataclass
class VisualConfig:
    """Which visual encoder the pipeline uses and how frames are prepared for it."""

    kind: Literal["offline", "segment_avclip"] = "offline"
    weights: str = "weights/23-12-22T16-10-50/checkpoints/epoch_best.pt"
    dim: int = bounded(768, ge=1)
    depth: int = bounded(12, ge=1)
    heads: int = bounded(12, ge=1)
    mlp_ratio: int = bounded(4, ge=1)
    crop: int = bounded(224, ge=1)
    short_side: int = bounded(256, ge=1)
    patch: int = bounded(16, ge=1)
    tubelet: int = bounded(2, ge=1)
    frames_per_segment: int = bounded(16, ge=1)
    batch_size: int = bounded(8, ge=1)
    device: str = "auto"


@dataclass
class AVClipConfig:
    """Offline stand-in pretraining: segment-level audio-visual InfoNCE on synthetic train clips."""

    source: Literal["train", "shipped"] = "train"
    shipped: str = "assets/avclip_offline.pt"
    max_train_clips: int = bounded(96, ge=0)
    max_val_clips: int = bounded(24, ge=0)
    probe_clips: int = bounded(48, ge=0)
    sample_rate: int = bounded(16000, ge=1)
    n_mels: int = bounded(40, ge=1)
    audio_channels: int = bounded(64, ge=1)
    embed_dim: int = bounded(64, ge=1)
    segments_per_clip: int = bounded(4, ge=1)
    batch_clips: int = bounded(8, ge=1)
    steps: int = bounded(300, ge=0)
    max_seconds: float = bounded(0.0, ge=0)
    lr: float = bounded(1.0e-3, gt=0)
    weight_decay: float = bounded(0.01, ge=0)
    temperature: float = bounded(0.1, gt=0)
