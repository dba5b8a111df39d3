"""Schema of the ``train`` section of ``params.yaml`` and the typed bundle of sections the trainer reads.

:class:`TrainSetup` is built once from the params file by the caller (the DVC stage or the torchrun entry) and
handed down whole, so no part of the trainer parses ``params.yaml`` again. :class:`TrainError` lives here, on the
floor below every other ``vaura.train`` module, so that they can all raise it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from vaura.config import PathsConfig, bounded, load_section, load_yaml

if TYPE_CHECKING:  # the real imports load torch and DAC; the schema module stays light for `vaura profile`
    from vaura.codec.config import CodecConfig
    from vaura.model.config import GenerationConfig, ModelConfig
    from vaura.tracking import TrackingConfig


class TrainError(RuntimeError):
    """A training setup that cannot work (too little data, bad resume target, ...)."""


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging of the V-AURA decoder.

    Reference values (docs/PAPER.md "Training"): AdamW lr 1.08e-4, betas (0.9, 0.95), weight decay 1.08e-5 on
    ≥2-D params, cosine schedule with 1000 warm-up steps over 200k with min ratio 0.1, batch 12 per GPU,
    gradient clipping by value 1.0. ``params.yaml`` carries CPU-sized offline defaults.
    """

    lr: float = bounded(1.08e-4, gt=0)
    betas: list[float] = bounded([0.9, 0.95], ge=0, lt=1)
    weight_decay: float = bounded(1.08e-5, ge=0)
    warmup_steps: int = bounded(1000, ge=0)
    total_steps: int = bounded(200_000, ge=1)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)
    batch_size: int = bounded(12, ge=1)
    grad_accum: int = bounded(1, ge=1)
    clip_mode: Literal["value", "norm"] = "value"
    clip: float = bounded(1.0, gt=0)
    eval_every: int = bounded(1000, ge=0)
    ckpt_every: int = bounded(1000, ge=1)
    n_val_batches: int = bounded(8, ge=1)
    # read the step's loss / grad norm back from the device every N steps (one sync for N steps; every step is
    # still logged); the wall-clock budget is checked at the same points
    log_every: int = bounded(1, ge=1)
    log_audio_every: int = bounded(0, ge=0)
    n_log_clips: int = bounded(2, ge=0)
    compile: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = bounded(0, ge=0)
    seed: int = bounded(0, ge=0)
    max_minutes: float = bounded(0.0, ge=0)
    nproc: int = bounded(1, ge=1)
    init_from_codec: bool = True


@dataclass(frozen=True)
class TrainSetup:
    """Every params section training reads, parsed once, and where it runs: ``root`` is the folder params paths are
    relative to, ``data_dir`` = root / ``paths.data``; ``params`` is the file as read, only to be logged; ``track``
    off means no MLflow run."""

    train: TrainConfig
    model: ModelConfig
    generation: GenerationConfig
    codec: CodecConfig
    tracking: TrackingConfig
    params: Mapping[str, Any]
    params_file: Path
    root: Path
    data_dir: Path
    track: bool = True


def load_setup(params_file: str | Path) -> TrainSetup:
    """Read ``params_file`` once into a :class:`TrainSetup`, paths relative to its folder (as ``vaura train`` does
    by default); for library callers and tests."""
    from vaura.codec.config import CodecConfig
    from vaura.model.config import GenerationConfig, ModelConfig
    from vaura.tracking import TrackingConfig

    params = load_yaml(params_file)
    root = Path(params_file).parent
    return TrainSetup(
        train=load_section(TrainConfig, "train", params),
        model=load_section(ModelConfig, "model", params),
        generation=load_section(GenerationConfig, "generation", params),
        codec=load_section(CodecConfig, "codec", params),
        tracking=load_section(TrackingConfig, "tracking", params),
        params=params,
        params_file=Path(params_file),
        root=root,
        data_dir=root / load_section(PathsConfig, "paths", params).data,
    )
