"""Turn relevance scores into train/val/test lists (DVC stage `filter`).

Reads  <data>/scores/scores.csv
Writes <data>/splits/train.csv          clip,path                (score >= filter.threshold)
       <data>/splits/{val,test}.csv     clip,path,start_sec      (fixed 2.56 s evaluation windows)
       <data>/splits/metrics.json       kept clips per split and, for each of filter.report_thresholds, how
                                        many train clips that threshold would keep (the paper's Table II column)

The threshold applies to the splits in `filter.apply_to` (default: train only — val/test stay fixed evaluation
sets so that a threshold ablation is compared on the same clips). Its scale is the scorer's: ImageBind cosine
(paper: 0.3) or the motion-onset correlation (offline default: see params.yaml). Clips shorter than one window
of visual features are dropped from every split. Paths are stored relative to data/splits/.
"""
from __future__ import annotations

import argparse

from vaura.curation.filtering import SPLITS, FilterConfig, filter_scores
from vaura.tables import read_table, write_table
from vaura.io import atomic_write_json
from vaura.stages import add_common, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    ctx, (cfg,) = load(args, "filter", filter=FilterConfig)
    scores_path = ctx.data / "scores" / "scores.csv"
    scores = read_table(scores_path, {"clip", "split", "score", "duration_s"}, hint="run `vaura score` first")
    lists, metrics = filter_scores(scores, cfg, source=str(scores_path))
    with ctx.tracked({"filter": vars(cfg)}) as mlflow:
        for split in SPLITS:
            write_table(ctx.data / "splits" / f"{split}.csv", lists[split])
        atomic_write_json(ctx.data / "splits" / "metrics.json", metrics)
        if mlflow:
            mlflow.log_metrics({f"kept_{s}": n for s, n in metrics["kept"].items()})
            mlflow.log_metrics({f"kept_train_at_{t}": n for t, n in metrics["kept_train_at"].items()})
    kept = ", ".join(f"{s} {n}" for s, n in metrics["kept"].items())
    print(f"filter threshold {cfg.threshold} ({metrics['scorer']}): kept {kept}; "
          f"train kept per threshold {metrics['kept_train_at']}")
    return 0
