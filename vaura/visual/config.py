"""Typed params sections ``visual`` (the frozen visual encoder) and ``avclip`` (its offline stand-in training).

The architecture knobs live in ``visual`` because the encoder used by ``cache`` must be the one ``avclip``
trained (or the real Segment-AVCLIP, whose shape is fixed: ``kind: segment_avclip`` requires the paper sizes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class VisualConfig:
    """Which visual encoder the pipeline uses and how frames are prepared for it."""

    kind: Literal["offline", "segment_avclip"] = "offline"
    weights: str = "weights/23-12-22T16-10-50/checkpoints/epoch_best.pt"
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    crop: int = 224
    short_side: int = 256
    patch: int = 16
    tubelet: int = 2
    frames_per_segment: int = 16
    batch_size: int = 8
    device: str = "auto"


@dataclass
class AVClipConfig:
    """Offline stand-in pretraining: segment-level audio-visual InfoNCE on synthetic train clips."""

    source: Literal["train", "shipped"] = "train"
    shipped: str = "assets/avclip_offline.pt"
    max_train_clips: int = 96
    max_val_clips: int = 24
    probe_clips: int = 48
    sample_rate: int = 16000
    n_mels: int = 40
    audio_channels: int = 64
    embed_dim: int = 64
    segments_per_clip: int = 4
    batch_clips: int = 8
    steps: int = 300
    max_seconds: float = 0.0
    lr: float = 1.0e-3
    weight_decay: float = 0.01
    temperature: float = 0.1
