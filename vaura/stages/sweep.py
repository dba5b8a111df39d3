"""Generate test clips at every CFG guidance scale (the `sweep` DVC stage).

For each test set in `sweep.test_sets` and each γ in `sweep.cfg_scales`, generates `sweep.samples_per_clip`
samples per test clip from the trained decoder (`<data>/train/best.pt`) on the clip's fixed-window visual
features from the cache, decodes them with the codec and writes

  <data>/sweep/<test_set>/g<γ>/<clip>__s<k>.wav      generated audio (written once, reused by `evaluate`)
  <data>/sweep/<test_set>/recon/<clip>.wav           codec reconstruction of the reference (if reconstructions)
  <data>/sweep/index.csv                             test_set,cfg_scale,clip,sample,start_sec,path,sample_rate

Resumable: batches whose WAVs exist are skipped. Sampling settings (temperature, top-k, top-p) come from the
`generation` section; γ = 0 samples from the null condition only.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import torch

from vaura.config import ConfigError, PathsConfig, load_section, load_yaml
from vaura.devices import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root the paths are relative to")
    parser.add_argument("--variant", default=None,
                        help="ablation variant named in the MLflow run (default: the DVC experiment's name)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")


def run(args: argparse.Namespace) -> int:
    import mlflow

    from vaura.cache import CacheError
    from vaura.codec import CodecConfig, CodecWeightsError, load_codec
    from vaura.eval.sweep import SweepConfig, SweepError, load_test_items, load_trained_model, run_sweep
    from vaura.model.config import GenerationConfig
    from vaura.tracking import stage_run, tracking_config, variant_name
    from vaura.train.checkpoint import CheckpointError

    try:
        params = load_yaml(args.params)
        cfg: SweepConfig = load_section(SweepConfig, "sweep", params)
        gen: GenerationConfig = load_section(GenerationConfig, "generation", params)
        paths: PathsConfig = load_section(PathsConfig, "paths", params)
        codec_cfg: CodecConfig = load_section(CodecConfig, "codec", params)
    except ConfigError as exc:
        print(f"vaura sweep: {exc}", file=sys.stderr)
        return 1
    root = args.root
    data = root / paths.data
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    try:
        codec = load_codec(codec_cfg, root, paths.data).to(device)
        model = load_trained_model(data / "train" / "best.pt", device=device)
        test_sets = {
            name: load_test_items(
                data / "cache", dataclasses.replace(ts, windows=str(root / ts.windows) if ts.windows else ""), name
            )
            for name, ts in cfg.test_sets.items()
        }
    except (SweepError, CheckpointError, ConfigError, CacheError, CodecWeightsError) as exc:
        print(f"vaura sweep: {exc}", file=sys.stderr)
        return 1
    gen_kwargs = {k: v for k, v in dataclasses.asdict(gen).items() if k in ("temperature", "top_k", "top_p")}
    # the run's params are what this stage used: the sweep section and the sampling settings, not the
    # generation.cfg_scale it never reads (each γ of sweep.cfg_scales is sampled)
    variant = variant_name(args.variant)
    logged = {"sweep": dataclasses.asdict(cfg), "generation": gen_kwargs, **({"variant": variant} if variant else {})}
    with contextlib.ExitStack() as stack:
        if not args.no_mlflow:
            stack.enter_context(stage_run("sweep", logged, params_file=args.params, variant=variant,
                                          tracking=tracking_config(params)))
        index = run_sweep(model, codec, test_sets, cfg, gen_kwargs, data / "sweep", device=device)
        if not args.no_mlflow:
            mlflow.log_metrics({"sweep.n_wavs": len(index), "sweep.n_clips": index["clip"].nunique()})
            mlflow.log_artifact(str(data / "sweep" / "index.csv"))
    print(f"vaura sweep: {len(index)} clips indexed in {data / 'sweep' / 'index.csv'}")
    return 0
