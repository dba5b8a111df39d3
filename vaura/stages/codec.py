"""Offline codec stand-in: get a tiny DAC's weights (shipped or trained) and measure its onset quality gate.

Reads  <data>/clips/manifest.csv (TRAIN clips to train on, VAL clips for the gate), <data>/raw/events.csv and
       <data>/raw/relevance.csv (ground truth of the synthetic benchmark).
Writes <data>/codec/codec.pt (weights-only loadable: state_dict + dac kwargs + provenance) and
       <data>/codec/metrics.json (codec event F1 on reconstructed VAL audio next to the F1 on the original).

codec.train.source chooses how the weights are obtained:
  shipped  verify that codec.train.shipped_path was trained with the current params and data, then use it
           (seconds; the default, so `make demo` fits its CPU budget)
  train    train codec.train.steps steps here (minutes)
The shipped file is produced by this stage:  vaura codec --params params.yaml --train --ship
With codec.kind: dac44 the stage trains nothing; it measures the same gate for the pretrained 44.1 kHz DAC.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaura.config import load_section, load_yaml



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

    def go(on_log=None) -> dict:
        return run_stage(
            params, cfg, root=root, force_train=args.train, ship=args.ship, progress=not args.no_progress,
            on_train_log=on_log,
        )

    if args.no_track:
        metrics = go()
    else:
        import mlflow

        from vaura.tracking import stage_run

        with stage_run("codec", params, params_file=args.params):
            metrics = go(lambda step, entry: mlflow.log_metrics({f"train/{k}": v for k, v in entry.items()
                                                                 if k != "step"}, step=step))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.set_tag("codec.source", metrics.get("source", ""))
    verdict = "PASS" if metrics["gate_pass"] else "FAIL"
    print(
        f"codec ({metrics['source']}): event F1 reconstructed {metrics['f1_reconstructed']:.3f} vs original "
        f"{metrics['f1_original']:.3f} (gap {metrics['f1_gap']:.3f}, max {metrics['gate_max_gap']}) -> gate {verdict}",
        file=sys.stderr,
    )
    return 1 if args.strict and not metrics["gate_pass"] else 0
