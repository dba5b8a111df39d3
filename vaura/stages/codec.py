"""Offline codec stand-in: get a tiny DAC's weights (shipped or trained) and measure its onset quality gate.

Reads  <data>/clips/manifest.csv (TRAIN clips to train on, VAL clips for the gate), <data>/raw/events.csv and
       <data>/raw/relevance.csv (ground truth of the synthetic benchmark).
Writes <data>/codec/codec.pt (weights-only loadable: state_dict + dac kwargs + provenance) and
       <data>/codec/metrics.json (codec event F1 on reconstructed VAL audio next to the F1 on the original).

codec.train.source chooses how the weights are obtained:
  shipped  verify that codec.train.shipped_path was trained with the current params and data, then use it
           (seconds; the default, so `make demo` fits its CPU budget)
  train    train codec.train.steps steps here, on codec.train.device (auto: CUDA when present). The default
           recipe takes ~85 min on 2 CPU cores and ~2.5 min on one H200
The shipped file is produced by this stage:  vaura codec --params params.yaml --train --ship
With codec.kind: dac44 the stage trains nothing; it measures the same gate for the pretrained 44.1 kHz DAC.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from vaura.config import ConfigError, to_dict
from vaura.stages import Context, add_common, load

if TYPE_CHECKING:
    import numpy as np

    from vaura.codec.config import CodecConfig

EXAMPLES = 2  # gate clips logged to MLflow as original/reconstructed audio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, device="where to train the stand-in (default: params codec.train.device)")
    parser.add_argument("--train", action="store_true", help="train even when codec.train.source is 'shipped'")
    parser.add_argument(
        "--ship", action="store_true", help="train, and also write the weights to codec.train.shipped_path"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when the quality gate fails")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _mlflow_callbacks(mlflow: Any) -> tuple[Callable[[int, dict], None], Callable[..., None]]:
    """The training curve and the first EXAMPLES gate clips (WAV + spectrogram pairs: hear what the codec does
    to impacts) into the stage's run."""
    from vaura.tracking_media import log_audio, log_spectrogram

    def log_train(step: int, entry: dict) -> None:
        mlflow.log_metrics({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=step)

    heard: list[str] = []

    def log_example(clip: str, original, reconstructed, sr: int) -> None:
        if len(heard) >= EXAMPLES:
            return
        heard.append(clip)
        for name, audio in (("original", original), ("reconstructed", reconstructed)):
            log_audio(audio, sr, f"examples/{clip}/{name}.wav")
            log_spectrogram(audio, sr, f"examples/{clip}/{name}.png", title=f"{clip} {name}")

    return log_train, log_example


def run(args: argparse.Namespace) -> int:
    from vaura.codec.config import CodecConfig

    ctx, (cfg,) = load(args, "codec", codec=CodecConfig)
    if ctx.device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=ctx.device))
    with ctx.tracked({"codec": to_dict(cfg), "seed": ctx.seed, "paths": to_dict(ctx.paths)}) as mlflow:
        log_train, log_example = _mlflow_callbacks(mlflow) if mlflow else (None, None)
        metrics = run_stage(ctx, cfg, force_train=args.train, ship=args.ship, progress=not args.no_progress,
                            on_train_log=log_train, on_gate_clip=log_example)
        if mlflow:
            mlflow.log_artifact(str(ctx.data / "codec" / "metrics.json"))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.set_tag("codec.source", metrics.get("source", ""))
    verdict = "PASS" if metrics["gate_pass"] else "FAIL"
    print(
        f"codec ({metrics['source']}): event F1 reconstructed {metrics['f1_reconstructed']:.3f} vs original "
        f"{metrics['f1_original']:.3f} (gap {metrics['f1_gap']:.3f}, max {metrics['gate_max_gap']}) -> gate {verdict}",
        file=sys.stderr,
    )
    return 1 if args.strict and not metrics["gate_pass"] else 0


def run_stage(
    ctx: Context,
    cfg: CodecConfig,
    *,
    force_train: bool = False,
    ship: bool = False,
    progress: bool = True,
    on_train_log: Callable[[int, dict[str, float]], None] | None = None,
    on_gate_clip: Callable[[str, np.ndarray, np.ndarray, int], None] | None = None,
) -> dict[str, Any]:
    """The stage body; returns the metrics also written to ``<data>/codec/metrics.json``."""
    from vaura.codec.codec import (
        codec_from_offline_checkpoint, load_codec, offline_checkpoint, offline_codec_path, read_offline_checkpoint,
    )
    from vaura.codec.standin import (
        RETRAIN_HINT, CodecDataError, data_fingerprint, provenance, provenance_mismatches, quality_gate,
        read_clip_audio, read_inputs, train_offline_codec,
    )
    from vaura.io import atomic_torch_save, write_output_metrics
    from vaura.weights import WeightsError

    t0 = time.monotonic()
    if cfg.kind == "offline" and not 1 <= cfg.n_quantizers <= cfg.offline.n_codebooks:
        raise ConfigError(f"params.codec.n_quantizers={cfg.n_quantizers} must be in [1, codec.offline.n_codebooks="
                          f"{cfg.offline.n_codebooks}] (checked before any training)")
    inputs = read_inputs(ctx.data, cfg, ctx.seed)
    metrics: dict[str, Any] = {"kind": cfg.kind}

    if cfg.kind == "dac44":
        if force_train or ship:
            raise CodecDataError("--train/--ship apply to the offline stand-in only (codec.kind: offline)")
        codec = load_codec(cfg, ctx.root)
        metrics["source"] = "pretrained"
    else:
        expected = provenance(cfg, ctx.seed, data_fingerprint(inputs.train, inputs.events_table))
        shipped = ctx.path(cfg.train.shipped_path)
        if force_train or ship or cfg.train.source == "train":
            if inputs.train.empty:
                raise CodecDataError(f"{ctx.data / 'clips' / 'manifest.csv'}: no TRAIN clips to train the codec on")
            audio = read_clip_audio(list(inputs.train["path"]), cfg.offline.sample_rate, "codec train audio", progress)
            result = train_offline_codec(audio, cfg, ctx.seed, progress=progress, on_log=on_train_log)
            if result.steps < cfg.train.steps:  # how far a time cap gets depends on the machine's load
                raise ConfigError(f"params.codec.train.max_minutes={cfg.train.max_minutes:g} stopped training at step "
                                  f"{result.steps} of codec.train.steps={cfg.train.steps}: a time-capped codec is no "
                                  "reproduction of its params and is not saved; raise codec.train.max_minutes")
            blob = offline_checkpoint(
                result.model,
                cfg.offline.dac_kwargs(),
                cfg.n_quantizers,
                provenance=expected,
                steps_done=result.steps,
                train_wall_s=result.wall_s,
                history=result.history,
                train_device=result.device,
            )
            if ship:
                atomic_torch_save(shipped, blob)
            metrics["source"] = "trained"
        else:
            try:
                blob = read_offline_checkpoint(shipped)
            except WeightsError as exc:
                raise WeightsError(f"{exc}; {RETRAIN_HINT}") from exc
            problems = provenance_mismatches(blob, expected)
            if problems:
                raise WeightsError(
                    f"{shipped}: shipped codec weights were not trained with the current params/data: "
                    + "; ".join(problems) + f". {RETRAIN_HINT}"
                )
            blob = {**blob, "n_quantizers": cfg.n_quantizers}
            metrics["source"] = "shipped"
        metrics["train_steps"] = int(blob["steps_done"])
        metrics["train_wall_s"] = float(blob["train_wall_s"])
        metrics["train_device"] = str(blob.get("train_device", "cpu"))
        if blob.get("history"):
            metrics.update({f"train_final_{k}": v for k, v in blob["history"][-1].items() if k != "step"})
        codec_path = offline_codec_path(ctx.root, ctx.paths.data)
        # the training wall time is a fact about the machine, not the weights: in MLflow only, so the same params
        # and data give the same codec.pt and metrics.json bytes (and DVC hashes) everywhere
        atomic_torch_save(codec_path, {k: v for k, v in blob.items() if k != "train_wall_s"})
        codec = codec_from_offline_checkpoint(blob, cfg.n_quantizers, source=str(codec_path))
        metrics["n_train_clips"] = len(inputs.train)

    metrics.update(_codec_facts(codec))
    val_audio = read_clip_audio(list(inputs.val["path"]), codec.sample_rate, "codec gate audio", progress)
    clips = list(zip(inputs.val["clip"].astype(str), val_audio))
    metrics.update(quality_gate(codec, clips, inputs.events, cfg.gate, progress=progress, on_clip=on_gate_clip))
    metrics["stage_wall_s"] = time.monotonic() - t0
    write_output_metrics(ctx.data / "codec" / "metrics.json", metrics, timings=["train_wall_s", "stage_wall_s"])
    return metrics


def _codec_facts(codec: Any) -> dict[str, Any]:
    return {
        "sample_rate": codec.sample_rate,
        "hop_length": codec.hop_length,
        "frame_rate": codec.frame_rate,
        "n_codebooks": codec.n_codebooks,
        "codebook_size": codec.codebook_size,
        "codebook_dim": codec.codebook_dim,
        "n_params": int(sum(p.numel() for p in codec.parameters())),
    }
