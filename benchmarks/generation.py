"""Time V-AURA generation: the reference method (re-run the whole prefix every step) vs vaura's KV cache.

Both sample the same model with CFG batch doubling (γ = 6, top-k 128) for ``--steps`` decoder steps
(229 = 2.56 s of 44.1 kHz DAC codes: 221 frames + 9 codebooks - 1) at B = 1 and at ``--batch``, with the
paper's codec/visual sizes (9 × 1024 codes, 768-d visual tokens at 12.5 Hz). With the same seed both must
produce the same codes, which the JSON records. Both paths are warmed up (a few steps) before timing, so
one-off CUDA/cuBLAS initialisation is not charged to whichever runs first. ``--compile`` (CUDA) also times the
CUDA-graph decode (``generate(compile=True)``): its first call (compilation + graph capture) and a second one.
Usage::

    python benchmarks/generation.py --out bench.json [--size tiny|small|paper] [--device cpu|cuda] [--batch 4]
        [--dtype fp32|bf16] [--compile]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from vaura.io import atomic_write_json
from vaura.model import VAURA, named_size
from vaura.model.sampler import generate, generate_recompute

K, CARD, CDIM, RATE, DV = 9, 1024, 8, 44100 / 512, 768


def timed(fn) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--size", choices=["tiny", "small", "paper"], default="small", help="decoder size preset")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="the batched run's B (B = 1 is always timed)")
    parser.add_argument("--steps", type=int, default=229, help="decoder steps (229 = 2.56 s at 86.13 Hz, 9 codebooks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="model weights and KV cache")
    parser.add_argument("--compile", action="store_true", help="also time the CUDA-graph decode (CUDA only)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.compile and args.device != "cuda":
        parser.error("--compile needs --device cuda (the compiled decode uses CUDA graphs)")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = VAURA(named_size(args.size, dropout=0.0), K, CARD, CDIM, RATE, DV).to(device).eval()
    for head in model.lm_heads:  # zero-initialised heads would make every logit equal
        torch.nn.init.normal_(head.weight, std=0.02)
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    n_frames = args.steps - K + 1
    cpu = f"cpu ({platform.machine()}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads)"
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else cpu,
              "size": args.size, "steps": args.steps, "n_frames": n_frames,
              "params": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads(),
              "dtype": args.dtype, "torch": torch.__version__,
              "cfg_scale": 6.0, "top_k": 128, "batch": [], "recompute_s": [], "kv_s": [], "speedup": [],
              "same_codes": []}
    if args.compile:
        result.update(kv_compiled_first_s=[], kv_compiled_s=[], same_codes_compiled=[])
    warm = torch.randn(1, 32, DV, device=device, dtype=next(model.parameters()).dtype)
    generate(model, warm, 4, cfg_scale=6.0, top_k=128)
    generate_recompute(model, warm, 4, 6.0, top_k=128, generator=torch.Generator(device).manual_seed(0))
    for b in sorted({1, args.batch}):
        visual = torch.randn(b, 32, DV, device=device, dtype=warm.dtype)
        t_kv, kv = timed(lambda: generate(model, visual, n_frames, cfg_scale=6.0, top_k=128,
                                          generator=torch.Generator(device).manual_seed(args.seed)))
        t_re, re = timed(lambda: generate_recompute(model, visual, n_frames, 6.0, top_k=128,
                                                    generator=torch.Generator(device).manual_seed(args.seed)))
        result["batch"].append(b)
        result["recompute_s"].append(round(t_re, 3))
        result["kv_s"].append(round(t_kv, 3))
        result["speedup"].append(round(t_re / t_kv, 2))
        result["same_codes"].append(bool(torch.equal(kv, re)))
        print(f"B={b}: recompute {t_re:.2f} s, kv cache {t_kv:.2f} s ({t_re / t_kv:.1f}×), "
              f"same codes: {result['same_codes'][-1]}", file=sys.stderr)
        if args.compile:
            times = []
            for _ in range(2):
                t, compiled = timed(lambda: generate(model, visual, n_frames, cfg_scale=6.0, top_k=128, compile=True,
                                                     generator=torch.Generator(device).manual_seed(args.seed)))
                times.append(t)
            result["kv_compiled_first_s"].append(round(times[0], 3))
            result["kv_compiled_s"].append(round(times[1], 3))
            result["same_codes_compiled"].append(bool(torch.equal(compiled, kv)))
            print(f"B={b}: compiled kv {times[1]:.2f} s (first call {times[0]:.1f} s), "
                  f"same codes: {result['same_codes_compiled'][-1]}", file=sys.stderr)
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
