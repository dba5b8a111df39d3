"""Offline stand-in for Segment-AVCLIP: contrastively pretrain the tiny Motionformer, then freeze it.

Reads  <data>/clips/manifest.csv (TRAIN clips to train on, VAL clips to measure on) and, when present,
       <data>/raw/events.csv (synthetic ground truth, for the timing/class probes).
Writes <data>/avclip/visual.pt     the frozen encoder (weights_only-loadable: architecture + state_dict +
                                   provenance), loaded by `cache` through params visual (kind: offline)
       <data>/avclip/metrics.json  VAL within-clip segment retrieval (audio segments shifted by whole 80 ms
                                   tokens are the candidates), per-token linear probes "impact in this token?"
                                   (average precision) and "which object?" (accuracy), next to the same probes
                                   on a randomly initialised encoder, and timings
       <data>/avclip/rejected.csv  clips that could not be decoded (clip, reason)

avclip.source chooses how the weights are obtained:
  train    train avclip.steps steps here on the first avclip.max_train_clips TRAIN clips (about a minute of CPU)
  shipped  use avclip.shipped (a file this stage wrote with --ship), after checking that it was trained with
           the current params `visual` architecture and `avclip` training knobs; like the released
           Segment-AVCLIP, it was pretrained on other clips (the project's synthetic benchmark at ship time)
In both cases the metrics are measured here, on this pipeline's VAL clips.
The architecture comes from params `visual` (dim, depth, heads, crop, ...); training knobs from `avclip`.
With params visual.kind: segment_avclip the stage has nothing to train and says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaura.config import load_section, load_yaml, to_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--train", action="store_true", help="train even when avclip.source is 'shipped'")
    parser.add_argument("--ship", action="store_true",
                        help="train, and also write the result to avclip.shipped (to commit as the shipped stand-in)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any clip could not be decoded")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from vaura.visual.avclip import run_stage
    from vaura.visual.config import AVClipConfig, VisualConfig

    params = load_yaml(args.params)
    vcfg = load_section(VisualConfig, "visual", params)
    cfg = load_section(AVClipConfig, "avclip", params)
    root = Path(args.params).resolve().parent
    if vcfg.kind != "offline":
        print(f"avclip: visual.kind is {vcfg.kind!r}: the released encoder is used, nothing to train", file=sys.stderr)
        return 0

    def go(log=None) -> dict:
        return run_stage(params, vcfg, cfg, root, progress=not args.no_progress, log=log, force_train=args.train,
                         ship=args.ship)

    if args.no_track:
        metrics = go()
    else:
        import mlflow

        from vaura.tracking import stage_run

        logged = {"visual": to_dict(vcfg), "avclip": to_dict(cfg), "seed": params.get("seed")}
        with stage_run("avclip", logged, params_file=args.params):
            metrics = go(lambda step, m: mlflow.log_metrics(m, step=step))
            flat = {f"avclip/{g}/{k}": float(v) for g in ("retrieval", "probe", "probe_random_init")
                    if isinstance(metrics.get(g), dict) for k, v in metrics[g].items()}
            mlflow.log_metrics(flat)
            mlflow.set_tag("avclip.source", metrics["source"])
            mlflow.log_artifact(str(root / params.get("paths", {}).get("data", "data") / "avclip" / "metrics.json"))
    r = metrics["retrieval"]
    line = (f"avclip ({metrics['source']}): {metrics['train_clips']} train clips, {metrics['steps_done']} steps in "
            f"{metrics['train_seconds']} s; VAL within-clip retrieval top-1 {r['within_clip_top1']:.3f} "
            f"(chance {r['chance_top1']:.3f})")
    if isinstance(metrics.get("probe"), dict):
        p, p0 = metrics["probe"], metrics["probe_random_init"]
        line += (f"; impact-token AP {p['event_ap']:.3f} (random-init encoder {p0['event_ap']:.3f}, "
                 f"chance {p['event_chance_ap']:.3f})")
    print(line, file=sys.stderr)
    return 1 if args.strict and metrics["rejected"] else 0
