"""PaSST (Koutini et al. 2022), the AudioSet classifier behind KLD, written for vaura with a strict loader.

Front-end (the released AudioSet models' eval settings): mono 32 kHz → pre-emphasis ``y[t] = x[t+1] − 0.97·x[t]``
→ |STFT|² (n_fft 1024, symmetric Hann window of 800, hop 320, centred, reflect padding) → 128 Kaldi mel bands
0–15 kHz (one zero column for the Nyquist bin) → ``(log(mel + 1e-5) + 4.5) / 5``. 2.56 s → ``[128, 256]``.

Network (``passt_s_swa_p16_128_ap476``): a 16×16 patch conv with stride 10 over (frequency, time) → a 12 × T grid of
768-d patches; separate frequency ``[1, D, 12, 1]`` and time ``[1, D, 1, 99]`` positional embeddings (the time one
cut to the input's T at test time); a CLS and a distillation token, each plus its row of ``new_pos_embed [1, 2, D]``;
12 pre-norm ViT blocks (12 heads, MLP 3072, GELU, LayerNorm eps 1e-6, qkv with bias); final LayerNorm; logits =
``head(mean(CLS, DIST))`` with ``head = LayerNorm + Linear(D, 527)`` (``head_dist`` is part of the checkpoint but
unused at inference, as in the original's eval path).

Weight layout loaded strictly (a plain state dict or ``{"model": state dict}``)::

    cls_token, dist_token, new_pos_embed, freq_new_pos_embed, time_new_pos_embed,
    patch_embed.proj.{weight,bias}, blocks.N.{norm1,norm2}.{weight,bias},
    blocks.N.attn.{qkv,proj}.{weight,bias}, blocks.N.mlp.{fc1,fc2}.{weight,bias},
    norm.{weight,bias}, head.0.{weight,bias}, head.1.{weight,bias}, head_dist.{weight,bias}
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from vaura.weights import load_released

SAMPLE_RATE = 32000
N_FFT, WIN, HOP = 1024, 800, 320
PASST_HINT = "PaSST weights passt-s-f128-p16-s10-ap.476-swa.pt (release v0.0.1 of github.com/kkoutini/PaSST)"


@dataclass(frozen=True)
class PaSSTSize:
    """Architecture knobs; the defaults are the released AudioSet model (tests use tiny sizes)."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    n_mels: int = 128
    max_frames: int = 998
    patch: int = 16
    stride: int = 10
    n_classes: int = 527

    @property
    def grid(self) -> tuple[int, int]:
        """Positional-embedding grid (frequency, time) as the released model sizes it: ``input // stride``."""
        return self.n_mels // self.stride, self.max_frames // self.stride


@functools.lru_cache(maxsize=1)
def _mel_basis() -> torch.Tensor:
    bins, _ = torchaudio.compliance.kaldi.get_mel_banks(128, N_FFT, float(SAMPLE_RATE), 0.0, 15000.0, 100.0, -500.0, 1.0)
    return F.pad(bins, (0, 1))  # [128, 513]


def passt_mel(audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """Mono audio at any rate → normalised log-mel ``[128, frames]`` at 32 kHz / hop 320."""
    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, sample_rate, SAMPLE_RATE)
    wav = wav[1:] - 0.97 * wav[:-1]
    spec = torch.stft(wav, N_FFT, hop_length=HOP, win_length=WIN, window=torch.hann_window(WIN, periodic=False),
                      center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    return (torch.log(_mel_basis() @ spec + 1e-5) + 4.5) / 5.0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, size: PaSSTSize) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, size.dim, size.patch, stride=size.stride)


class PaSST(nn.Module):
    """``forward(mel [B, 1, n_mels, T]) -> AudioSet logits [B, n_classes]``."""

    def __init__(self, size: PaSSTSize = PaSSTSize()) -> None:
        super().__init__()
        self.size = size
        f, t = size.grid
        d = size.dim
        self.patch_embed = PatchEmbed(size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, d))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, d, f, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, d, 1, t))
        self.blocks = nn.Sequential(*[Block(d, size.heads, size.mlp_ratio) for _ in range(size.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, size.n_classes))
        self.head_dist = nn.Linear(d, size.n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(mel)  # [B, D, F, T]
        t_max = self.time_new_pos_embed.shape[-1]
        x = x[..., :t_max] + self.time_new_pos_embed[..., : x.shape[-1]] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)
        b = x.shape[0]
        cls = self.cls_token.expand(b, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(b, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.norm(self.blocks(torch.cat([cls, dist, x], dim=1)))
        return self.head((x[:, 0] + x[:, 1]) / 2)


def load_passt(path: str | Path, size: PaSSTSize = PaSSTSize(), device: str | torch.device = "cpu") -> PaSST:
    """Build PaSST and strictly load the weight file at ``path`` (eval mode, frozen)."""
    model = load_released(lambda: PaSST(size), Path(path), PASST_HINT, "evaluate.passt_weights", inner="model")
    return model.to(device).eval().requires_grad_(False)


@torch.inference_mode()
def class_probabilities(model: PaSST, audios: Sequence[np.ndarray], sample_rate: int, batch_size: int = 8) -> np.ndarray:
    """``[n, n_classes]`` softmax over PaSST's AudioSet logits, one row per clip (equal-length clips)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(audios), batch_size):
        mel = torch.stack([passt_mel(a, sample_rate) for a in audios[i : i + batch_size]]).unsqueeze(1)
        out.append(torch.softmax(model(mel.to(device)).float(), dim=-1).cpu())
    return torch.cat(out).numpy()
