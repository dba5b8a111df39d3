"""Schema of the ``codec`` section of ``params.yaml`` (owned by :mod:`vaura.codec`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vaura.config import bounded


@dataclass
class TinyDACConfig:
    """Architecture of the offline stand-in: the same ``dac.DAC`` class, CPU-sized."""

    sample_rate: int = bounded(16000, ge=1)
    encoder_dim: int = bounded(16, ge=1)
    encoder_rates: list[int] = bounded([2, 4, 4, 8], ge=1)
    decoder_dim: int = bounded(96, ge=1)
    decoder_rates: list[int] = bounded([8, 4, 4, 2], ge=1)
    n_codebooks: int = bounded(4, ge=1)
    codebook_size: int = bounded(256, ge=1)
    codebook_dim: int = bounded(8, ge=1)

    def dac_kwargs(self) -> dict:
        """Keyword arguments for ``dac.DAC`` (plain types: they are stored inside the checkpoint)."""
        return {
            "encoder_dim": self.encoder_dim,
            "encoder_rates": list(self.encoder_rates),
            "decoder_dim": self.decoder_dim,
            "decoder_rates": list(self.decoder_rates),
            "n_codebooks": self.n_codebooks,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "sample_rate": self.sample_rate,
        }


@dataclass
class CodecTrainConfig:
    """How the offline stand-in gets its weights: shipped file (fast demo) or trained in the stage."""

    source: Literal["shipped", "train"] = "shipped"
    shipped_path: str = "assets/codec_offline.pt"
    steps: int = bounded(1000, ge=0)
    max_minutes: float = bounded(90.0, ge=0)
    batch_size: int = bounded(8, ge=1)
    segment_s: float = bounded(1.0, gt=0)
    lr: float = bounded(1e-3, gt=0)
    lr_final_ratio: float = bounded(0.1, ge=0, le=1)
    mel_weight: float = bounded(15.0, ge=0)
    l1_weight: float = bounded(1.0, ge=0)
    commitment_weight: float = bounded(0.25, ge=0)
    codebook_weight: float = bounded(1.0, ge=0)
    max_train_clips: int = bounded(0, ge=0)
    device: str = "auto"


@dataclass
class CodecGateConfig:
    """Quality gate: onset event F1 of reconstructed validation audio vs the original's."""

    tolerance_s: float = bounded(0.1, gt=0)
    max_gap: float = bounded(0.05, ge=-1, le=1)
    max_clips: int = bounded(64, ge=0)


@dataclass
class CodecConfig:
    """``params.codec``: which codec tokenises audio for V-AURA."""

    kind: Literal["dac44", "offline"] = "offline"
    weights: str = ""
    n_quantizers: int = bounded(4, ge=1)
    offline: TinyDACConfig = field(default_factory=TinyDACConfig)
    train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    gate: CodecGateConfig = field(default_factory=CodecGateConfig)
