"""Re-encode videos to the paper format (DVC stage `preprocess`): 25 fps, short side 256, H.264, AAC 44.1 kHz mono.

Reads  every file in the input folder (default <data>/raw); its manifest.csv, if any, supplies split/label
       (matched by file stem; without one, clips are split=train with no label).
Writes OUT/<stem>.mp4 per good input, OUT/manifest.csv (clip,path,split,label,duration_s,fps,sample_rate,
       width,height,source), OUT/rejected.csv (path,reason: one row per bad input) and OUT/metrics.json.

A bad file (corrupt, truncated, not media, silent, no picture, zero-sized...) never stops the stage; inputs are
only read. Re-running skips clips whose output is newer than their input. Exit code: 0 when at least one clip
succeeded; with --strict, 1 as soon as any input was rejected.

  vaura preprocess --params params.yaml            # pipeline: folders and format from params.yaml
  vaura preprocess --input DIR --output DIR        # any folder, paper format
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from vaura.config import to_dict
from vaura.stages import add_common, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, params_help="params file: folders under paths.data and the `preprocess` section (tracked in "
                                   "MLflow); without it, --input and --output in the paper format, untracked")
    parser.add_argument("--input", type=Path, default=None, help="folder of input videos (overrides params)")
    parser.add_argument("--output", type=Path, default=None, help="folder for the re-encoded clips (overrides params)")
    parser.add_argument("--strict", action="store_true", default=None, help="exit 1 if any input was rejected")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (overrides params)")


def run(args: argparse.Namespace) -> int:
    from vaura.data.preprocess import PreprocessConfig, preprocess_folder
    from vaura.io import write_output_metrics

    if args.params is None:
        if args.input is None or args.output is None:
            print("vaura preprocess: give --input and --output, or --params for the pipeline folders", file=sys.stderr)
            return 2
        ctx, cfg = None, PreprocessConfig()  # the paper format (the dataclass defaults)
        input_dir, output_dir = args.input, args.output
    else:
        ctx, (cfg,) = load(args, "preprocess", preprocess=PreprocessConfig)
        input_dir = args.input if args.input is not None else ctx.data / cfg.input
        output_dir = args.output if args.output is not None else ctx.data / cfg.output
    if args.strict is not None:
        cfg.strict = True
    if args.workers is not None:
        cfg.workers = args.workers

    with ctx.tracked({"preprocess": to_dict(cfg)}) if ctx else contextlib.nullcontext() as mlflow:
        t0 = time.perf_counter()
        manifest, rejected = preprocess_folder(input_dir, output_dir, cfg)
        metrics = {"n_clips": len(manifest), "n_rejected": len(rejected), "wall_s": round(time.perf_counter() - t0, 2),
                   "total_duration_s": float(manifest["duration_s"].sum()) if len(manifest) else 0.0}
        write_output_metrics(output_dir / "metrics.json", metrics, timings=["wall_s"])
        if mlflow:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.log_artifact(str(output_dir / "rejected.csv"))
    for path, reason in zip(rejected["path"], rejected["reason"]):
        print(f"rejected {path}: {reason}", file=sys.stderr)
    print(f"preprocess: {len(manifest)} clip(s) in {output_dir}, {len(rejected)} rejected ({metrics['wall_s']:.1f} s)")
    if len(manifest) == 0:
        print("vaura preprocess: no input could be used", file=sys.stderr)
        return 1
    return 1 if cfg.strict and len(rejected) else 0
