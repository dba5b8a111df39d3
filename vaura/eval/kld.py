"""KLD: Kullback–Leibler divergence between AudioSet class distributions of reference and generated audio.

The paper's classifier is PaSST (``passt_s_swa_p16_128_ap476``, 32 kHz, 527 AudioSet classes). What vaura
implements: the divergence itself (:func:`kl_divergence`, tested) and the weight-file check with the download
hint. What it does NOT implement: the PaSST network — so with weights present the metric is still reported as
skipped with that reason, never as a number from a different classifier.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vaura.eval.results import MetricResult

EPS = 1e-6
PASST_HINT = (
    "download passt-s-f128-p16-s10-ap.476-swa.pt (release v0.0.1 of github.com/kkoutini/PaSST) and put it at {path}"
)


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


def kld_passt(weights: str | Path) -> MetricResult:
    """KLD with PaSST: skipped with the precise reason (missing weights, or the network not implemented)."""
    path = Path(weights)
    if not path.is_file():
        return MetricResult.skipped(
            "kld", f"PaSST weights not found at {path}: " + PASST_HINT.format(path=path), backbone="passt"
        )
    return MetricResult.skipped(
        "kld", f"PaSST weights found at {path}, but the PaSST network is not implemented in vaura yet",
        backbone="passt",
    )
