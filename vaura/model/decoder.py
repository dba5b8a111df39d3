"""The V-AURA decoder (the release calls it "sampler"): audio tokens from visual features, top to bottom.

1. Audio embedding — per codebook ``Embedding(card + 1, codebook_dim)`` (row ``card`` = the special BOS/pad token)
   followed by that codec quantizer's weight-normed 1×1 ``out_proj`` (codebook_dim → audio width); the K results
   are summed. :meth:`VAURA.init_audio_embeddings` copies both from the codec, as the paper does.
2. Visual embedding — 2-layer bias-free MLP with tanh-GELU. For classifier-free guidance the raw features are
   replaced by a null condition (``uncond_embedding``) with probability ``cfg_dropout`` in training.
3. Conditioning — ``fusion``: every decoder step gets the visual token chosen by ``vaura.model.alignment``
   and is the channel concatenation ``[visual cond_channels | audio d_model - cond_channels]``;
   ``prepend``: the N projected visual tokens (d_model wide) precede the audio steps in one sequence.
4. Llama decoder (``vaura.model.layers``) and one bias-free linear head per codebook, on the delay pattern
   (``vaura.model.delay``); loss = cross-entropy per codebook over valid frames, averaged over codebooks.

Parameter names equal the released checkpoint's ``sampler.*`` keys, so importing it is a prefix strip.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaura.model.alignment import reference_index, reference_steps_per_token, timestamp_index
from vaura.model.config import ModelConfig
from vaura.model.delay import build_delayed, revert_logits
from vaura.model.layers import KVCache, RMSNorm, TransformerBlock, rope_table

INIT_STD = 0.02


class WNProjection(nn.Module):
    """Weight-normed 1×1 projection stored as DAC stores it: ``weight_g [out,1,1]``, ``weight_v [out,in,1]``, bias.

    Effective weight = ``g * v / ||v||`` (norm per output channel), as ``torch.nn.utils.weight_norm`` on a Conv1d.
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        v = torch.randn(d_out, d_in, 1) * INIT_STD
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(1, 2), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=(1, 2), keepdim=True)
        return F.linear(x, w[:, :, 0], self.bias)


class AudioEmbedding(nn.Module):
    """One codebook's embedding: code → codebook vector → quantizer out-projection."""

    def __init__(self, codebook_size: int, codebook_dim: int, d_out: int):
        super().__init__()
        self.emb = nn.Embedding(codebook_size + 1, codebook_dim)
        self.out_proj = WNProjection(codebook_dim, d_out)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.emb(codes))


class MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VisualEmbedder(nn.Module):
    """Visual MLP plus the CFG null condition ``uncond_embedding [n_null, visual_dim]`` (raw-feature space)."""

    def __init__(self, visual_dim: int, hidden: int, d_out: int, n_null: int, learned_null: bool):
        super().__init__()
        self.projection = MLP(visual_dim, hidden, d_out)
        null = torch.randn(n_null, visual_dim) / visual_dim**0.5
        if learned_null:
            self.uncond_embedding = nn.Parameter(null)
        else:
            self.register_buffer("uncond_embedding", null)

    def forward(self, visual: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        n = visual.shape[1]
        if n > self.uncond_embedding.shape[0]:
            raise ValueError(f"{n} visual tokens but the null condition covers {self.uncond_embedding.shape[0]}; "
                             "raise model.max_seconds or use shorter windows")
        null = self.uncond_embedding[:n].to(visual.dtype)
        return self.projection(torch.where(drop[:, None, None], null, visual))


def cfg_drop_mask(batch: int, p: float, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Which rows of a training batch get the null condition (classifier-free guidance dropout, probability ``p``).

    The one place the mask is drawn: the trainer passes its own checkpointed ``generator`` (exact resume).
    """
    return torch.rand(batch, generator=generator, device=device) < p


class VAURA(nn.Module):
    """Llama-style decoder over delayed DAC codes, conditioned on 12.5 Hz visual features."""

    def __init__(self, cfg: ModelConfig, n_codebooks: int, codebook_size: int, codebook_dim: int,
                 audio_frame_rate: float, visual_dim: int, visual_frame_rate: float = 12.5):
        super().__init__()
        self.cfg = cfg
        self.n_codebooks, self.codebook_size, self.codebook_dim = n_codebooks, codebook_size, codebook_dim
        self.special_token = codebook_size  # BOS and delay padding
        self.audio_frame_rate, self.visual_frame_rate = float(audio_frame_rate), float(visual_frame_rate)
        self.visual_dim = visual_dim
        self.fusion = cfg.conditioning == "fusion"
        self.max_frames = math.ceil(cfg.max_seconds * self.audio_frame_rate - 1e-9)
        self.n_null = round(cfg.max_seconds * self.visual_frame_rate)
        d = cfg.d_model
        self.audio_width = d - cfg.cond_channels if self.fusion else d

        self.tok_embeddings = nn.ModuleList(
            AudioEmbedding(codebook_size, codebook_dim, self.audio_width) for _ in range(n_codebooks))
        self.cls_embeddings = VisualEmbedder(visual_dim, cfg.cond_channels, cfg.cond_channels if self.fusion else d,
                                             self.n_null, cfg.null_condition == "learned")
        if self.fusion and cfg.alignment == "reference":
            self.empty_video_emb = nn.Parameter(torch.randn(1, 1, cfg.cond_channels) * INIT_STD)
        self.tok_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(d, cfg.n_head, cfg.ffn_hidden, cfg.dropout, cfg.norm_eps) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.lm_heads = nn.ModuleList(nn.Linear(d, codebook_size, bias=False) for _ in range(n_codebooks))
        self.n_prefix = 0 if self.fusion else self.n_null
        self.n_positions = self.n_prefix + self.max_frames + n_codebooks
        self._rope: torch.Tensor | None = None  # fp32 (cos, sin) table, built per device by rope_on()
        self._loss_fn = codebook_loss  # compile_blocks() swaps in the compiled one
        self._compiled_layers: list | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=INIT_STD)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=1.0)
        for head in self.lm_heads:
            nn.init.zeros_(head.weight)

    # ---- conditioning -------------------------------------------------------------------------------------
    def condition(self, visual: torch.Tensor, drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Project visual features ``[B, N, Dv]``; rows with ``drop_cond`` use the null condition.

        ``drop_cond=None`` draws the CFG dropout (probability ``cfg_dropout``) in training, none in eval.
        """
        if visual.shape[-1] != self.visual_dim:
            raise ValueError(f"visual features have dim {visual.shape[-1]}, model expects {self.visual_dim}")
        b = visual.shape[0]
        if drop_cond is None:
            if self.training and self.cfg.cfg_dropout > 0:
                drop_cond = cfg_drop_mask(b, self.cfg.cfg_dropout, device=visual.device)
            else:
                drop_cond = torch.zeros(b, dtype=torch.bool, device=visual.device)
        return self.cls_embeddings(visual, drop_cond.to(visual.device))

    def align(self, cond: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Fusion: per-step visual channels ``[B, n_steps, cond_channels]`` for steps ``0..n_steps-1``."""
        n_visual = cond.shape[1]
        if self.cfg.alignment == "timestamp":
            idx = timestamp_index(n_steps, n_visual, self.audio_frame_rate, self.visual_frame_rate)
            return cond[:, idx.to(cond.device)]
        idx = reference_index(n_steps, n_visual,
                              reference_steps_per_token(self.audio_frame_rate, self.visual_frame_rate)).to(cond.device)
        picked = cond[:, idx.clamp_min(0)]
        empty = self.empty_video_emb.to(cond.dtype).expand_as(picked)
        return torch.where((idx >= 0)[None, :, None], picked, empty)

    # ---- decoder ------------------------------------------------------------------------------------------
    def embed_steps(self, seq: torch.Tensor, cond_steps: torch.Tensor | None) -> torch.Tensor:
        """Delayed tokens ``[B, K, L]`` (+ fusion channels ``[B, L, C]``) → decoder inputs ``[B, L, d_model]``."""
        audio = sum(emb(seq[:, q]) for q, emb in enumerate(self.tok_embeddings))
        return torch.cat([cond_steps.to(audio.dtype), audio], dim=-1) if self.fusion else audio

    def rope_on(self, device: torch.device) -> torch.Tensor:
        """The rotary table on ``device``, always fp32 (a plain attribute, not a buffer, so ``.half()`` or
        ``.to(bfloat16)`` of the model never rounds the angles — as the reference keeps its ``freqs_cis``)."""
        if self._rope is None or self._rope.device != device:
            self._rope = rope_table(self.n_positions, self.cfg.d_model // self.cfg.n_head,
                                    self.cfg.rope_base).to(device)
        return self._rope

    def run(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
            static: bool = False, end: int | None = None) -> torch.Tensor:
        """Decoder inputs ``[B, L, d]`` at ``positions`` (default ``0..L-1``) → logits ``[B, K, L, card]``.

        With a cache, keys/values of these positions are stored and earlier cached ones attended to: up to
        ``end`` (1 + the largest position, known to the caller), or over the whole cache when ``static`` (the
        fixed shapes CUDA graphs need). Passing ``end`` keeps decoding free of device-to-host syncs; without it
        it is read from ``positions`` (one sync).
        """
        n = x.shape[1]
        if positions is None:
            positions = torch.arange(n, device=x.device)
            end = n
        if static:
            n_keys = cache.max_len if cache is not None else n
        else:
            n_keys = int(positions.max()) + 1 if end is None else end
            if n_keys > self.n_positions:
                raise ValueError(f"sequence position {n_keys - 1} exceeds the model's "
                                 f"{self.n_positions} positions (model.max_seconds={self.cfg.max_seconds})")
        rope = self.rope_on(x.device)[positions]
        h = self.tok_dropout(x)
        layers = self._compiled_layers if cache is None and self._compiled_layers else self.layers
        for i, layer in enumerate(layers):
            h = layer(h, rope, positions if cache is not None else None, cache, i, n_keys)
        h = self.norm(h)
        return torch.stack([head(h) for head in self.lm_heads], dim=1)

    def compile_blocks(self) -> None:
        """``torch.compile`` each decoder block and the loss for the teacher-forced passes (training, validation).

        The blocks share one code object, so the graph is compiled once and reused by every layer (regional
        compilation): about the compile time of one block instead of the whole unrolled model, with the fusions
        that matter (norms, RoPE, SwiGLU, attention's surroundings) inside the block. Cached decoding keeps the
        eager blocks (its compiled path is the CUDA-graph step of ``generate(compile=True)``). The compiled
        wrappers live outside the module tree, so parameter names and checkpoints do not change.
        """
        self._compiled_layers = [torch.compile(layer) for layer in self.layers]
        self._loss_fn = torch.compile(codebook_loss)

    def new_cache(self, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> KVCache:
        cfg = self.cfg
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head, device, dtype)

    def forward(self, codes: torch.Tensor, visual: torch.Tensor,
                drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits ``[B, K, T, card]`` for un-delayed codes ``[B, K, T]`` (negative = missing)."""
        b, k, t = codes.shape
        if k != self.n_codebooks:
            raise ValueError(f"codes have {k} codebooks, model expects {self.n_codebooks}")
        if t > self.max_frames:
            raise ValueError(f"{t} frames exceed model.max_seconds={self.cfg.max_seconds} ({self.max_frames} frames)")
        codes = torch.where(codes < 0, torch.full_like(codes, self.special_token), codes)
        seq = build_delayed(codes, self.special_token)[:, :, :-1]
        cond = self.condition(visual, drop_cond)
        if self.fusion:
            x = self.embed_steps(seq, self.align(cond, seq.shape[-1]))
        else:
            audio = self.embed_steps(seq, None)
            x = torch.cat([cond.to(audio.dtype), audio], dim=1)
        logits = self.run(x)[:, :, x.shape[1] - seq.shape[-1]:]
        return revert_logits(logits, t)

    def loss(self, codes: torch.Tensor, visual: torch.Tensor,
             drop_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked per-codebook cross-entropy averaged over codebooks; ``(loss, per_codebook [K] detached)``.

        Frames whose code is negative (padding past a clip's end) are excluded (see :func:`codebook_loss`).
        """
        return self._loss_fn(self(codes, visual, drop_cond), codes)

    # ---- initialisation from the codec ----------------------------------------------------------------------
    @torch.no_grad()
    def init_audio_embeddings(self, codec) -> int:
        """Copy the codec's codebooks (+ a random special row) and out-projections into the audio embedding.

        ``codec`` follows ``vaura.codec.Codec`` (``codebooks()``, ``out_projections()``). Out-projections are
        copied only when their width equals the model's audio width (a smaller model than the codec's latent is a
        normal configuration, not a problem to warn about); returns how many were copied.
        """
        books, projs = codec.codebooks(), codec.out_projections()
        if len(books) < self.n_codebooks:
            raise ValueError(f"codec has {len(books)} codebooks, model needs {self.n_codebooks}")
        copied = 0
        for q, emb in enumerate(self.tok_embeddings):
            book = books[q]
            if tuple(book.shape) != (self.codebook_size, self.codebook_dim):
                raise ValueError(f"codebook {q} has shape {tuple(book.shape)}, model expects "
                                 f"{(self.codebook_size, self.codebook_dim)}")
            emb.emb.weight[: self.codebook_size] = book.to(emb.emb.weight)
            emb.emb.weight[self.codebook_size].normal_(std=INIT_STD)
            g, v, bias = _weight_norm_parts(projs[q])
            if v.shape[:2] == emb.out_proj.weight_v.shape[:2]:
                emb.out_proj.weight_g.copy_(g.reshape(emb.out_proj.weight_g.shape))
                emb.out_proj.weight_v.copy_(v.reshape(emb.out_proj.weight_v.shape))
                emb.out_proj.bias.copy_(bias if bias is not None else torch.zeros_like(emb.out_proj.bias))
                copied += 1
        return copied


def codebook_loss(logits: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over codebooks of each codebook's cross-entropy over its valid frames (``codes >= 0``).

    ``logits [B, K, T, card]``, ``codes [B, K, T]``; returns ``(loss, per_codebook [K] detached)``. One
    cross-entropy over every token with padding as ``ignore_index``, summed per codebook and divided by the
    codebook's count of valid frames: selecting the valid frames with a boolean mask instead would need their
    number on the host, a GPU→CPU sync per codebook per step. A codebook with no valid frame in the batch gives
    NaN (0/0), which the trainer reports as a non-finite loss.
    """
    b, k, t, card = logits.shape
    valid = codes >= 0
    target = torch.where(valid, codes, torch.full_like(codes, -100))
    per_token = F.cross_entropy(logits.float().reshape(-1, card), target.reshape(-1), ignore_index=-100,
                                reduction="none").view(b, k, t)
    per = per_token.sum(dim=(0, 2)) / valid.sum(dim=(0, 2))
    return per.mean(), per.detach()


def _weight_norm_parts(proj: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(g, v, bias)`` of a 1×1 conv/linear, whichever weight-norm flavour (or none) it uses."""
    if hasattr(proj, "weight_g") and hasattr(proj, "weight_v"):
        g, v = proj.weight_g, proj.weight_v
    elif hasattr(proj, "parametrizations") and hasattr(proj.parametrizations, "weight"):
        g, v = proj.parametrizations.weight.original0, proj.parametrizations.weight.original1
    else:
        v = proj.weight
        g = v.reshape(v.shape[0], -1).norm(dim=1)
    v = v.reshape(v.shape[0], v.shape[1], 1)
    return g.reshape(-1, 1, 1), v, getattr(proj, "bias", None)
