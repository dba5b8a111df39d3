"""Generate test clips at every CFG guidance scale (the `sweep` DVC stage).

For each test set in `sweep.test_sets` and each γ in `sweep.cfg_scales`, generates `sweep.samples_per_clip`
samples per test clip from the trained decoder (`<data>/train/best.pt`; `<data>/train/<variant>/best.pt`) on the clip's fixed-window visual
features from the cache, decodes them with the codec and writes

  <data>/sweep/<test_set>/g<γ>/<clip>__s<k>.wav      generated audio (written once, reused by `evaluate`)
  <data>/sweep/<test_set>/recon/<clip>.wav           codec reconstruction of the reference (if reconstructions)
  <data>/sweep/index.csv                             test_set,cfg_scale,clip,sample,start_sec,path,sample_rate

and one MLflow run (params `sweep` and `generation`, clips indexed) unless `--no-track`.

With `--variant NAME` (an `ablation.variants` entry) the variant's overrides apply, the model is
<data>/train/NAME/best.pt, each test set keeps the clips of the variant's split list
(<data>/splits/NAME/<split>.csv) and the output goes to <data>/sweep/NAME/.

Resumable: batches whose WAVs exist are skipped. Sampling settings (temperature, top-k, top-p) come from the
`generation` section; γ = 0 samples from the null condition only.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from vaura.config import to_dict
from vaura.stages import add_common, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, device="where to generate (default: params sweep.device)", variant=True)


def run(args: argparse.Namespace) -> int:
    from vaura.codec import CodecConfig, load_codec
    from vaura.generate.sweep import SweepConfig, load_test_items, run_sweep
    from vaura.model.config import GenerationConfig
    from vaura.model.sampler import use_compiled_decode
    from vaura.train.checkpoint import load_trained_model
    from vaura.curation.filtering import split_clips

    ctx, (cfg, gen, codec_cfg) = load(args, "sweep", sweep=SweepConfig, generation=GenerationConfig,
                                      codec=CodecConfig)
    data = ctx.data
    device = ctx.device_or(cfg.device)
    compiled = use_compiled_decode(gen.decode, device)
    torch.manual_seed(cfg.seed)
    codec = load_codec(codec_cfg, ctx.root, ctx.paths.data).to(device)
    model = load_trained_model(ctx.out("train") / "best.pt", device=device)
    test_sets = {
        name: load_test_items(
            data / "cache", dataclasses.replace(ts, windows=str(ctx.path(ts.windows)) if ts.windows else ""), name,
            clips=split_clips(ctx.out("splits") if ctx.variant else None, ts.cache_split),
        )
        for name, ts in cfg.test_sets.items()
    }
    gen_kwargs = {k: v for k, v in dataclasses.asdict(gen).items() if k in ("temperature", "top_k", "top_p")}
    gen_kwargs["compile"] = compiled
    # the run's params are what this stage used: the sweep section and the sampling settings, not the
    # generation.cfg_scale it never reads (each γ of sweep.cfg_scales is sampled)
    logged = {"sweep": to_dict(cfg), "generation": {k: v for k, v in gen_kwargs.items() if k != "compile"}}
    with ctx.tracked(logged) as mlflow:
        index = run_sweep(model, codec, test_sets, cfg, gen_kwargs, ctx.out("sweep"), device=device)
        if mlflow:
            mlflow.log_metric("clips_indexed", len(index))
            mlflow.log_artifact(str(ctx.out("sweep") / "index.csv"))
    print(f"vaura sweep: {len(index)} clips indexed in {ctx.out('sweep') / 'index.csv'}")
    return 0
