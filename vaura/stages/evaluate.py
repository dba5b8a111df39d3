"""Score the CFG sweep (the `evaluate` DVC stage): metrics per test set and γ → metrics.json + MLflow runs.

Reads <data>/sweep/index.csv and its WAVs (the index names each clip's source video, read for the reference
audio, IB-score and Sync, and the window length), <data>/splits/train.csv (only its row count: the train-clip
column of the threshold ablation) and, on the synthetic benchmark, the ground-truth events (<data>/raw/events.csv)
for onset-sync. Pretrained scorers load from the `evaluate.*_weights` paths; a metric
whose weights are absent is reported as skipped with the reason, never dropped and never zero.

With `--variant NAME` (an `ablation.variants` entry) the variant's overrides apply, the sweep is
<data>/sweep/NAME/ and the metrics go to <data>/eval/NAME/metrics.json, with the variant's name, overrides,
train-clip count and training run (steps, processes, device); its wall time goes to <data>/eval/NAME/timing.json
so that identical runs give identical metrics (the `report` stage reads these files, and only these).

Writes <data>/eval/metrics.json (DVC metrics; values with bootstrap intervals, evaluate.bootstrap), the onset
counts of every generated item in <data>/eval/onsets.csv (test_set, group, clip, sample, tp, fp, fn: the report's
paired comparisons of two variants on the same clips), and one
MLflow run per (test set, group) nested under the pipeline's parent run and named
`evaluate · <variant> · γ <scale> · <test set>`, with a few informative clips' audio (wav), spectrogram (png)
and the video muxed with the generated audio (mp4) as artifacts.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from vaura.config import flatten
from vaura.stages import add_common, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, device="where the metric networks run (default: params evaluate.device)", variant=True)


def train_clip_count(splits: Path) -> int | None:
    """Rows of <splits>/train.csv (the paper's Table II 'train clips' column)."""
    path = splits / "train.csv"
    return len(pd.read_csv(path)) if path.is_file() else None


def variant_info(params: Mapping[str, Any], variant: str | None, train_clips: int | None,
                 train_metrics: Path) -> dict[str, Any]:
    """What metrics.json says about the variant: name, overrides, the parameters the tables group by, and the
    training run's steps / processes / device (from the train stage's metrics.json, when present)."""
    from vaura.variants import overrides

    flat = flatten(params)
    trained = json.loads(train_metrics.read_text()) if train_metrics.is_file() else {}
    return {
        "name": variant,
        "overrides": overrides(params, variant) if variant is not None else {},
        **{k: flat.get(k) for k in ("filter.threshold", "filter.apply_to", "model.conditioning")},
        "train_clips": train_clips,
        "train": {k: trained.get(k) for k in ("steps", "world_size", "device", "stopped_early")},
    }


def run(args: argparse.Namespace) -> int:
    from vaura.eval.evaluate import (
        EvaluateConfig, Models, evaluate_sweep, flat_metrics, log_groups, metrics_json, onset_items, read_events,
    )
    from vaura.eval.ib import load_ib_model
    from vaura.eval.kld import load_kld_model
    from vaura.eval.sync import load_sync_predictor
    from vaura.io import atomic_write_csv, atomic_write_json
    from vaura.tracking import variant_name

    ctx, (cfg,) = load(args, "evaluate", evaluate=EvaluateConfig)
    root, data = ctx.root, ctx.data
    device = str(ctx.device_or(cfg.device))
    sync, sync_reason = load_sync_predictor(root / cfg.synchformer_weights, device=device)
    ib, ib_reason = load_ib_model(root / cfg.imagebind_weights, device=device)
    passt, passt_reason = load_kld_model(root / cfg.passt_weights, device=device)
    models = Models(sync=sync, sync_reason=sync_reason, ib=ib, ib_reason=ib_reason, passt=passt,
                    passt_reason=passt_reason, device=device)
    events = read_events(data / cfg.events if cfg.events else None)
    groups = evaluate_sweep(ctx.out("sweep"), events, cfg, models, root=root)
    train_clips = train_clip_count(ctx.out("splits"))
    info = variant_info(ctx.params, ctx.variant, train_clips, ctx.out("train") / "metrics.json")
    atomic_write_json(ctx.out("eval") / "metrics.json", metrics_json(groups, info, cfg.bootstrap))
    atomic_write_csv(ctx.out("eval") / "onsets.csv", onset_items(groups))
    timing = ctx.out("train") / "timing.json"
    minutes = json.loads(timing.read_text()).get("minutes") if timing.is_file() else None
    atomic_write_json(ctx.out("eval") / "timing.json", {"train_minutes": minutes})
    for g in groups:
        line = ", ".join(f"{k}={v:.3g}" for k, v in flat_metrics(g).items())
        print(f"{g.test_set}/{g.name}: {line}")
    if ctx.track:
        log_groups(ctx.params, groups, train_clips, variant_name(ctx.variant),
                   data_files=[ctx.out("sweep") / "index.csv"], params_file=ctx.params_file)
    return 0
