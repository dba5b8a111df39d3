"""Schema of the ``train`` section of ``params.yaml`` (owned by :mod:`vaura.train`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging of the V-AURA decoder.

    Reference values (docs/PAPER.md "Training"): AdamW lr 1.08e-4, betas (0.9, 0.95), weight decay 1.08e-5 on
    ≥2-D params, cosine schedule with 1000 warm-up steps over 200k with min ratio 0.1, batch 12 per GPU,
    gradient clipping by value 1.0. ``params.yaml`` carries CPU-sized offline defaults.
    """

    lr: float = 1.08e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1.08e-5
    warmup_steps: int = 1000
    total_steps: int = 200_000
    min_lr_ratio: float = 0.1
    batch_size: int = 12
    grad_accum: int = 1
    clip_mode: Literal["value", "norm"] = "value"
    clip: float = 1.0
    eval_every: int = 1000
    ckpt_every: int = 1000
    n_val_batches: int = 8
    log_audio_every: int = 0
    n_log_clips: int = 2
    compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    seed: int = 0
    max_minutes: float = 0.0
    nproc: int = 1
    init_from_codec: bool = True
