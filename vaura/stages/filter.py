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
import sys
from pathlib import Path

from vaura.config import ConfigError, PathsConfig, load_section, load_yaml
from vaura.curation.filtering import SPLITS, FilterConfig, FilterError, filter_scores
from vaura.tables import TableError, read_table, write_table
from vaura.io import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from vaura.tracking import stage_run

    try:
        params = load_yaml(args.params)
        cfg: FilterConfig = load_section(FilterConfig, "filter", params)
        paths: PathsConfig = load_section(PathsConfig, "paths", params)
    except ConfigError as exc:
        print(f"vaura filter: {exc}", file=sys.stderr)
        return 1
    data = Path(paths.data)
    scores_path = data / "scores" / "scores.csv"
    try:
        scores = read_table(scores_path, {"clip", "split", "score", "duration_s"}, hint="run `vaura score` first")
        lists, metrics = filter_scores(scores, cfg, source=str(scores_path))
    except (TableError, FilterError) as exc:
        print(f"vaura filter: {exc}", file=sys.stderr)
        return 1
    with stage_run("filter", {"filter": vars(cfg)}, params_file=args.params):
        import mlflow

        for split in SPLITS:
            write_table(data / "splits" / f"{split}.csv", lists[split])
        atomic_write_json(data / "splits" / "metrics.json", metrics)
        mlflow.log_metrics({f"kept_{s}": n for s, n in metrics["kept"].items()})
        mlflow.log_metrics({f"kept_train_at_{t}": n for t, n in metrics["kept_train_at"].items()})
    kept = ", ".join(f"{s} {n}" for s, n in metrics["kept"].items())
    print(f"filter threshold {cfg.threshold} ({metrics['scorer']}): kept {kept}; "
          f"train kept per threshold {metrics['kept_train_at']}")
    return 0
