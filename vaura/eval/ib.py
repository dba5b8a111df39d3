"""IB-score: ImageBind audio–visual cosine similarity of generated audio and its video (papers report ×100).

Uses the one shared ImageBind loader and input pipeline of :mod:`vaura.curation.imagebind_score` (the curation
scorer computes the same quantity on the original soundtrack), so the metric and the curation criterion can
never drift apart. Weights are never downloaded: missing weights make the metric ``skipped`` with the path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchaudio

from vaura.eval.results import MetricResult, load_or_skip


def load_ib_model(
    weights: str | Path, device: str = "cpu", build: Callable[[], torch.nn.Module] | None = None
) -> tuple[torch.nn.Module | None, str]:
    """(ImageBind model, "") or (None, reason) when the weights file is absent (a present, unusable one raises).

    ``build`` (default: ImageBind-huge) is injectable so tests can strict-load a tiny random model.
    """
    from vaura.curation.imagebind_score import load_imagebind

    kwargs = {"build": build} if build is not None else {}
    return load_or_skip(weights, lambda: load_imagebind(weights, device=device, **kwargs))


def ib_score(
    model: torch.nn.Module | None,
    frames: Sequence[np.ndarray],
    audios: Sequence[np.ndarray],
    sample_rate: int,
    skip_reason: str = "",
    device: str = "cpu",
    batch_size: int = 4,
) -> MetricResult:
    """Mean over clips of 100 × cos(ImageBind vision(frames_i), ImageBind audio(audio_i)).

    ``frames[i]`` are uint8 ``[T, H, W, 3]`` at 25 fps (short side 224), ``audios[i]`` mono at ``sample_rate``.
    """
    if model is None:
        return MetricResult.skipped("ib", skip_reason or "no ImageBind model", backbone="imagebind_huge")
    from vaura.curation.imagebind_score import AUDIO_RATE, ImageBindScorer, audio_input, vision_input

    if len(frames) != len(audios):
        raise ValueError(f"ib_score: {len(frames)} videos but {len(audios)} audio clips")
    scorer = ImageBindScorer(model, device=device)
    sims: list[float] = []
    for i in range(0, len(frames), batch_size):
        vis = torch.stack([vision_input(f) for f in frames[i : i + batch_size]])
        aud = []
        for a in audios[i : i + batch_size]:
            wav = torch.as_tensor(np.asarray(a, dtype=np.float32)).reshape(-1)
            if sample_rate != AUDIO_RATE:
                wav = torchaudio.functional.resample(wav, sample_rate, AUDIO_RATE)
            aud.append(audio_input(wav.numpy(), AUDIO_RATE))
        sims += [float(s) for s in scorer.similarity(vis, torch.stack(aud))]
    return MetricResult.ok("ib", {"ib": 100.0 * float(np.mean(sims))}, backbone="imagebind_huge")
