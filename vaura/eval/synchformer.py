"""Synchformer (AudioSet ``24-01-04T16-39-21``) re-implemented for the Sync / DeSync metrics.

Network: the Segment-AVCLIP :class:`MotionFormer` as visual branch (``vfeat_extractor``: 8 tokens per 16-frame
segment), an AST audio branch (``afeat_extractor``: ViT on a 128-mel log spectrogram with 16×16 patches at
stride 10, HF ``ASTModel`` parameter names, then a CLS-pooling layer over frequency -> 6 tokens per segment),
linear bridges ``vproj``/``aproj`` and a 3-layer global transformer over ``[OFF | vis | MOD | aud]`` whose OFF
token is classified into 21 offsets ``linspace(-2, 2, 21)`` s (positive = audio starts earlier).
Parameter names follow ``synchformer_24-01-04T16-39-21.json`` (``ckpt["model"]``, 513 tensors) so the released
weights load strictly. ``predict_offsets`` does the documented test-time preprocessing (docs/PAPER.md "Metrics").
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaura.visual.encoder import VisualInputError, frames_to_input
from vaura.visual.motionformer import PAPER_SIZE, ClsPoolLayer, MotionFormer, MotionFormerSize
from vaura.weights import SYNCHFORMER_URL_HINT, load_released

VFPS = 25
AUDIO_SR = 16000
AST_MEAN = -4.2677393
AST_STD = 4.5689974
AST_LN_EPS = 1e-12


@dataclass(frozen=True)
class SynchformerSize:
    """Architecture knobs; the defaults are the released model."""

    visual: MotionFormerSize = field(default_factory=lambda: PAPER_SIZE)
    audio_depth: int = 12
    audio_heads: int = 12
    audio_ffn: int = 3072
    n_mels: int = 128
    max_spec_t: int = 66
    audio_patch: int = 16
    audio_stride: int = 10
    n_layer: int = 3
    n_head: int = 8
    n_segments: int = 14
    segment_step: int = 8
    n_classes: int = 21
    max_offset_s: float = 2.0

    @property
    def dim(self) -> int:
        return self.visual.dim

    @property
    def freq_patches(self) -> int:
        return (self.n_mels - self.audio_patch) // self.audio_stride + 1

    @property
    def time_patches(self) -> int:
        return (self.max_spec_t - self.audio_patch) // self.audio_stride + 1

    @property
    def seq_len(self) -> int:
        return 2 + self.n_segments * (self.visual.tokens_per_segment + self.time_patches)

    @property
    def span_frames(self) -> int:
        """Video frames covered by the segments (120 = 4.8 s for the released model)."""
        return (self.n_segments - 1) * self.segment_step + self.visual.frames


class ASTEmbeddings(nn.Module):
    def __init__(self, size: SynchformerSize) -> None:
        super().__init__()
        d = size.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, d))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 2 + size.freq_patches * size.time_patches, d))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(1, d, size.audio_patch, stride=size.audio_stride)
        for p in (self.cls_token, self.distillation_token, self.position_embeddings):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec (N, T, F)`` -> ``(N, 2 + f·t, D)``; patches in frequency-major order."""
        x = self.patch_embeddings.projection(spec.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat([self.cls_token.expand(n, -1, -1), self.distillation_token.expand(n, -1, -1), x], dim=1)
        return x + self.position_embeddings


class ASTSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return out.transpose(1, 2).reshape(b, n, d)


class ASTAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = ASTSelfAttention(dim, heads)
        self.output = nn.Module()
        self.output.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class ASTLayer(nn.Module):
    """Pre-norm ViT layer with HF AST names (layernorm_before/after, intermediate, output)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = ASTAttention(dim, heads)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, ffn)
        self.output = nn.Module()
        self.output.dense = nn.Linear(ffn, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=AST_LN_EPS)
        self.layernorm_after = nn.LayerNorm(dim, eps=AST_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ASTBackbone(nn.Module):
    def __init__(self, size: SynchformerSize) -> None:
        super().__init__()
        self.embeddings = ASTEmbeddings(size)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            ASTLayer(size.dim, size.audio_heads, size.audio_ffn) for _ in range(size.audio_depth)
        )
        self.layernorm = nn.LayerNorm(size.dim, eps=AST_LN_EPS)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(spec)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class ASTExtractor(nn.Module):
    """``(B, S, T=66, F=128)`` log-mel segments -> ``(B, S, t=6, D)``: AST, drop CLS/distil, pool frequency."""

    def __init__(self, size: SynchformerSize) -> None:
        super().__init__()
        self.size = size
        self.ast = ASTBackbone(size)
        self.freq_attn_agg = ClsPoolLayer(size.dim, size.audio_heads, size.audio_ffn)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        b, s, t, f = spec.shape
        sz = self.size
        if (t, f) != (sz.max_spec_t, sz.n_mels):
            raise ValueError(f"AST expects (B, S, {sz.max_spec_t}, {sz.n_mels}) spectrograms, got {tuple(spec.shape)}")
        x = self.ast(spec.reshape(b * s, t, f))[:, 2:]  # (BS, fp·tp, D), frequency-major
        fp, tp = sz.freq_patches, sz.time_patches
        x = x.reshape(b * s, fp, tp, sz.dim).transpose(1, 2).reshape(b * s * tp, fp, sz.dim)
        return self.freq_attn_agg(x).reshape(b, s, tp, sz.dim)


class GlobalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class GlobalBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn = GlobalSelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GlobalTransformer(nn.Module):
    """``[OFF | vis | MOD | aud] + pos_emb`` -> 3 bidirectional blocks -> ln_f -> off_head(OFF)."""

    def __init__(self, size: SynchformerSize) -> None:
        super().__init__()
        d = size.dim
        self.OFF_tok = nn.Parameter(torch.randn(1, 1, d))
        self.MOD_tok = nn.Parameter(torch.randn(1, 1, d))
        self.vis_in_lnorm = nn.LayerNorm(d)
        self.aud_in_lnorm = nn.LayerNorm(d)
        self.pos_emb_cfg = nn.Module()
        self.pos_emb_cfg.pos_emb = nn.Parameter(torch.randn(1, size.seq_len, d) * 0.02)
        self.blocks = nn.Sequential(*(GlobalBlock(d, size.n_head) for _ in range(size.n_layer)))
        self.ln_f = nn.LayerNorm(d)
        self.off_head = nn.Linear(d, size.n_classes)

    def forward(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        b = vis.shape[0]
        x = torch.cat(
            [self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(vis), self.MOD_tok.expand(b, -1, -1),
             self.aud_in_lnorm(aud)],
            dim=1,
        )
        if x.shape[1] != self.pos_emb_cfg.pos_emb.shape[1]:
            raise ValueError(f"global transformer built for {self.pos_emb_cfg.pos_emb.shape[1]} tokens, got {x.shape[1]}")
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


class Synchformer(nn.Module):
    """``forward(vis (B, S, 16, 3, H, W) in [-1,1], aud (B, S, 1, 128, 66)) -> offset logits (B, 21)``."""

    def __init__(self, size: SynchformerSize = SynchformerSize()) -> None:
        super().__init__()
        self.size = size
        self.vfeat_extractor = MotionFormer(size.visual)
        self.afeat_extractor = ASTExtractor(size)
        self.vproj = nn.Linear(size.dim, size.dim)
        self.aproj = nn.Linear(size.dim, size.dim)
        self.transformer = GlobalTransformer(size)

    @property
    def offset_grid(self) -> torch.Tensor:
        """Offset (s) of each class: ``linspace(-max, max, n_classes)``."""
        return torch.linspace(-self.size.max_offset_s, self.size.max_offset_s, self.size.n_classes)

    def forward(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        b, s = vis.shape[:2]
        v = self.vproj(self.vfeat_extractor(vis.permute(0, 1, 3, 2, 4, 5)))  # (B, S, 8, D)
        a = self.aproj(self.afeat_extractor(aud[:, :, 0].transpose(2, 3)))  # (B, S, 6, D)
        return self.transformer(v.reshape(b, -1, self.size.dim), a.reshape(b, -1, self.size.dim))

    def prepare_inputs(
        self, frames: np.ndarray | torch.Tensor, audio_16k: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One clip: uint8 frames ``[T, H, W, 3]`` at 25 fps + mono 16 kHz audio starting at the same instant
        -> ``vis (S, 16, 3, crop, crop)``, ``aud (S, 1, n_mels, max_spec_t)`` per the released test transforms.

        The ``S`` segments (16 frames, stride 8) are centred in the clip as the official transform does
        (start frame ``(T - span) // 2``); the audio segments (0.64 s, stride 0.32 s) start at the same time.
        """
        sz = self.size
        n_frames = len(frames)
        if n_frames < sz.span_frames:
            raise VisualInputError(f"Synchformer needs at least {sz.span_frames} frames, got {n_frames}")
        v0 = (n_frames - sz.span_frames) // 2
        x = frames_to_input(frames, sz.visual.img_size, train=False)
        starts = [v0 + i * sz.segment_step for i in range(sz.n_segments)]
        vis = torch.stack([x[s:s + sz.visual.frames] for s in starts])
        wav = torch.as_tensor(np.asarray(audio_16k, dtype=np.float32)).reshape(-1)
        seg_len = round(sz.visual.frames / VFPS * AUDIO_SR)
        step = round(sz.segment_step / VFPS * AUDIO_SR)
        a0 = round(v0 / VFPS * AUDIO_SR)
        need = a0 + (sz.n_segments - 1) * step + seg_len
        if wav.numel() < need:
            wav = F.pad(wav, (0, need - wav.numel()))
        segs = torch.stack([wav[a0 + i * step:a0 + i * step + seg_len] for i in range(sz.n_segments)])
        return vis, self.log_mel(segs).unsqueeze(1)

    def log_mel(self, segments: torch.Tensor) -> torch.Tensor:
        """``(S, samples)`` -> normalised log-mel ``(S, n_mels, max_spec_t)`` (zero-padded / truncated in time)."""
        spec = torch.log(_mel_transform(self.size.n_mels)(segments.float().cpu()) + 1e-6)
        t = self.size.max_spec_t
        spec = F.pad(spec, (0, max(0, t - spec.shape[-1])))[..., :t]
        return (spec - AST_MEAN) / (2 * AST_STD)

    @torch.no_grad()
    def predict_offsets(self, video_frames: Any, audio_16k: Any) -> torch.Tensor:
        """Offset logits ``[B, n_classes]`` for one clip (``[T,H,W,3]`` + ``[N]``) or a batch (``[B,T,H,W,3]`` +
        ``[B,N]``, or lists). Class ``k`` means offset ``offset_grid[k]`` seconds."""
        batched = (isinstance(video_frames, (list, tuple)) or np.ndim(video_frames) == 5)
        clips = list(video_frames) if batched else [video_frames]
        audios = list(audio_16k) if batched else [audio_16k]
        if len(clips) != len(audios):
            raise VisualInputError(f"{len(clips)} videos but {len(audios)} audio tracks")
        pairs = [self.prepare_inputs(v, a) for v, a in zip(clips, audios)]
        device = next(self.parameters()).device
        vis = torch.stack([p[0] for p in pairs]).to(device)
        aud = torch.stack([p[1] for p in pairs]).to(device)
        return self(vis, aud).float().cpu()

    def offsets_seconds(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted offset (s) per row of logits: the grid value of the arg-max class."""
        return self.offset_grid[logits.argmax(dim=-1)]


@functools.lru_cache(maxsize=2)
def _mel_transform(n_mels: int) -> nn.Module:
    """torchaudio defaults otherwise (power 2, centred reflect padding, HTK mel, no norm), as the release used."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=AUDIO_SR, n_fft=1024, win_length=400, hop_length=160, n_mels=n_mels
    )


def load_synchformer(
    state_dict_or_path: str | Path | Mapping[str, Any],
    size: SynchformerSize = SynchformerSize(),
    device: str | torch.device = "cpu",
) -> Synchformer:
    """Build a frozen, eval-mode :class:`Synchformer` and strictly load ``ckpt["model"]`` (or a bare state dict)."""
    model = load_released(lambda: Synchformer(size), state_dict_or_path, SYNCHFORMER_URL_HINT,
                          "evaluate.synchformer_weights", inner="model")
    return model.to(device).eval().requires_grad_(False)


def parameter_count(size: SynchformerSize = SynchformerSize()) -> int:
    """Number of values in the state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        return sum(math.prod(v.shape) for v in Synchformer(size).state_dict().values())
