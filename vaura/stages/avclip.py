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
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vaura.config import to_dict
from vaura.stages import Context, add_common, load

if TYPE_CHECKING:
    from vaura.visual.config import AVClipConfig, VisualConfig

# Wall times (seconds): facts about the machine, logged to MLflow, kept out of the DVC output (metrics.json)
TIMINGS = ("decode_seconds", "train_seconds", "stage_seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, device="where to train and measure the encoder (default: params visual.device)")
    parser.add_argument("--train", action="store_true", help="train even when avclip.source is 'shipped'")
    parser.add_argument("--ship", action="store_true",
                        help="train, and also write the result to avclip.shipped (to commit as the shipped stand-in)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any clip could not be decoded")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from vaura.visual.config import AVClipConfig, VisualConfig

    ctx, (vcfg, cfg) = load(args, "avclip", visual=VisualConfig, avclip=AVClipConfig)
    if vcfg.kind != "offline":
        print(f"avclip: visual.kind is {vcfg.kind!r}: the released encoder is used, nothing to train", file=sys.stderr)
        return 0
    vcfg = dataclasses.replace(vcfg, device=str(ctx.device_or(vcfg.device)))
    with ctx.tracked({"visual": to_dict(vcfg), "avclip": to_dict(cfg), "seed": ctx.seed}) as mlflow:
        metrics = run_stage(ctx, vcfg, cfg, progress=not args.no_progress, force_train=args.train, ship=args.ship,
                            log=(lambda step, m: mlflow.log_metrics(m, step=step)) if mlflow else None)
        if mlflow:
            flat = {f"avclip/{g}/{k}": float(v) for g in ("retrieval", "probe", "probe_random_init")
                    if isinstance(metrics.get(g), dict) for k, v in metrics[g].items()}
            mlflow.log_metrics(flat | {f"avclip/{k}": float(metrics[k]) for k in TIMINGS if k in metrics})
            mlflow.set_tag("avclip.source", metrics["source"])
            mlflow.log_artifact(str(ctx.data / "avclip" / "metrics.json"))
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


def run_stage(
    ctx: Context,
    vcfg: VisualConfig,
    cfg: AVClipConfig,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
    force_train: bool = False,
    ship: bool = False,
) -> dict[str, Any]:
    """Get the stand-in (train on TRAIN clips, or the shipped file), measure it on VAL clips, write
    ``<data>/avclip/``. ``ship`` trains and also writes the file ``avclip.shipped`` names."""
    import pandas as pd
    import torch

    from vaura.data.manifest import read_manifest
    from vaura.io import atomic_torch_save, atomic_write_csv, write_output_metrics
    from vaura.visual.encoder import VisualEncoder, size_from_config, standin_path, standin_payload
    from vaura.visual.motionformer import MotionFormer
    from vaura.visual.probes import probe_metrics, retrieval_metrics
    from vaura.visual.standin import (
        AVClipDataError, ClipArrays, load_clips, load_shipped, train_avclip, training_knobs,
    )

    t_start = time.monotonic()
    seed = ctx.seed
    data_dir = ctx.data
    manifest_path = data_dir / "clips" / "manifest.csv"
    manifest = read_manifest(manifest_path).sort_values("clip")
    train_now = force_train or ship or cfg.source == "train"
    n_train = cfg.max_train_clips if train_now else cfg.probe_clips
    tr = manifest[manifest["split"] == "train"].head(n_train)
    va = manifest[manifest["split"] == "val"].head(cfg.max_val_clips)
    if tr.empty or va.empty:
        raise AVClipDataError(f"{manifest_path}: need train and val clips, got {len(tr)} train, {len(va)} val")
    train, rej_tr = load_clips([Path(p) for p in tr["path"]], list(tr["clip"]), vcfg, cfg, progress)
    val, rej_va = load_clips([Path(p) for p in va["path"]], list(va["clip"]), vcfg, cfg, progress)
    t_decode = time.monotonic() - t_start

    if train_now:
        model, facts = train_avclip(train, vcfg, cfg, seed=seed, progress=progress, log=log)
        # the manifest as params name it (paths.data), not this checkout's absolute path: visual.pt is the same
        # file in every clone
        facts |= {"train_clips": len(train.clips), "data_seed": seed,
                  "data_manifest": f"{ctx.paths.data}/clips/manifest.csv"}
    else:
        model, facts = load_shipped(ctx.path(cfg.shipped), vcfg, cfg)
    mel_norm = (facts["mel_mean"], facts["mel_std"])
    metrics: dict[str, Any] = {
        "source": "trained" if train_now else "shipped", "val_clips": len(val.clips),
        "rejected": len(rej_tr) + len(rej_va), "decode_seconds": round(t_decode, 1),
        **{k: v for k, v in facts.items() if not k.startswith(("mel_", "data_manifest"))},
        "retrieval": retrieval_metrics(model, val, vcfg, mel_norm),
    }
    events_path = data_dir / "raw" / "events.csv"
    if events_path.is_file():
        events = pd.read_csv(events_path, dtype={"clip": str, "class": str})
        fit = ClipArrays(train.clips[: cfg.probe_clips], train.frames[: cfg.probe_clips], train.mels[: cfg.probe_clips])
        device = torch.device(vcfg.device)
        trained = VisualEncoder(model.visual, vcfg.short_side, vcfg.batch_size, device)
        torch.manual_seed(seed)
        untrained = VisualEncoder(MotionFormer(size_from_config(vcfg)), vcfg.short_side, vcfg.batch_size, device)
        metrics["probe"] = probe_metrics(trained, fit, val, events)
        metrics["probe_random_init"] = probe_metrics(untrained, fit, val, events)
    else:
        metrics["probe"] = f"skipped: no ground truth at {events_path} (only the synthetic benchmark has it)"
    metrics["stage_seconds"] = round(time.monotonic() - t_start, 1)

    out = data_dir / "avclip"
    towers = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = standin_payload(model.visual, {"avclip": dict(training_knobs(cfg)), "seed": seed, "towers": towers,
                                             "train_facts": facts})
    # the training time is a fact about the machine (MLflow has it): not in the pipeline's weights file nor in
    # metrics.json, so the same params and data give the same visual.pt and metrics.json bytes everywhere
    reproducible = {**payload, "train_facts": {k: v for k, v in facts.items() if k != "train_seconds"}}
    atomic_torch_save(standin_path(ctx.root, ctx.paths.data), reproducible)
    if ship:
        atomic_torch_save(ctx.path(cfg.shipped), payload)
    write_output_metrics(out / "metrics.json", metrics, timings=TIMINGS)
    rejected = pd.DataFrame(rej_tr + rej_va, columns=["clip", "reason"])
    atomic_write_csv(out / "rejected.csv", rejected)
    return metrics
