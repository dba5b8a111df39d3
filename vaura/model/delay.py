"""MusicGen-style delay pattern: codebook q is shifted right by q steps behind one all-special start step.

For codes ``[B, K, T]`` the delayed sequence has ``T + K`` steps::

    seq[:, q, s] = codes[:, q, s - 1 - q]   if 0 <= s - 1 - q < T
                 = special                  otherwise (step 0 = BOS for every codebook, and the q-step pads)

The decoder reads steps ``0 .. T+K-2`` and its output at step s predicts ``seq[:, :, s + 1]``, i.e. frame
``s - q`` of codebook q. So one decoder step emits one token per codebook, and codebook q of frame t is
predicted after codebooks < q of frame t have been read. Pure functions; the special id is the codebook size.
"""
from __future__ import annotations

import torch


def build_delayed(codes: torch.Tensor, special: int) -> torch.Tensor:
    """``[B, K, T]`` codes → ``[B, K, T + K]`` delayed sequence (see module doc)."""
    b, k, t = codes.shape
    seq = codes.new_full((b, k, t + k), special)
    for q in range(k):
        seq[:, q, q + 1 : q + 1 + t] = codes[:, q]
    return seq


def revert_delayed(seq: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`build_delayed`: ``[B, K, T + K]`` → ``[B, K, T]``."""
    b, k, s = seq.shape
    t = s - k
    return torch.stack([seq[:, q, q + 1 : q + 1 + t] for q in range(k)], dim=1)


def revert_logits(logits: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Decoder outputs on steps ``0..S-1`` ``[B, K, S, card]`` → per-frame logits ``[B, K, T, card]``.

    Output step s predicts frame ``s - q`` of codebook q, so frame t of codebook q is at step ``t + q``.
    """
    k = logits.shape[1]
    return torch.stack([logits[:, q, q : q + n_frames] for q in range(k)], dim=1)
