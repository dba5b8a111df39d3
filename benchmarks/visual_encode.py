"""Throughput of the frozen visual encoder (what `cache` pays per clip) and of the Synchformer sync model.

Random weights and random uint8 frames (speed does not depend on the values). ``--size offline`` is the
params.yaml stand-in (read from ``--params``), ``--size paper`` the released ViT-B (224², 12 layers, 768-d).
Usage::

    python benchmarks/visual_encode.py --out bench.json [--size offline|paper] [--device cpu|cuda]
        [--clips 8] [--sync]

Reported per encoder: seconds per 2.56 s clip (64 frames -> 32 tokens), clips/s and segments/s, after one
warm-up call; with ``--sync`` also seconds per Synchformer offset prediction (one 4.8 s window).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch

from vaura.config import load_section
from vaura.io import atomic_write_json
from vaura.visual import PAPER_SIZE, MotionFormer, VisualConfig, VisualEncoder
from vaura.visual.encoder import size_from_config
from vaura.eval.synchformer import Synchformer, SynchformerSize


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernels)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--size", choices=["offline", "paper"], default="offline")
    parser.add_argument("--params", default="params.yaml", help="params file for --size offline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=int, default=8, help="2.56 s clips per encode_many call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="also time Synchformer (paper size; slow on CPU)")
    args = parser.parse_args(argv)

    if args.size == "paper":
        size, short_side, batch = PAPER_SIZE, 256, 16
    else:
        vcfg = load_section(VisualConfig, "visual", args.params)
        size, short_side, batch = size_from_config(vcfg), vcfg.short_side, vcfg.batch_size
    torch.manual_seed(0)
    enc = VisualEncoder(MotionFormer(size), short_side, batch, args.device)
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, size=(64, size.img_size, size.img_size, 3), dtype=np.uint8)
             for _ in range(args.clips)]
    per_call = _timed(lambda: enc.encode_many(clips), args.repeats)
    result = {
        "size": args.size, "architecture": size.to_dict(), "device": args.device,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
        "clips_per_call": args.clips, "seconds_per_clip": per_call / args.clips,
        "clips_per_s": args.clips / per_call, "segments_per_s": 4 * args.clips / per_call,
    }
    if args.sync:
        sync = Synchformer(SynchformerSize()).to(args.device).eval()
        frames = rng.integers(0, 256, size=(120, 224, 224, 3), dtype=np.uint8)
        audio = rng.standard_normal(76800).astype(np.float32) * 0.1
        result["synchformer_seconds_per_window"] = _timed(lambda: sync.predict_offsets(frames, audio), args.repeats)
    atomic_write_json(args.out, result)
    print(result, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
