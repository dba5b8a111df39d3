"""KLD: Kullback–Leibler divergence between AudioSet class distributions of reference and generated audio.

The paper's classifier is PaSST (``passt_s_swa_p16_128_ap476``, 32 kHz, 527 AudioSet classes; network and strict
loader in :mod:`vaura.eval.passt`). Each generated sample is compared with the real audio of its own test clip:
class distributions are the softmax over PaSST's 527 logits, KL(reference ‖ generated) is summed over classes and
averaged over samples. Without the weights the metric is ``skipped`` with the download hint — never a number from
another classifier.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vaura.eval.results import MetricResult, load_or_skip

EPS = 1e-6


def kl_divergence(p_ref: np.ndarray, p_gen: np.ndarray) -> float:
    """Mean over clips of KL(ref ‖ gen) = Σ_c p_ref log(p_ref / p_gen), each row renormalised to sum to 1.

    ``p_ref``/``p_gen`` are ``[n_clips, n_classes]`` probabilities of the same clips (row i of each belongs to
    the same test video); EPS keeps classes the generator never predicts finite.
    """
    p = np.asarray(p_ref, dtype=np.float64)
    q = np.asarray(p_gen, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"kl_divergence: expected two equal [n, C] arrays, got {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("kl_divergence: probabilities must be non-negative")
    p = (p + EPS) / (p + EPS).sum(1, keepdims=True)
    q = (q + EPS) / (q + EPS).sum(1, keepdims=True)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def load_kld_model(
    weights: str | Path, device: str | torch.device = "cpu", size: Any = None
) -> tuple[torch.nn.Module | None, str]:
    """(PaSST, "") or (None, reason) when the weights file is absent (a present, unusable one raises)."""
    from vaura.eval.passt import PaSSTSize, load_passt

    return load_or_skip(weights, lambda: load_passt(weights, size or PaSSTSize(), device=device))


def kld_score(
    model: torch.nn.Module | None,
    generated: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    sample_rate: int,
    skip_reason: str = "",
) -> MetricResult:
    """KLD of generated clips against the real audio of the same test clips (``references[i]`` ↔ ``generated[i]``)."""
    if model is None:
        return MetricResult.skipped("kld", skip_reason or "no PaSST model", backbone="passt")
    from vaura.eval.passt import class_probabilities

    if len(generated) != len(references):
        raise ValueError(f"kld: {len(generated)} generated clips but {len(references)} references")
    p_ref = class_probabilities(model, references, sample_rate)
    p_gen = class_probabilities(model, generated, sample_rate)
    return MetricResult.ok("kld", {"kld": kl_divergence(p_ref, p_gen)}, backbone="passt")
