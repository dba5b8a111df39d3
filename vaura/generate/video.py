"""Audio for a whole video: visual features → sliding-window generation → codec decode (``vaura generate``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaura.media import probe, read_video
from vaura.model.config import GenerationConfig
from vaura.model.decoder import VAURA
from vaura.model.sampler import generate_long

VIDEO_FPS = 25.0


class GenerateError(ValueError):
    """The model, codec and visual encoder do not fit together, or the video is unusable."""


def check_compatible(model: VAURA, codec: Any, encoder: Any, source: str) -> None:
    """The decoder must have been trained on this codec's tokens and this encoder's features."""
    problems = []
    if (model.n_codebooks, model.codebook_size) != (codec.n_codebooks, codec.codebook_size):
        problems.append(f"model codes {model.n_codebooks}×{model.codebook_size} vs codec "
                        f"{codec.n_codebooks}×{codec.codebook_size}")
    if abs(model.audio_frame_rate - codec.frame_rate) > 1e-6:
        problems.append(f"model audio rate {model.audio_frame_rate} vs codec {codec.frame_rate} frames/s")
    if model.visual_dim != encoder.dim or abs(model.visual_frame_rate - encoder.frame_rate) > 1e-6:
        problems.append(f"model visual {model.visual_dim}-d @ {model.visual_frame_rate} Hz vs encoder "
                        f"{encoder.dim}-d @ {encoder.frame_rate} Hz")
    if problems:
        raise GenerateError(f"{source}: " + "; ".join(problems))


def video_features(encoder: Any, frames: np.ndarray) -> torch.Tensor:
    """``[N, D]`` features covering every frame: the last segment is completed by repeating the last frame."""
    seg = encoder.model.size.frames
    pad = (-len(frames)) % seg
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    return encoder.encode(frames)


@torch.no_grad()
def audio_for_video(video: str | Path, model: VAURA, codec: Any, encoder: Any, gen: GenerationConfig,
                    seed: int, device: torch.device, compile: bool = False) -> np.ndarray:
    """Generated mono audio (float32, ``codec.sample_rate``) as long as the video."""
    info = probe(video)
    if not info.has_video or not info.duration_s:
        raise GenerateError(f"{video}: no video stream with a duration")
    frames = read_video(video, fps=VIDEO_FPS, short_side=encoder.short_side, crop=encoder.model.size.img_size)
    feats = video_features(encoder, frames).to(device)
    n_frames = codec.n_frames(info.duration_s)
    generator = torch.Generator(device=device).manual_seed(seed)
    codes = generate_long(model, feats[None], n_frames, window_frames=codec.n_frames(gen.window_s),
                          stride_frames=max(1, round(gen.stride_s * codec.frame_rate)), cfg_scale=gen.cfg_scale,
                          temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p, generator=generator,
                          compile=compile, progress=True)
    wav = codec.decode(codes.to(device)).float().cpu().numpy()[0, 0]
    return wav[: round(info.duration_s * codec.sample_rate)]
