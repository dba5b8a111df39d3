"""Typed configs of the V-AURA decoder (params section ``model``) and of sampling (section ``generation``).

Sizes are explicit knobs; :func:`named_size` gives the three presets used by tests and benchmarks
(``tiny``, ``small``) and the published model (``paper``, 694,554,696 sampler parameters incl. the
null-condition buffer, exactly the released checkpoint's ``sampler.*`` tensors).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from vaura.config import bounded


@dataclass
class ModelConfig:
    """Decoder sizes and conditioning choices (see docs in ``vaura/model/decoder.py``)."""

    n_layer: int = bounded(4, ge=1)
    d_model: int = bounded(192, ge=1)
    n_head: int = bounded(4, ge=1)
    # SwiGLU hidden = find_multiple(int(2 * 4 * d_model / 3), ffn_multiple_of) (Llama rule; 256 → 4096 at 1536-d)
    ffn_multiple_of: int = bounded(64, ge=1)
    # fusion: visual channels of the fused d_model vector (audio gets the rest); 512 = 1536 / 3 in the paper.
    # prepend: hidden width of the visual MLP (its output is d_model).
    cond_channels: int = bounded(64, ge=1)
    dropout: float = bounded(0.1, ge=0, lt=1)
    cfg_dropout: float = bounded(0.1, ge=0, le=1)
    rope_base: float = bounded(10000.0, gt=0)
    norm_eps: float = bounded(1e-5, gt=0)
    conditioning: Literal["fusion", "prepend"] = "fusion"
    alignment: Literal["timestamp", "reference"] = "timestamp"
    # "buffer": fixed random null condition (the released model); "learned": trained null condition.
    null_condition: Literal["buffer", "learned"] = "buffer"
    # longest clip one forward pass covers: sizes the null condition and the RoPE table (2.56 s in the paper)
    max_seconds: float = bounded(2.56, gt=0)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("model: head dim d_model / n_head must be even for rotary embeddings")
        if self.conditioning == "fusion" and not 0 < self.cond_channels < self.d_model:
            raise ValueError(f"model.cond_channels={self.cond_channels} must be in (0, d_model) for fusion")
        if self.conditioning == "prepend" and self.alignment == "reference":
            raise ValueError("model.alignment=reference is the released fusion model's rule; use timestamp "
                             "with conditioning=prepend (prepended tokens carry time by position)")
        if not 0.0 <= self.cfg_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("model.dropout and model.cfg_dropout must be in [0, 1)")

    def check_window(self, window_s: float, source: str) -> None:
        """A window the decoder runs on must fit what ``max_seconds`` sizes (null condition, positions): checked
        when training starts (the cache's window) and before ``vaura generate`` (its sliding window), instead of a
        shape error deep in the first forward pass."""
        if window_s > self.max_seconds + 1e-9:
            raise ValueError(f"{source}: window_s={window_s:g} exceeds model.max_seconds={self.max_seconds:g}, the "
                             "longest window the decoder covers; shorten the window or raise model.max_seconds")

    @property
    def ffn_hidden(self) -> int:
        n = int(2 * 4 * self.d_model / 3)
        m = self.ffn_multiple_of
        return n if n % m == 0 else n + m - n % m


@dataclass
class GenerationConfig:
    """Sampling settings (paper: γ = 6, temperature 1, top-k 128, 2.56 s windows, stride 0.64 s)."""

    cfg_scale: float = bounded(6.0, ge=0)
    temperature: float = bounded(1.0, gt=0)
    top_k: int = bounded(128, ge=0)
    top_p: float = bounded(0.0, ge=0, le=1)
    window_s: float = bounded(2.56, gt=0)
    stride_s: float = bounded(1.28, gt=0)
    # decode step: "auto" = the compiled CUDA-graph step where it can run (CUDA + triton), else eager with one
    # message saying why; "compiled" insists (error elsewhere); "eager" never compiles
    decode: Literal["auto", "compiled", "eager"] = "auto"

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0.0 <= self.top_p <= 1.0:
            raise ValueError("generation: temperature >= 0, top_k >= 0 and 0 <= top_p <= 1 required")
        if not 0 < self.stride_s <= self.window_s:
            raise ValueError(f"generation.stride_s={self.stride_s} must be in (0, window_s={self.window_s}]")


_SIZES: dict[str, dict] = {
    "tiny": dict(n_layer=2, d_model=32, n_head=2, ffn_multiple_of=16, cond_channels=8, dropout=0.0),
    "small": dict(n_layer=6, d_model=384, n_head=6, ffn_multiple_of=64, cond_channels=128),
    "paper": dict(n_layer=24, d_model=1536, n_head=16, ffn_multiple_of=256, cond_channels=512),
}


def named_size(size: Literal["tiny", "small", "paper"], **overrides) -> ModelConfig:
    """Preset sizes; ``overrides`` replace any field (e.g. ``alignment="reference"``)."""
    if size not in _SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(_SIZES)}")
    return dataclasses.replace(ModelConfig(), **{**_SIZES[size], **overrides})
