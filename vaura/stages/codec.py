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
import sys
from pathlib import Path

from vaura.config import load_section, load_yaml, to_dict

EXAMPLES = 2  # gate clips logged to MLflow as original/reconstructed audio



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--train", action="store_true", help="train even when codec.train.source is 'shipped'")
    parser.add_argument(
        "--ship", action="store_true", help="train, and also write the weights to codec.train.shipped_path"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when the quality gate fails")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from vaura.codec.config import CodecConfig
    from vaura.codec.offline import run_stage

    params = load_yaml(args.params)
    cfg = load_section(CodecConfig, "codec", params)
    root = Path(args.params).resolve().parent

    def go(on_log=None, on_clip=None) -> dict:
        return run_stage(
            params, cfg, root=root, force_train=args.train, ship=args.ship, progress=not args.no_progress,
            on_train_log=on_log, on_gate_clip=on_clip,
        )

    if args.no_track:
        metrics = go()
    else:
        import mlflow

        from vaura.tracking import log_audio, log_spectrogram, stage_run

        def log_train(step: int, entry: dict) -> None:
            mlflow.log_metrics({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=step)

        heard: list[str] = []

        def log_example(clip: str, original, reconstructed, sr: int) -> None:
            """The first EXAMPLES gate clips as WAV + spectrogram pairs: hear what the codec does to impacts."""
            if len(heard) >= EXAMPLES:
                return
            heard.append(clip)
            for name, audio in (("original", original), ("reconstructed", reconstructed)):
                log_audio(audio, sr, f"examples/{clip}/{name}.wav")
                log_spectrogram(audio, sr, f"examples/{clip}/{name}.png", title=f"{clip} {name}")

        logged = {"codec": to_dict(cfg), "seed": params.get("seed"), "paths": params.get("paths")}
        with stage_run("codec", logged, params_file=args.params):
            metrics = go(log_train, log_example)
            mlflow.log_artifact(str(root / params.get("paths", {}).get("data", "data") / "codec" / "metrics.json"))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.set_tag("codec.source", metrics.get("source", ""))
    verdict = "PASS" if metrics["gate_pass"] else "FAIL"
    print(
        f"codec ({metrics['source']}): event F1 reconstructed {metrics['f1_reconstructed']:.3f} vs original "
        f"{metrics['f1_original']:.3f} (gap {metrics['f1_gap']:.3f}, max {metrics['gate_max_gap']}) -> gate {verdict}",
        file=sys.stderr,
    )
    return 1 if args.strict and not metrics["gate_pass"] else 0
