"""Offline stand-in for Segment-AVCLIP: pretrain the tiny Motionformer contrastively on synthetic clips.

Segment-AVCLIP learns visual features by matching each 0.64 s video segment with the audio of the same
segment. We do the same at CPU scale: every batch holds several segments per clip, starting at random
*token* boundaries (multiples of 2 frames = 80 ms), so the negatives include segments of the same clip shifted
by as little as one token. Telling those apart requires knowing *when* within the segment an impact happens,
not just which objects are in the clip, which is what the V-AURA decoder needs from its visual condition.

The visual segment embedding keeps the token order (the 8 tokens are concatenated before the projection) and
the audio encoder (a small 1-D CNN on log-mel, written here) keeps time order too, so timing can be matched.
Downstream (``cache``) uses only the Motionformer, frozen by :class:`vaura.visual.encoder.VisualEncoder`; the
audio tower and heads are saved beside it so a shipped stand-in can be re-measured.

Shipped weights: ``avclip.shipped`` (committed) is made by the ``avclip`` stage with ``vaura avclip --ship``;
:func:`load_shipped` refuses it unless it was trained with the current ``visual`` architecture and ``avclip``
training knobs. How good the stand-in is gets measured by :mod:`vaura.visual.probes`; the stage body is
:mod:`vaura.stages.avclip`.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vaura.devices import resolve_device
from vaura.visual.config import AVClipConfig, VisualConfig
from vaura.visual.encoder import size_from_config
from vaura.visual.motionformer import MotionFormer

FPS = 25
MEL_HOP_S = 0.01  # 100 mel frames/s: exactly 4 per video frame, 8 per feature token


class AVClipDataError(ValueError):
    """Training data the stage cannot use (names the file and the reason)."""


@dataclass
class ClipArrays:
    """Decoded clips: frames uint8 ``[N, T, crop, crop, 3]`` and log-mel ``[N, n_mels, 4·T]`` (time-aligned)."""

    clips: list[str]
    frames: np.ndarray
    mels: torch.Tensor


def log_mel(audio: np.ndarray, cfg: AVClipConfig) -> torch.Tensor:
    """``[S]`` at ``cfg.sample_rate`` -> ``log(mel + 1e-5)`` ``[n_mels, S / hop]`` (frame k starts at k·10 ms)."""
    hop = round(cfg.sample_rate * MEL_HOP_S)
    wav = torch.as_tensor(audio, dtype=torch.float32)
    wav = F.pad(wav, (0, 3 * hop))  # frame k covers [k·hop, k·hop + 4·hop): starts at its own timestamp
    return torch.log(_mel_transform(cfg.sample_rate, cfg.n_mels)(wav) + 1e-5)


@functools.lru_cache(maxsize=4)
def _mel_transform(sample_rate: int, n_mels: int) -> nn.Module:
    import torchaudio

    hop = round(sample_rate * MEL_HOP_S)
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=4 * hop, win_length=4 * hop, hop_length=hop, n_mels=n_mels, center=False
    )


def load_clips(
    paths: list[Path], names: list[str], vcfg: VisualConfig, cfg: AVClipConfig, progress: bool = True
) -> tuple[ClipArrays, list[tuple[str, str]]]:
    """Decode each clip once (25 fps, short side + centre crop from params.visual; mono audio at 16 kHz).

    Clips that cannot be decoded are skipped and returned as ``(clip, reason)`` pairs; all clips are cut to the
    shortest one so they stack.
    """
    from vaura.media import MediaError, read_audio, read_video

    frames, mels, kept, rejected = [], [], [], []
    for path, name in tqdm(list(zip(paths, names)), desc="avclip: decode", unit="clip", disable=not progress):
        try:
            v = read_video(path, fps=FPS, short_side=vcfg.short_side, crop=vcfg.crop)
            a = read_audio(path, cfg.sample_rate, duration=len(v) / FPS)
        except MediaError as exc:
            rejected.append((name, str(exc)))
            continue
        if len(v) < vcfg.frames_per_segment + vcfg.tubelet:
            rejected.append((name, f"{path}: {len(v)} frames, avclip needs more than one {vcfg.frames_per_segment}-frame segment"))
            continue
        frames.append(v)
        mels.append(log_mel(a, cfg))
        kept.append(name)
    if not kept:
        raise AVClipDataError(f"none of the {len(names)} clips could be used: {rejected[:3]}")
    n_frames = min(len(f) for f in frames)
    data = ClipArrays(kept, np.stack([f[:n_frames] for f in frames]), torch.stack([m[:, :4 * n_frames] for m in mels]))
    return data, rejected


class AudioSegmentEncoder(nn.Module):
    """Log-mel segment ``[B, n_mels, 4·F]`` -> ``[B, tokens, C]``: strided 1-D convs down to one step per token."""

    def __init__(self, n_mels: int, channels: int, n_tokens: int, frames_per_segment: int) -> None:
        super().__init__()
        steps = int(round(math.log2(4 * frames_per_segment / n_tokens)))
        if 2**steps * n_tokens != 4 * frames_per_segment:
            raise ValueError("mel frames per segment must be a power of two times the number of tokens")
        layers: list[nn.Module] = [nn.Conv1d(n_mels, channels, 5, padding=2), nn.GELU()]
        for _ in range(steps):
            layers += [nn.Conv1d(channels, channels, 4, stride=2, padding=1), nn.GroupNorm(1, channels), nn.GELU()]
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel).transpose(1, 2)


class SegmentAVCLIP(nn.Module):
    """Visual Motionformer + audio CNN, each followed by an order-keeping projection to a shared space."""

    def __init__(self, visual: MotionFormer, cfg: AVClipConfig) -> None:
        super().__init__()
        sz = visual.size
        self.visual = visual
        self.audio = AudioSegmentEncoder(cfg.n_mels, cfg.audio_channels, sz.tokens_per_segment, sz.frames)
        # BatchNorm before the projections: synthetic frames are mostly static background, so segment features
        # differ little at initialisation; standardising across the batch keeps InfoNCE from collapsing.
        self.v_head = nn.Sequential(nn.Flatten(1), nn.BatchNorm1d(sz.dim * sz.tokens_per_segment),
                                    nn.Linear(sz.dim * sz.tokens_per_segment, cfg.embed_dim))
        self.a_head = nn.Sequential(nn.Flatten(1), nn.BatchNorm1d(cfg.audio_channels * sz.tokens_per_segment),
                                    nn.Linear(cfg.audio_channels * sz.tokens_per_segment, cfg.embed_dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def embed_video(self, segs: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` in [-1, 1] -> unit vectors ``[B, E]``."""
        return F.normalize(self.v_head(self.visual(segs.unsqueeze(0))[0]), dim=-1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.a_head(self.audio(mel)), dim=-1)

    def loss(self, segs: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Symmetric InfoNCE over the batch; returns (loss, video->audio top-1 accuracy)."""
        v, a = self.embed_video(segs), self.embed_audio(mel)
        logits = self.log_scale.clamp(max=math.log(100.0)).exp() * v @ a.T
        target = torch.arange(len(v), device=v.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        return loss, float((logits.argmax(1) == target).float().mean())


def to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, F, H, W, 3]`` -> ``[B, 3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def sample_batch(
    data: ClipArrays, vcfg: VisualConfig, cfg: AVClipConfig, mel_norm: tuple[float, float], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_clips`` clips × ``segments_per_clip`` distinct token-aligned starts; random h-flip per segment."""
    n_clips, n_frames = data.frames.shape[:2]
    seg = vcfg.frames_per_segment
    starts_all = np.arange(0, n_frames - seg + 1, vcfg.tubelet)
    clip_idx = rng.choice(n_clips, size=min(cfg.batch_clips, n_clips), replace=False)
    vids, mels = [], []
    for c in clip_idx:
        for s in rng.choice(starts_all, size=min(cfg.segments_per_clip, len(starts_all)), replace=False):
            v = data.frames[c, s:s + seg]
            vids.append(v[:, :, ::-1] if rng.random() < 0.5 else v)
            mels.append(data.mels[c, :, 4 * s:4 * (s + seg)])
    mean, std = mel_norm
    return to_input(np.ascontiguousarray(np.stack(vids))), (torch.stack(mels) - mean) / std


def train_avclip(
    data: ClipArrays,
    vcfg: VisualConfig,
    cfg: AVClipConfig,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[SegmentAVCLIP, dict[str, Any]]:
    """Contrastive pretraining; returns the trained two-tower model (eval mode) and training facts."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = resolve_device(vcfg.device)
    model = SegmentAVCLIP(MotionFormer(size_from_config(vcfg)), cfg).to(device)
    mel_norm = (float(data.mels.mean()), float(data.mels.std()) + 1e-6)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps))
    )
    model.train()
    t0 = time.monotonic()
    ema_loss, ema_acc, step = None, None, 0
    bar = tqdm(range(cfg.steps), desc="avclip: train", unit="step", disable=not progress)
    for step in bar:
        if cfg.max_seconds > 0 and time.monotonic() - t0 > cfg.max_seconds:
            break
        segs, mel = sample_batch(data, vcfg, cfg, mel_norm, rng)
        loss, acc = model.loss(segs.to(device), mel.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.9 * ema_loss + 0.1 * loss.item()
        ema_acc = acc if ema_acc is None else 0.9 * ema_acc + 0.1 * acc
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.2f}")
        if log is not None and step % 10 == 0:
            log(step, {"avclip/train_loss": loss.item(), "avclip/train_acc": acc})
    else:
        step = cfg.steps
    facts = {
        "steps_done": int(step), "train_seconds": round(time.monotonic() - t0, 1),
        "final_loss_ema": None if ema_loss is None else round(ema_loss, 4),
        "final_batch_acc_ema": None if ema_acc is None else round(ema_acc, 4),
        "batch_segments": min(cfg.batch_clips, len(data.clips)) * cfg.segments_per_clip,
        "mel_mean": mel_norm[0], "mel_std": mel_norm[1],
    }
    model.eval()
    return model, facts


# Knobs that only change how the stage *measures* (not the trained weights): a shipped file stays valid when
# they differ.
EVAL_ONLY_KEYS = ("source", "shipped", "max_val_clips", "probe_clips")


def training_knobs(cfg: AVClipConfig) -> dict[str, Any]:
    from vaura.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in EVAL_ONLY_KEYS}


def load_shipped(path: Path, vcfg: VisualConfig, cfg: AVClipConfig) -> tuple[SegmentAVCLIP, dict[str, Any]]:
    """The two-tower model saved by ``vaura avclip --ship``; it must match params ``visual`` and ``avclip``."""
    from vaura.weights import WeightsError, load_strict, read_checkpoint

    if not path.is_file():
        raise WeightsError(
            f"shipped avclip stand-in not found: {path}. Produce it with `vaura avclip --params params.yaml "
            "--ship`, or set params avclip.source: train"
        )
    obj = read_checkpoint(path, "vaura avclip stand-in (vaura avclip --ship)", own_file=True)
    if "towers" not in obj or "size" not in obj or "avclip" not in obj:
        raise WeightsError(f"{path}: not a shipped avclip file (needs 'size', 'avclip' and 'towers')")
    size = size_from_config(vcfg)
    if obj["size"] != size.to_dict():
        diffs = {k: (v, size.to_dict().get(k)) for k, v in obj["size"].items() if size.to_dict().get(k) != v}
        raise WeightsError(f"{path}: trained for another visual architecture (file vs params: {diffs}); "
                              "rerun `vaura avclip --ship` or set avclip.source: train")
    mine, theirs = training_knobs(cfg), {k: v for k, v in obj["avclip"].items() if k not in EVAL_ONLY_KEYS}
    if mine != theirs:
        diffs = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
        raise WeightsError(f"{path}: trained with other avclip params (file vs params: {diffs}); "
                              "rerun `vaura avclip --ship` or set avclip.source: train")
    model = SegmentAVCLIP(MotionFormer(size), cfg)
    load_strict(model, obj["towers"], str(path))
    facts = dict(obj.get("train_facts", {}))
    return model.to(resolve_device(vcfg.device)).eval(), facts
