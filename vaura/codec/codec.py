"""Frozen DAC tokenizer for V-AURA: audio ⇄ K × T discrete codes, plus strict weight loading.

V-AURA predicts the first ``n_quantizers`` residual codebooks of a Descript Audio Codec (44.1 kHz, hop 512,
9 codebooks × 1024 in the paper). This module wraps a ``dac.DAC`` so the rest of the project never touches the
package's internals, and loads weights *strictly*: ``dac.DAC.load`` uses ``strict=False``, which would let a
wrong checkpoint silently leave layers at their random initialisation.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

from vaura.codec.config import CodecConfig
from vaura.weights import WeightsError, mismatch, read_checkpoint

DAC44_URL = "https://github.com/descriptinc/descript-audio-codec/releases/download/0.0.1/weights.pth"
DAC44_CACHE = Path("~/.cache/descript/dac/weights_44khz_8kbps_0.0.1.pth")
OFFLINE_FORMAT = "vaura-codec-offline/1"


class CodecInputError(ValueError):
    """Audio or codes handed to the codec with the wrong shape, dtype or range."""


def _new_dac(kwargs: Mapping[str, Any] | None, device: str | torch.device = "cpu") -> nn.Module:
    with warnings.catch_warnings():
        # dac scripts a layer with the deprecated torch.jit.script when imported and builds its layers with the
        # deprecated torch.nn.utils.weight_norm; the checkpoint layout (weight_g / weight_v) depends on exactly
        # that, so these two warnings are expected and not actionable. Any other warning still shows.
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        warnings.filterwarnings("ignore", r"`torch\.nn\.utils\.weight_norm` is deprecated", FutureWarning)
        import dac

        with torch.device(device):
            return dac.DAC(**dict(kwargs or {}))


def _summarise(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit} more)" if len(names) > limit else "")


def load_dac_state_dict(
    state_dict: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any] | None = None, *, source: str = "state dict"
) -> nn.Module:
    """Build ``dac.DAC(**kwargs)`` and load ``state_dict`` strictly, casting to float32.

    ``kwargs=None`` is the 44.1 kHz architecture (``dac.DAC()`` defaults), i.e. what the V-AURA checkpoint's
    ``audio_encoder.model.*`` tensors (stored fp16) hold once the prefix is stripped. Missing, unexpected or
    mis-shaped tensors raise :class:`WeightsError` naming them and ``source``.
    """
    model = _new_dac(kwargs, device="meta")
    problems = mismatch(model.state_dict(), state_dict)
    if problems:
        raise WeightsError(f"{source}: does not match dac.DAC({dict(kwargs or {})}): {problems}")
    not_float = [k for k, v in state_dict.items() if not torch.is_floating_point(v)]
    if not_float:
        raise WeightsError(f"{source}: non-floating tensors where DAC has parameters: {_summarise(not_float)}")
    fp32 = {k: v.detach().to(device="cpu", dtype=torch.float32) for k, v in state_dict.items()}
    model.load_state_dict(fp32, strict=True, assign=True)
    # The weight-norm pre-hooks recompute `weight` from (g, v) at every forward; the attribute itself still
    # holds the meta placeholder built at construction, so materialise it once for code that reads it directly.
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, WeightNorm):
                    setattr(module, hook.name, hook.compute_weight(module))
    return model.float().eval()


def load_dac_file(path: str | Path) -> nn.Module:
    """Load a DAC weights file in the package's own format ``{"state_dict", "metadata": {"kwargs"}}``."""
    path = Path(path).expanduser()
    blob = read_checkpoint(path, f"44.1 kHz 8 kbps DAC weights (release 0.0.1) from {DAC44_URL}", "codec.weights")
    if "state_dict" not in blob:
        raise WeightsError(f"{path}: expected a dict with 'state_dict' (DAC format), got keys {sorted(blob)[:5]}")
    kwargs = (blob.get("metadata") or {}).get("kwargs")
    return load_dac_state_dict(blob["state_dict"], kwargs, source=str(path))


class Codec(nn.Module):
    """A frozen ``dac.DAC`` seen as a tokenizer with ``n_codebooks`` (= the quantizers V-AURA uses)."""

    def __init__(self, dac_model: nn.Module, n_quantizers: int):
        super().__init__()
        total = len(dac_model.quantizer.quantizers)
        if not 1 <= n_quantizers <= total:
            raise ValueError(f"n_quantizers={n_quantizers} but the DAC has {total} codebooks")
        dims = {q.codebook_dim for q in dac_model.quantizer.quantizers[:n_quantizers]}
        if len(dims) != 1:
            raise ValueError(f"codebooks of different dims {sorted(dims)} are not supported")
        self.dac = dac_model.eval().requires_grad_(False)
        self.sample_rate: int = int(dac_model.sample_rate)
        self.hop_length: int = int(dac_model.hop_length)
        self.frame_rate: float = self.sample_rate / self.hop_length
        self.n_codebooks: int = int(n_quantizers)
        self.codebook_size: int = int(dac_model.codebook_size)
        self.codebook_dim: int = int(dims.pop())

    def train(self, mode: bool = True) -> "Codec":
        """The codec is frozen: stay in eval mode (DAC's quantizer uses every codebook when training)."""
        super().train(False)
        return self

    def n_frames(self, duration_s: float) -> int:
        """Code frames for ``duration_s`` of audio: the input is right-padded to a multiple of the hop."""
        return math.ceil(round(duration_s * self.sample_rate) / self.hop_length)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, 1, S]`` float audio at ``sample_rate`` → ``[B, K, ceil(S / hop)]`` int64 codes."""
        if wav.ndim != 3 or wav.shape[1] != 1 or not torch.is_floating_point(wav):
            raise CodecInputError(f"encode expects float audio [B, 1, S], got {tuple(wav.shape)} {wav.dtype}")
        if wav.shape[-1] == 0:
            raise CodecInputError("encode got empty audio (S = 0)")
        param = next(self.dac.parameters())
        x = self.dac.preprocess(wav.to(device=param.device, dtype=param.dtype), self.sample_rate)
        _, codes, *_ = self.dac.encode(x, n_quantizers=self.n_codebooks)
        return codes[:, : self.n_codebooks].long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, K, T]`` codes → ``[B, 1, T * hop]`` float audio."""
        if codes.ndim != 3 or codes.shape[1] != self.n_codebooks or codes.is_floating_point():
            raise CodecInputError(
                f"decode expects integer codes [B, {self.n_codebooks}, T], got {tuple(codes.shape)} {codes.dtype}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise CodecInputError(
                f"codes out of range [0, {self.codebook_size}): min {int(codes.min())}, max {int(codes.max())}"
            )
        param = next(self.dac.parameters())
        z, _, _ = self.dac.quantizer.from_codes(codes.long().to(param.device))
        return self.dac.decode(z)

    def codebooks(self) -> list[torch.Tensor]:
        """The K codebooks ``[codebook_size, codebook_dim]`` (detached copies) for embedding initialisation."""
        return [q.codebook.weight.detach().clone() for q in self.dac.quantizer.quantizers[: self.n_codebooks]]

    def out_projections(self) -> list[nn.Module]:
        """The K quantizers' weight-normed 1×1 ``out_proj`` (codebook_dim → latent), as V-AURA's embeddings use."""
        return [q.out_proj for q in self.dac.quantizer.quantizers[: self.n_codebooks]]


def offline_checkpoint(model: nn.Module, kwargs: Mapping[str, Any], n_quantizers: int, **meta: Any) -> dict:
    """The offline stand-in's file content: weights + plain-typed architecture and provenance (weights_only-safe)."""
    return {
        "format": OFFLINE_FORMAT,
        "kwargs": dict(kwargs),
        "n_quantizers": int(n_quantizers),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        **meta,
    }


def read_offline_checkpoint(path: str | Path) -> dict:
    """Read and validate an offline stand-in checkpoint written by the ``codec`` stage."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"offline codec weights not found: {path}. Produce them with `vaura codec --params params.yaml` "
            f"(DVC stage `codec`)."
        )
    blob = read_checkpoint(path, "offline codec stand-in", own_file=True)
    if blob.get("format") != OFFLINE_FORMAT:
        raise WeightsError(f"{path}: not a vaura offline codec checkpoint (expected format {OFFLINE_FORMAT})")
    for key in ("kwargs", "n_quantizers", "state_dict"):
        if key not in blob:
            raise WeightsError(f"{path}: checkpoint lacks '{key}'")
    return dict(blob)


def codec_from_offline_checkpoint(blob: Mapping[str, Any], n_quantizers: int | None = None, source: str = "") -> Codec:
    """Wrap a checkpoint dict from :func:`read_offline_checkpoint` as a frozen :class:`Codec`."""
    model = load_dac_state_dict(blob["state_dict"], blob["kwargs"], source=source or "offline codec checkpoint")
    return Codec(model, int(n_quantizers if n_quantizers is not None else blob["n_quantizers"]))


def offline_codec_path(root: str | Path = ".", data_dir: str = "data") -> Path:
    """Where the ``codec`` stage writes the offline stand-in (``data/codec/codec.pt``)."""
    return Path(root) / data_dir / "codec" / "codec.pt"


def load_codec(cfg: CodecConfig, root: str | Path = ".", data_dir: str = "data") -> Codec:
    """The codec ``params.codec`` selects: pretrained 44.1 kHz DAC (``dac44``) or the offline stand-in.

    ``dac44`` reads ``cfg.weights`` (relative to ``root``) or, when empty, DAC's own cache file; ``offline``
    reads the ``codec`` stage's output under ``root/data_dir``. Missing files raise with what to do.
    """
    if cfg.kind == "dac44":
        path = Path(cfg.weights).expanduser() if cfg.weights else DAC44_CACHE.expanduser()
        if not path.is_absolute():
            path = Path(root) / path
        return Codec(load_dac_file(path), cfg.n_quantizers)
    path = offline_codec_path(root, data_dir)
    return codec_from_offline_checkpoint(read_offline_checkpoint(path), cfg.n_quantizers, source=str(path))
