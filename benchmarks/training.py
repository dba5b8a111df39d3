"""Training-step throughput and MFU of the V-AURA decoder.

Times the trainer's own optimizer step, ``vaura.train.trainer.train_step`` (CFG condition drop with
``model.cfg_dropout``, forward + loss + backward, gradient clipping, AdamW, schedule; bf16 autocast on GPU, fp32 on
CPU; the decoder blocks compiled with ``--compile`` as ``train.compile`` does) on random codes
and visual features of a 2.56 s window with the paper's codec/visual sizes (9 × 1024 codes at 86.13 Hz =
221 frames, 768-d visual tokens at 12.5 Hz = 32 tokens). Usage::

    python benchmarks/training.py --out bench.json [--size tiny|small|paper] [--device cpu|cuda] [--batch 12]

Reported:
- ``tokens_per_s``: audio tokens (B · K · T codes) per second of optimizer step.
- ``mfu``: model FLOP utilisation = achieved model FLOP/s ÷ device peak. Model FLOPs per step follow the
  PaLM convention, per sequence position: ``6·N + 12·L·d·S`` (forward + backward), where N = weights of all
  matrix multiplies (linear layers; embedding lookups excluded), L = layers, d = d_model and S = sequence
  length (T + K delayed steps, plus the 32 visual tokens in prepend mode); the second term is attention's
  QKᵀ and AV products. Peak FLOP/s: bf16 dense tensor-core peaks from the table below for known GPUs, else
  ``--peak-tflops``; on CPU the peak is *measured* (best fp32 GEMM rate of this machine, 2048² matmuls), so
  CPU MFU reads as "fraction of this CPU's own matmul speed".
"""
from __future__ import annotations

import argparse
import itertools
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from vaura.io import atomic_write_json
from vaura.model import VAURA, named_size
from vaura.train.config import TrainConfig
from vaura.train.distributed import DistEnv
from vaura.train.lr import build_scheduler
from vaura.train.trainer import autocast_context, build_optimizer, train_step, wrap

K, CARD, CDIM, RATE, DV, NV = 9, 1024, 8, 44100 / 512, 768, 32
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def matmul_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def flops_per_step(model: VAURA, batch: int, n_frames: int) -> tuple[float, int]:
    """(model FLOPs of one training step, sequence length) — see the module docstring."""
    cfg = model.cfg
    seq = n_frames + model.n_codebooks + (0 if model.fusion else NV)
    per_position = 6 * matmul_params(model) + 12 * cfg.n_layer * cfg.d_model * seq
    return float(batch * seq * per_position), seq


def measured_cpu_peak(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def gpu_peak(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, "--peak-tflops"
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"table bf16 dense ({key})"
    return None, "unknown GPU: pass --peak-tflops"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--size", choices=["tiny", "small", "paper"], default="small", help="decoder size preset")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="clips per step (paper: 12 per GPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, autotuning)")
    parser.add_argument("--compile", action="store_true", help="compile the decoder blocks and the loss (as train.compile)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s (overrides the table)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cfg = TrainConfig(batch_size=args.batch, compile=args.compile, device=args.device)
    env = DistEnv(0, 0, 1, device)
    model = VAURA(named_size(args.size), K, CARD, CDIM, RATE, DV).to(device).train()
    step_fn = wrap(model, cfg, env)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
    amp = autocast_context(cfg, device)
    n_frames = math.ceil(2.56 * RATE)
    batches = itertools.repeat((torch.randint(0, CARD, (args.batch, K, n_frames), device=device),
                                torch.randn(args.batch, NV, DV, device=device)))
    params = [p for p in model.parameters() if p.requires_grad]
    cond_gen = torch.Generator().manual_seed(args.seed)

    def step() -> float:
        loss, _, _ = train_step(step_fn, params, optimizer, scheduler, batches, cfg=cfg,
                                cfg_dropout=model.cfg.cfg_dropout, cond_gen=cond_gen, env=env, amp=amp)
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    flops, seq = flops_per_step(model, args.batch, n_frames)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name()
        peak, peak_source = gpu_peak(device_name, args.peak_tflops)
    else:
        device_name = platform.processor() or platform.machine()
        peak, peak_source = (args.peak_tflops * 1e12, "--peak-tflops") if args.peak_tflops else (
            measured_cpu_peak(), "measured fp32 GEMM (2048^2)")
    result = {
        "size": args.size, "device": str(device), "device_name": device_name, "batch": args.batch,
        "precision": "bf16-autocast" if isinstance(amp, torch.autocast) else "fp32", "compile": args.compile,
        "n_frames": n_frames, "seq_len": seq, "params": sum(p.numel() for p in params),
        "matmul_params": matmul_params(model), "flops_per_step": flops, "step_s_median": step_s,
        "step_s_all": times, "tokens_per_s": args.batch * K * n_frames / step_s,
        "model_tflops_per_s": flops / step_s / 1e12, "peak_tflops_per_s": None if peak is None else peak / 1e12,
        "peak_source": peak_source, "mfu": None if peak is None else flops / step_s / peak,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }
    print(f"{args.size} on {device_name}: {step_s * 1e3:.1f} ms/step, {result['tokens_per_s']:.0f} tokens/s, "
          f"MFU {result['mfu'] if result['mfu'] is None else round(result['mfu'], 4)}", file=sys.stderr)
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
