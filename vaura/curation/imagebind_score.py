"""ImageBind relevance scorer: cosine similarity of ImageBind-huge's vision and audio embeddings.

This is the paper's curation criterion (VisualSound = VGGSound clips with similarity ≥ 0.3). Inputs follow
ImageBind's own ``data.py`` conventions, fed from :mod:`vaura.media` arrays instead of its decord/torchaudio
file loaders: vision = 5 evenly spaced 2 s clips, 2 frames each (first and last of the clip), short side 224,
CLIP mean/std, 3 spatial crops (left/centre/right) → ``[15, 3, 2, 224, 224]``; audio = 3 evenly spaced 2 s
clips at 16 kHz, 128-bin Kaldi fbank with 204 frames, normalised with mean −4.268 / std 9.138 →
``[3, 1, 128, 204]``. The model averages the embeddings over the clips; we take the cosine of the two means.

Weights are never downloaded here: ``imagebind_huge.pth`` must be placed at ``score.imagebind_weights``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vaura.curation.scorer import ScoringError, thread_map
from vaura.weights import load_released

IMAGEBIND_HINT = ("ImageBind-huge weights imagebind_huge.pth from https://dl.fbaipublicfiles.com/imagebind/"
                  "imagebind_huge.pth (offline, score.scorer: motion-onset needs no weights)")
VISION_CLIP_S, VISION_CLIPS, VISION_FRAMES_PER_CLIP, VISION_SIZE = 2.0, 5, 2, 224
AUDIO_CLIP_S, AUDIO_CLIPS, AUDIO_RATE, AUDIO_MELS, AUDIO_FRAMES = 2.0, 3, 16000, 128, 204
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FPS = 25.0


def _huge() -> torch.nn.Module:
    from imagebind.models.imagebind_model import imagebind_huge

    return imagebind_huge(pretrained=False)


def load_imagebind(
    weights: str | Path, device: str = "cpu", build: Callable[[], torch.nn.Module] = _huge
) -> torch.nn.Module:
    """ImageBind built by ``build`` (default: the huge architecture) with weights loaded strictly from ``weights``.

    ``build`` is injectable so tests can use tiny dims with a random state dict in the same key layout.
    """
    model = load_released(build, Path(weights), IMAGEBIND_HINT, "score.imagebind_weights")
    model.eval().requires_grad_(False)
    return model.to(device)


def _clip_starts(duration_s: float, clip_s: float, n_clips: int) -> list[float]:
    """Evenly spaced clip starts as ImageBind's ``ConstantClipsPerVideoSampler`` places them."""
    from fractions import Fraction

    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

    from imagebind.data import get_clip_timepoints

    sampler = ConstantClipsPerVideoSampler(clip_duration=Fraction(clip_s), clips_per_video=n_clips)
    return [float(start) for start, _ in get_clip_timepoints(sampler, duration_s)]


def vision_input(frames: np.ndarray, fps: float = FPS) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` frames → ImageBind vision input ``[15, 3, 2, 224, 224]``."""
    from pytorchvideo import transforms as pv_transforms

    from imagebind.data import NormalizeVideo, SpatialCrop

    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ScoringError(f"ImageBind needs frames [T, H, W, 3] with T > 0, got shape {frames.shape}")
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255.0  # C,T,H,W
    times = np.arange(video.shape[1]) / fps
    scale = pv_transforms.ShortSideScale(VISION_SIZE)
    norm = NormalizeVideo(mean=CLIP_MEAN, std=CLIP_STD)
    clips = []
    for start in _clip_starts(video.shape[1] / fps, VISION_CLIP_S, VISION_CLIPS):
        idx = np.flatnonzero((times >= start - 1e-9) & (times < start + VISION_CLIP_S - 1e-9))
        if idx.size == 0:
            idx = np.array([video.shape[1] - 1])
        pick = idx[torch.linspace(0, idx.size - 1, VISION_FRAMES_PER_CLIP).long().numpy()]
        clips.append(norm(scale(video[:, pick])))
    return torch.stack(SpatialCrop(VISION_SIZE, num_crops=3)(clips))


def audio_input(audio: np.ndarray, sample_rate: int = AUDIO_RATE) -> torch.Tensor:
    """Mono float waveform at 16 kHz → ImageBind audio input ``[3, 1, 128, 204]``."""
    from imagebind.data import waveform2melspec

    if sample_rate != AUDIO_RATE:
        raise ValueError(f"ImageBind audio must be {AUDIO_RATE} Hz, got {sample_rate}")
    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(1, -1)
    clips = []
    for start in _clip_starts(wav.shape[1] / sample_rate, AUDIO_CLIP_S, AUDIO_CLIPS):
        seg = wav[:, int(start * sample_rate) : int((start + AUDIO_CLIP_S) * sample_rate)].clone()
        mel = waveform2melspec(seg, sample_rate, AUDIO_MELS, AUDIO_FRAMES)
        clips.append((mel - AUDIO_MEAN) / AUDIO_STD)
    return torch.stack(clips)


class ImageBindScorer:
    """Cosine similarity between ImageBind's vision and audio embeddings of a clip (the paper's IB score / 100)."""

    name = "imagebind"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", workers: int = 1) -> None:
        self.model = model
        self.device = device
        self.workers = workers

    def _inputs(self, path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
        from vaura.media import read_audio, read_video

        frames = read_video(path, fps=FPS, short_side=VISION_SIZE, crop=None)
        audio = read_audio(path, AUDIO_RATE)
        return vision_input(frames), audio_input(audio)

    @torch.inference_mode()
    def similarity(self, vision: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Cosine per item of batched inputs ``vision [B,15,3,2,224,224]``, ``audio [B,3,1,128,204]``."""
        from imagebind.models.imagebind_model import ModalityType

        out = self.model({ModalityType.VISION: vision.to(self.device), ModalityType.AUDIO: audio.to(self.device)})
        return F.cosine_similarity(out[ModalityType.VISION].float(), out[ModalityType.AUDIO].float(), dim=-1).cpu()

    def score_batch(self, paths: Sequence[str | Path]) -> list[float]:
        vis, aud = zip(*thread_map(self._inputs, list(paths), self.workers))
        return [float(s) for s in self.similarity(torch.stack(vis), torch.stack(aud))]

    def score_clip(self, path: str | Path) -> float:
        return self.score_batch([path])[0]
