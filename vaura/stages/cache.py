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
import sys
from pathlib import Path

import torch

from vaura.cache import CacheConfig, CacheError, build_cache, plan_from_splits
from vaura.config import ConfigError, PathsConfig, load_section, load_yaml
from vaura.curation.filtering import SPLITS, FilterConfig, read_split
from vaura.tables import TableError
from vaura.weights import weights_sha256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="torch device for both encoders, e.g. cpu, cuda, auto (default: params visual.device)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any clip could not be cached")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from vaura import media
    from vaura.codec import CodecConfig, load_codec
    from vaura.tracking import stage_run
    from vaura.visual import VisualConfig, load_visual_encoder
    from vaura.devices import resolve_device

    try:
        params = load_yaml(args.params)
        cfg: CacheConfig = load_section(CacheConfig, "cache", params)
        fcfg: FilterConfig = load_section(FilterConfig, "filter", params)
        ccfg: CodecConfig = load_section(CodecConfig, "codec", params)
        vcfg: VisualConfig = load_section(VisualConfig, "visual", params)
        paths: PathsConfig = load_section(PathsConfig, "paths", params)
    except ConfigError as exc:
        print(f"vaura cache: {exc}", file=sys.stderr)
        return 1
    if args.device is not None:
        vcfg = dataclasses.replace(vcfg, device=args.device)
    data = Path(paths.data)
    try:
        plan = plan_from_splits({s: read_split(data / "splits" / f"{s}.csv") for s in SPLITS})
        codec = load_codec(ccfg, ".", paths.data)
        visual = load_visual_encoder(vcfg, ".")
    except (TableError, CacheError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"vaura cache: {exc}", file=sys.stderr)
        return 1
    device = resolve_device(vcfg.device)
    codec.to(device)
    if cfg.torch_threads > 0:
        # CPU intra-op threads of the encoders; oversubscribed cores (decode threads, other jobs) make
        # multi-threaded convolutions far slower than one thread.
        torch.set_num_threads(cfg.torch_threads)
    with stage_run("cache", {"cache": vars(cfg)}, params_file=args.params):
        import mlflow

        summary = build_cache(
            plan,
            data / "cache",
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
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int)})
    print(f"cached {summary['clips']} clips {summary['by_split']} in {summary['shards']} shards "
          f"({summary['shards_reused']} reused), {summary['rejected']} rejected")
    return 1 if args.strict and summary["rejected"] else 0
