"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio`` of the peak (docs/PAPER.md)."""
from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based), for :class:`torch.optim.lr_scheduler.LambdaLR`.

    A class (not a closure) so that ``LambdaLR.state_dict()`` stores its plain-float fields and the
    checkpoint stays ``weights_only``-loadable.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0:
            raise ValueError(
                f"bad schedule: warmup_steps={warmup_steps} total_steps={total_steps} min_ratio={min_ratio}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


def follow_params(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float, warmup_steps: int, total_steps: int,
                  min_ratio: float) -> None:
    """After a resume, take the schedule from the current params, not the checkpoint: an unchanged config resumes
    exactly, and a longer ``total_steps`` extends the cosine instead of being silently replaced."""
    scheduler.lr_lambdas[0] = WarmupCosine(warmup_steps, total_steps, min_ratio)
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
