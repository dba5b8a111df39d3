"""Schema of the ``train`` section of ``params.yaml`` (owned by :mod:`vaura.train`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vaura.config import bounded


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging of the V-AURA decoder.

    Reference values (docs/PAPER.md "Training"): AdamW lr 1.08e-4, betas (0.9, 0.95), weight decay 1.08e-5 on
    ≥2-D params, cosine schedule with 1000 warm-up steps over 200k with min ratio 0.1, batch 12 per GPU,
    gradient clipping by value 1.0. ``params.yaml`` carries CPU-sized offline defaults.
    """

    lr: float = bounded(1.08e-4, gt=0)
    betas: list[float] = bounded([0.9, 0.95], ge=0, lt=1)
    weight_decay: float = bounded(1.08e-5, ge=0)
    warmup_steps: int = bounded(1000, ge=0)
    total_steps: int = bounded(200_000, ge=1)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)
    batch_size: int = bounded(12, ge=1)
    grad_accum: int = bounded(1, ge=1)
    clip_mode: Literal["value", "norm"] = "value"
    clip: float = bounded(1.0, gt=0)
    eval_every: int = bounded(1000, ge=0)
    ckpt_every: int = bounded(1000, ge=1)
    n_val_batches: int = bounded(8, ge=1)
    log_audio_every: int = bounded(0, ge=0)
    n_log_clips: int = bounded(2, ge=0)
    compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = bounded(0, ge=0)
    seed: int = bounded(0, ge=0)
    max_minutes: float = bounded(0.0, ge=0)
    nproc: int = bounded(1, ge=1)
    init_from_codec: bool = True
