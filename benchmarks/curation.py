"""Time the curation stages' inner loops: motion-onset scoring and the token/feature cache, clips per second.

Renders ``--clips`` synthetic clips (the offline profile's ``synthetic`` settings, seed ``--seed``) into a temp
folder, then times (1) motion-onset scoring with 1 and ``score.workers`` decode threads and (2) ``build_cache``
with the offline codec / visual stand-in architectures from params (random weights: speed does not depend on
them) at cache batch sizes 1 and ``cache.batch_size``. Usage::

    python benchmarks/curation.py --out bench.json [--clips 16] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from vaura.cache import CacheConfig, ClipSpec, build_cache
from vaura.config import load_yaml
from vaura.io import atomic_write_json


def main() -> None:
    from vaura import media
    from vaura.codec import Codec, CodecConfig
    from vaura.codec.codec import _new_dac
    from vaura.config import load_section
    from vaura.curation.filtering import FilterConfig
    from vaura.curation.motion_onset import MotionOnsetScorer
    from vaura.curation.scoring import ScoreConfig
    from vaura.data.synthetic import SyntheticConfig, generate_benchmark
    from vaura.visual import MotionFormer, VisualConfig, VisualEncoder
    from vaura.visual.encoder import size_from_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--params", default="params.yaml", help="params file (synthetic, score, filter, cache, codec, visual)")
    parser.add_argument("--clips", type=int, default=16, help="synthetic clips to render and process")
    parser.add_argument("--seed", type=int, default=0, help="synthetic benchmark seed")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (cache encoders)")
    args = parser.parse_args()
    params = load_yaml(args.params)
    syn = dataclasses.replace(load_section(SyntheticConfig, "synthetic", params), n_train=args.clips, n_val=1,
                              n_test=1)
    scfg = load_section(ScoreConfig, "score", params)
    ccfg = load_section(CacheConfig, "cache", params)
    fcfg = load_section(FilterConfig, "filter", params)
    codec_cfg = load_section(CodecConfig, "codec", params)
    vcfg = load_section(VisualConfig, "visual", params)
    if ccfg.torch_threads > 0:
        torch.set_num_threads(ccfg.torch_threads)
    result: dict = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": args.device, "clips": args.clips, "clip_s": syn.duration_s, "frame_size": syn.size}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_benchmark(Path(tmp) / "raw", syn, args.seed)
        paths = [str(Path(tmp) / "raw" / p) for p in manifest[manifest["split"] == "train"]["path"]]
        for workers in sorted({1, scfg.workers}):
            scorer = MotionOnsetScorer(scfg.motion_short_side, scfg.motion_max_lag_frames, scfg.motion_audio_rate,
                                       workers=workers)
            t0 = time.perf_counter()
            scorer.score_batch(paths)
            result[f"score_motion_onset_clips_per_s_workers{workers}"] = len(paths) / (time.perf_counter() - t0)
        torch.manual_seed(0)
        kwargs = codec_cfg.offline.dac_kwargs()
        codec = Codec(_new_dac(kwargs), codec_cfg.n_quantizers).to(args.device)
        visual = VisualEncoder(MotionFormer(size_from_config(vcfg)), vcfg.short_side, vcfg.batch_size, args.device)
        plan = [ClipSpec(Path(p).stem, p, "train") for p in paths]
        for batch in sorted({1, ccfg.batch_size}):
            t0 = time.perf_counter()
            build_cache(plan, Path(tmp) / f"cache-b{batch}", codec, visual,
                        lambda p: media.read_audio(p, codec.sample_rate),
                        lambda p: media.read_video(p, 25.0, short_side=vcfg.short_side, crop=vcfg.crop),
                        shard_size=ccfg.shard_size, batch_size=batch, workers=ccfg.workers, device=args.device,
                        window_s=fcfg.window_s, progress=False)
            result[f"cache_clips_per_s_batch{batch}"] = len(plan) / (time.perf_counter() - t0)
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
