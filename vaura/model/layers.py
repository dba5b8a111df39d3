"""Llama-style decoder pieces: RMSNorm, rotary embeddings, bias-free attention with an optional KV cache, SwiGLU.

Numerics follow the released V-AURA sampler (LlamaGen lineage) so imported weights give the same logits:
RMSNorm normalises in fp32 then scales by a weight (eps 1e-5); SwiGLU is ``w2(silu(w1 x) * w3 x)``;
attention uses one fused ``wqkv`` projection split into q, k, v in that order.

RoPE pairing: channels ``(2i, 2i+1)`` of every head form one complex pair rotated by ``pos * base^(-2i/hd)``
(interleaved pairs, as in LlamaGen / Meta Llama's ``view_as_complex``; checked in the public V-AURA
``models/modules/sampler/llama.py`` and LlamaGen ``gpt.py``: the head dim is reshaped to ``(-1, 2)``, positions
start at 0 for the BOS step, no offset), *not* the GPT-NeoX half-split ``(i, i + hd/2)``. The pairing is invisible when training from scratch but decides whether the released
checkpoint's attention works, so it is fixed here and checked against a naive re-statement in the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_table(n_pos: int, head_dim: int, base: float) -> torch.Tensor:
    """``[n_pos, head_dim/2, 2]`` (cos, sin) of angle ``pos * base^(-2i/head_dim)`` for pair i."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv)
    return torch.stack([ang.cos(), ang.sin()], dim=-1)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x [B, L, H, hd]`` with ``rope [L, hd/2, 2]`` (computed in fp32)."""
    xp = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = rope[None, :, None, :, 0], rope[None, :, None, :, 1]
    re, im = xp[..., 0], xp[..., 1]
    out = torch.stack([re * cos - im * sin, im * cos + re * sin], dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Preallocated keys/values for every layer, ``[n_layer, B, H, max_len, hd]``.

    Kept out of the math: attention writes the new positions and reads the cache through this object.
    A module (buffers) so a compiled CUDA-graph decode step sees fixed addresses.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype):
        super().__init__()
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.wqkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, positions: torch.Tensor | None,
                cache: KVCache | None, layer: int, n_keys: int) -> torch.Tensor:
        """``n_keys``: cache positions to attend over, a host int so that decoding never waits on the GPU."""
        b, n, d = x.shape
        q, k, v = self.wqkv(x).split(d, dim=-1)
        q = apply_rope(q.view(b, n, self.n_head, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(b, n, self.n_head, self.head_dim), rope).transpose(1, 2)
        v = v.view(b, n, self.n_head, self.head_dim).transpose(1, 2)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1)
        else:
            cache.k[layer].index_copy_(2, positions, k)
            cache.v[layer].index_copy_(2, positions, v)
            # the mask lets query position p see keys 0..p only, whether n_keys stops at the newest position
            # or spans the whole preallocated cache (fixed shapes for CUDA graphs)
            keys, values = cache.k[layer][:, :, :n_keys], cache.v[layer][:, :, :n_keys]
            mask = torch.arange(n_keys, device=x.device)[None, :] <= positions[:, None]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, n, d)))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``h = x + attn(norm(x)); out = h + ffn(norm(h))``."""

    def __init__(self, d_model: int, n_head: int, ffn_hidden: int, dropout: float, eps: float):
        super().__init__()
        self.attention = Attention(d_model, n_head, dropout)
        self.feed_forward = FeedForward(d_model, ffn_hidden, dropout)
        self.attention_norm = RMSNorm(d_model, eps)
        self.ffn_norm = RMSNorm(d_model, eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, positions: torch.Tensor | None,
                cache: KVCache | None, layer: int, n_keys: int) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, positions, cache, layer, n_keys)
        return h + self.feed_forward(self.ffn_norm(h))
