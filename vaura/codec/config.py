"""Schema of the ``codec`` section of ``params.yaml`` (owned by :mod:`vaura.codec`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TinyDACConfig:
    """Architecture of the offline stand-in: the same ``dac.DAC`` class, CPU-sized."""

    sample_rate: int = 16000
    encoder_dim: int = 16
    encoder_rates: list[int] = field(default_factory=lambda: [2, 4, 4, 8])
    decoder_dim: int = 96
    decoder_rates: list[int] = field(default_factory=lambda: [8, 4, 4, 2])
    n_codebooks: int = 4
    codebook_size: int = 256
    codebook_dim: int = 8

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
    steps: int = 1000
    max_minutes: float = 90.0
    batch_size: int = 8
    segment_s: float = 1.0
    lr: float = 1e-3
    lr_final_ratio: float = 0.1
    mel_weight: float = 15.0
    l1_weight: float = 1.0
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    max_train_clips: int = 0
    device: str = "auto"


@dataclass
class CodecGateConfig:
    """Quality gate: onset event F1 of reconstructed validation audio vs the original's."""

    tolerance_s: float = 0.1
    max_gap: float = 0.05
    max_clips: int = 64


@dataclass
class CodecConfig:
    """``params.codec``: which codec tokenises audio for V-AURA."""

    kind: Literal["dac44", "offline"] = "offline"
    weights: str = ""
    n_quantizers: int = 4
    offline: TinyDACConfig = field(default_factory=TinyDACConfig)
    train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    gate: CodecGateConfig = field(default_factory=CodecGateConfig)
