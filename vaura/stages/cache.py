"""Encode every kept clip into codec tokens + visual features, sharded and resumable (DVC stage `cache`).

Reads  <data>/splits/{train,val,test}.csv, the codec (params `codec`: offline stand-in data/codec/codec.pt or
       pretrained DAC 44 kHz) and the visual encoder (params `visual`: offline stand-in data/avclip/visual.pt
       or Segment-AVCLIP).
Writes <data>/cache/shard-NNNNN.pt  clips, codes (int16 [K, T]), feats (float16 [N, D]) per clip, whole clip
       <data>/cache/index.csv       clip,split,shard,n_frames,n_feats,start_sec,path (video, relative to cache/)
       <data>/cache/meta.json       codec rates/sizes, visual dim and feature rate, window_s (= filter.window_s)
       <data>/cache/rejected.csv    clips that could not be cached, with the reason (the stage continues)

Kill it at any moment and rerun: finished shards (written atomically) are kept, the rest is recomputed. A
shard made from other clips or other encoder weights is recomputed. `--strict` exits 1 if a clip was rejected.
Under DVC the cache folder must be `persist: true` for a rerun to reuse shards.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from vaura.cache import CacheConfig, build_cache, plan_from_splits
from vaura.curation.filtering import SPLITS, FilterConfig, read_split
from vaura.stages import add_common, load
from vaura.weights import weights_sha256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, device="torch device for both encoders (default: params visual.device)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any clip could not be cached")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from vaura import media
    from vaura.codec import CodecConfig, load_codec
    from vaura.visual import VisualConfig, load_visual_encoder

    ctx, (cfg, fcfg, ccfg, vcfg) = load(args, "cache", cache=CacheConfig, filter=FilterConfig, codec=CodecConfig,
                                        visual=VisualConfig)
    device = ctx.device_or(vcfg.device)
    vcfg = dataclasses.replace(vcfg, device=str(device))
    plan = plan_from_splits({s: read_split(ctx.data / "splits" / f"{s}.csv") for s in SPLITS})
    codec = load_codec(ccfg, ctx.root, ctx.paths.data)
    visual = load_visual_encoder(vcfg, ctx.root, ctx.paths.data)
    codec.to(device)
    if cfg.torch_threads > 0:
        # CPU intra-op threads of the encoders; oversubscribed cores (decode threads, other jobs) make
        # multi-threaded convolutions far slower than one thread.
        torch.set_num_threads(cfg.torch_threads)
    with ctx.tracked({"cache": vars(cfg)}) as mlflow:
        summary = build_cache(
            plan,
            ctx.data / "cache",
            codec,
            visual,
            read_audio=lambda p: media.read_audio(p, codec.sample_rate),
            read_frames=lambda p: media.read_video(p, fps=25.0, short_side=vcfg.short_side, crop=vcfg.crop),
            shard_size=cfg.shard_size,
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            window_s=fcfg.window_s,
            # shards computed with other encoder weights must not be reused
            fingerprint=weights_sha256(codec.state_dict(), visual.state_dict()) + json.dumps(
                [vcfg.short_side, vcfg.crop, codec.sample_rate, fcfg.window_s]),
            device=device,
            progress=not args.no_progress,
        )
        if mlflow:
            mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int)})
    print(f"cached {summary['clips']} clips {summary['by_split']} in {summary['shards']} shards "
          f"({summary['shards_reused']} reused), {summary['rejected']} rejected")
    return 1 if args.strict and summary["rejected"] else 0
