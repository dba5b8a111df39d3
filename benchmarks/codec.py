"""Time codec tokenisation: encode and decode of 2.56 s windows, offline stand-in vs the 44.1 kHz DAC architecture.

Random weights (speed does not depend on them): the stand-in from ``params.yaml`` ``codec.offline`` and
``dac.DAC()`` defaults (the paper's 44.1 kHz, hop 512 model, 9 codebooks used). Reports seconds per window and
real-time factor (audio seconds processed per wall second) for encode and decode at batch ``--batch``. Usage::

    python benchmarks/codec.py --out bench.json [--batch 4] [--repeats 3] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from vaura.codec import Codec, CodecConfig
from vaura.codec.codec import _new_dac
from vaura.config import load_section
from vaura.io import atomic_write_json

WINDOW_S = 2.56


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, jit-scripted snake)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(codec: Codec, batch: int, repeats: int, device: str) -> dict:
    codec.to(device)
    wav = torch.randn(batch, 1, round(WINDOW_S * codec.sample_rate), device=device) * 0.1
    codes = codec.encode(wav)
    enc = _time(lambda: codec.encode(wav), repeats)
    dec = _time(lambda: codec.decode(codes), repeats)
    audio_s = batch * WINDOW_S
    return {
        "sample_rate": codec.sample_rate, "hop_length": codec.hop_length, "n_codebooks": codec.n_codebooks,
        "frames_per_window": int(codes.shape[-1]), "n_params": sum(p.numel() for p in codec.parameters()),
        "encode_s": enc, "decode_s": dec, "encode_rtf": audio_s / enc, "decode_rtf": audio_s / dec,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--params", default="params.yaml", help="params file with the codec section")
    parser.add_argument("--batch", type=int, default=4, help="2.56 s windows per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    args = parser.parse_args()
    cfg = load_section(CodecConfig, "codec", args.params)
    with torch.no_grad():
        results = {
            "offline": bench(Codec(_new_dac(cfg.offline.dac_kwargs()), cfg.n_quantizers), args.batch, args.repeats,
                             args.device),
            "dac44": bench(Codec(_new_dac(None), 9), args.batch, args.repeats, args.device),
        }
    atomic_write_json(args.out, {
        "batch": args.batch, "window_s": WINDOW_S, "device": args.device, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "results": results,
    })
    print(results)


if __name__ == "__main__":
    main()
