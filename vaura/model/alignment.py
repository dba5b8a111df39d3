"""Which visual token conditions each decoder step (fusion conditioning).

Decoder step s reads the delayed sequence at step s and predicts frame ``s - q`` of codebook q (see
``vaura.model.delay``). Two rules map steps to the 12.5 Hz visual tokens of the window:

``timestamp`` (default for new training) — key on codebook 0: step s predicts codebook 0 of audio frame s, the
frame whose first (coarsest) code is being decided, at time ``s / audio_frame_rate``. It gets visual token
``floor(time * visual_frame_rate)``, clamped to ``[0, N - 1]``. The tail steps ``s >= T`` (which only complete
finer codebooks of the last frames) therefore see the last token. No drift: at 86.13 Hz audio / 12.5 Hz video
the token changes every 6.89 steps on average (6 or 7), exactly when the frame's time crosses a token boundary.

``reference`` — the released V-AURA rule, kept only so its checkpoint runs as trained: token
``floor(s / r)`` with ``r = ceil(audio_frame_rate / visual_frame_rate)`` (= 7 at 86.13/12.5), and steps past the
last token (s >= r * N) get a learned "empty video" embedding. It drifts ~35 ms by 2.56 s and ignores the delay.
"""
from __future__ import annotations

import math

import torch


def timestamp_index(n_steps: int, n_visual: int, audio_frame_rate: float, visual_frame_rate: float) -> torch.Tensor:
    """``[n_steps]`` visual token index per decoder step (rule in the module doc)."""
    ratio = visual_frame_rate / audio_frame_rate
    # the tiny epsilon keeps exact boundaries (e.g. 4 frames at 50 Hz = 1 token at 12.5 Hz) from rounding down
    idx = [math.floor(s * ratio + 1e-9) for s in range(n_steps)]
    return torch.tensor(idx, dtype=torch.long).clamp_(0, n_visual - 1)


def reference_steps_per_token(audio_frame_rate: float, visual_frame_rate: float) -> int:
    """Audio steps per visual token in the released model: ``ceil(86.13 / 12.5) = 7``."""
    return math.ceil(audio_frame_rate / visual_frame_rate - 1e-9)


def reference_index(n_steps: int, n_visual: int, steps_per_token: int) -> torch.Tensor:
    """``[n_steps]`` token index per step under the released rule; ``-1`` marks "empty video" steps."""
    idx = torch.arange(n_steps) // steps_per_token
    return torch.where(idx < n_visual, idx, torch.full_like(idx, -1))
