"""Time the data front end: synthetic clip rendering, H.264+AAC writing, decoding to model inputs, preprocessing.

Reports CPU seconds per 5.12 s clip (``time.process_time``: stable on a shared machine, unlike wall time) and
wall seconds, for each step of ``acquire`` (synthetic) and ``preprocess`` at the params.yaml sizes. Usage::

    python benchmarks/media_io.py --out bench.json [--clips 5] [--params params.yaml]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

from vaura import media
from vaura.config import load_section
from vaura.data.preprocess import PreprocessConfig, convert_clip
from vaura.data.synthetic import SyntheticConfig, plan_benchmark, render_audio, render_frames
from vaura.io import atomic_write_json


def _timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def bench(syn: SyntheticConfig, pre: PreprocessConfig, n_clips: int, seed: int) -> dict:
    plans = [p for p in plan_benchmark(syn, seed) if p.kind == "ok"][:n_clips]
    totals: dict[str, list[float]] = {}

    def add(name: str, cpu: float, wall: float) -> None:
        acc = totals.setdefault(name, [0.0, 0.0])
        acc[0] += cpu
        acc[1] += wall

    with tempfile.TemporaryDirectory() as tmp:
        for plan in plans:
            raw, out = Path(tmp) / f"{plan.clip}.mp4", Path(tmp) / f"{plan.clip}.pre.mp4"
            frames, cpu, wall = _timed(lambda: render_frames(plan, syn))
            add("render_frames", cpu, wall)
            audio, cpu, wall = _timed(lambda: render_audio(plan, syn))
            add("render_audio", cpu, wall)
            _, cpu, wall = _timed(lambda: media.write_video(raw, frames, syn.fps, audio, syn.sample_rate))
            add("write_video", cpu, wall)
            _, cpu, wall = _timed(lambda: convert_clip(raw, out, pre))
            add("preprocess_clip", cpu, wall)
            _, cpu, wall = _timed(lambda: media.read_video(out, fps=25.0, short_side=256, crop=224))
            add("read_video_224", cpu, wall)
            _, cpu, wall = _timed(lambda: media.read_audio(out, 44100))
            add("read_audio_44k", cpu, wall)
    per_clip = {k: {"cpu_s": v[0] / len(plans), "wall_s": v[1] / len(plans)} for k, v in totals.items()}
    gen_cpu = sum(per_clip[k]["cpu_s"] for k in ("render_frames", "render_audio", "write_video"))
    n_total = syn.n_train + syn.n_val + syn.n_test
    return {
        "clips_timed": len(plans), "clip_s": syn.duration_s, "frame_size": syn.size, "per_clip": per_clip,
        "default_set_clips": n_total,
        "default_set_cpu_s": {"acquire_synthetic": gen_cpu * n_total,
                              "preprocess": per_clip["preprocess_clip"]["cpu_s"] * n_total},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--clips", type=int, default=5, help="clips to time (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    args = parser.parse_args()
    syn = load_section(SyntheticConfig, "synthetic", args.params)
    pre = load_section(PreprocessConfig, "preprocess", args.params)
    result = bench(syn, pre, args.clips, seed=0)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    atomic_write_json(args.out, result)
    print(result["per_clip"], result["default_set_cpu_s"])


if __name__ == "__main__":
    main()
