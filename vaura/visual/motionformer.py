"""Segment-AVCLIP's visual encoder: a Motionformer-style divided space-time ViT, written for vaura.

Module and parameter names follow the released checkpoint layout (``segment_avclip_vggsound_v_encoder.json``)
so the real weights load strictly. Per 16-frame segment: a 3-D patch embedding (2-frame tubelet, 16×16
patches) gives ``t × h × w`` tokens plus one CLS token; each block runs temporal attention (``timeattn``, over
the ``t`` tokens at one spatial position), then spatial attention (``attn``, over the ``h·w`` tokens of one time
step), then an MLP; the CLS token attends to every token in both. After the final norm the CLS token is dropped
and a CLS-pooling TransformerEncoderLayer (``spatial_attn_agg``) pools each time step's ``h·w`` tokens, giving
``t`` vectors per segment (temporal aggregation is the identity): ``(B, S, 3, 16, H, W) -> (B, S, 8, D)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


@dataclass(frozen=True)
class MotionFormerSize:
    """Architecture knobs; ``PAPER_SIZE`` is ViT-B as in the released checkpoint."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    img_size: int = 224
    patch: int = 16
    tubelet: int = 2
    frames: int = 16

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"visual dim {self.dim} is not divisible by heads {self.heads}")
        if self.img_size % self.patch:
            raise ValueError(f"visual crop {self.img_size} is not a multiple of patch {self.patch}")
        if self.frames % self.tubelet:
            raise ValueError(f"frames per segment {self.frames} is not a multiple of tubelet {self.tubelet}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch

    @property
    def tokens_per_segment(self) -> int:
        return self.frames // self.tubelet

    def to_dict(self) -> dict:
        return asdict(self)


PAPER_SIZE = MotionFormerSize()


class PatchEmbed2D(nn.Module):
    """2-D patch embedding. Not used in forward (the 3-D one is) but part of the checkpoint, so kept frozen."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class PatchEmbed3D(nn.Module):
    """Tubelet embedding: (BS, 3, T, H, W) -> (BS, T/tubelet · H/p · W/p, D), time-major token order."""

    def __init__(self, patch: int, tubelet: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DividedAttention(nn.Module):
    """Attention restricted to groups of tokens (one spatial position across time, or one frame across space).

    Token 0 is a CLS token: it attends to all tokens, and every group also attends to it.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, over: str, n_time: int, n_space: int) -> torch.Tensor:
        b, length, dim = x.shape
        h, dh = self.heads, dim // self.heads
        q, k, v = self.qkv(x).view(b, length, 3, h, dh).permute(2, 0, 3, 1, 4)  # each (b, h, L, dh)
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)

        def group(t: torch.Tensor) -> torch.Tensor:
            t = t[:, :, 1:].reshape(b, h, n_time, n_space, dh)
            if over == "time":  # one group per spatial position, sequence over time
                return t.permute(0, 3, 1, 2, 4).reshape(b * n_space, h, n_time, dh)
            return t.permute(0, 2, 1, 3, 4).reshape(b * n_time, h, n_space, dh)

        n_groups = n_space if over == "time" else n_time
        cls_k = k[:, :, :1].repeat_interleave(n_groups, dim=0)
        cls_v = v[:, :, :1].repeat_interleave(n_groups, dim=0)
        out = F.scaled_dot_product_attention(
            group(q), torch.cat([cls_k, group(k)], dim=2), torch.cat([cls_v, group(v)], dim=2)
        )
        if over == "time":
            out = out.reshape(b, n_space, h, n_time, dh).permute(0, 2, 3, 1, 4)
        else:
            out = out.reshape(b, n_time, h, n_space, dh).permute(0, 2, 1, 3, 4)
        out = torch.cat([cls_out, out.reshape(b, h, n_time * n_space, dh)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedBlock(nn.Module):
    """Time attention (norm3), then space attention (norm1), then MLP (norm2), each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.norm3 = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, n_time: int, n_space: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), "time", n_time, n_space)
        x = x + self.attn(self.norm1(x), "space", n_time, n_space)
        return x + self.mlp(self.norm2(x))


class ClsPoolLayer(nn.TransformerEncoderLayer):
    """Pre-norm TransformerEncoderLayer with its own CLS token; returns the CLS output (pools a token set)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0) -> None:
        super().__init__(
            d_model=dim, nhead=heads, dim_feedforward=ffn, dropout=dropout, activation=nn.GELU(),
            layer_norm_eps=LN_EPS, batch_first=True, norm_first=True,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


class MotionFormer(nn.Module):
    """Segment encoder: ``forward(x (B, S, 3, frames, H, W) in [-1, 1]) -> (B, S, frames/tubelet, D)``."""

    def __init__(self, size: MotionFormerSize = PAPER_SIZE) -> None:
        super().__init__()
        self.size = size
        d = size.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, size.grid * size.grid + 1, d))
        self.temp_embed = nn.Parameter(torch.zeros(1, size.tokens_per_segment, d))
        self.patch_embed = PatchEmbed2D(size.patch, d)
        self.patch_embed_3d = PatchEmbed3D(size.patch, size.tubelet, d)
        self.blocks = nn.ModuleList(DividedBlock(d, size.heads, size.mlp_ratio) for _ in range(size.depth))
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.spatial_attn_agg = ClsPoolLayer(d, size.heads, d * size.mlp_ratio)
        self.apply(_init_weights)
        for p in (self.cls_token, self.pos_embed, self.temp_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.patch_embed.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.size.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 6 or x.shape[2] != 3:
            raise ValueError(f"MotionFormer expects (B, S, 3, T, H, W), got {tuple(x.shape)}")
        b, s, _, t, hgt, wid = x.shape
        sz = self.size
        if t != sz.frames or hgt != sz.img_size or wid != sz.img_size:
            raise ValueError(
                f"MotionFormer built for {sz.frames} frames of {sz.img_size}x{sz.img_size}, got {t} of {hgt}x{wid}"
            )
        tokens = self.patch_embed_3d(x.reshape(b * s, 3, t, hgt, wid))  # (BS, nt·np, D)
        n_time, n_space = sz.tokens_per_segment, sz.grid * sz.grid
        pos = self.pos_embed[:, 1:].repeat(1, n_time, 1) + self.temp_embed.repeat_interleave(n_space, dim=1)
        tokens = tokens + pos
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b * s, -1, -1)
        z = torch.cat([cls, tokens], dim=1)
        for blk in self.blocks:
            z = blk(z, n_time, n_space)
        z = self.norm(z[:, 1:]).reshape(b * s * n_time, n_space, sz.dim)
        pooled = self.spatial_attn_agg(z)  # (BS·nt, D)
        return pooled.reshape(b, s, n_time, sz.dim)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
