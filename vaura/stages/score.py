"""Score every clip's audio-visual relevance (DVC stage `score`).

Reads  <data>/clips/manifest.csv (the preprocess stage's output).
Writes <data>/scores/scores.csv   clip,path,split,score,scorer,duration_s (path relative to data/scores/)
       <data>/scores/rejected.csv clips that could not be scored, with the reason
       <data>/scores/metrics.json counts, wall time and — when <data>/raw/relevance.csv (synthetic ground
                                  truth) exists — the ROC-AUC of the score for relevant vs injected-irrelevant
                                  clips, overall and per irrelevant kind.

Scorers (params `score.scorer`): `motion-onset` (weight-free: motion-energy vs audio-onset envelope
correlation; the offline default) and `imagebind` (the paper's criterion; needs imagebind_huge.pth at
`score.imagebind_weights`). `--strict` exits 1 if any clip was rejected.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from vaura.curation.scoring import ScoreConfig, build_scorer, relevance_auc, score_clips
from vaura.tables import TableError, write_table
from vaura.io import atomic_write_csv, write_output_metrics
from vaura.stages import add_common, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, device="torch device for model-based scorers (default: cpu)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any clip could not be scored")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from vaura.data.manifest import read_manifest

    ctx, (cfg,) = load(args, "score", score=ScoreConfig)
    out = ctx.data / "scores"
    manifest = read_manifest(ctx.data / "clips" / "manifest.csv")
    t0 = time.perf_counter()
    scorer = build_scorer(cfg, ctx.root, str(ctx.device_or("cpu")))
    with ctx.tracked({"score": vars(cfg)}) as mlflow:
        scores, rejected = score_clips(manifest, scorer, cfg.batch_size, progress=not args.no_progress)
        wall = time.perf_counter() - t0
        write_table(out / "scores.csv", scores)
        atomic_write_csv(out / "rejected.csv", rejected)
        metrics: dict = {"scorer": scorer.name, "n_scored": len(scores), "n_rejected": len(rejected), "wall_s": wall}
        truth = ctx.data / "raw" / "relevance.csv"
        if truth.is_file():
            try:
                metrics.update(relevance_auc(scores, pd.read_csv(truth, dtype={"clip": str})))
            except (KeyError, pd.errors.ParserError) as exc:
                raise TableError(f"{truth}: not a relevance table clip,relevant,kind ({exc})") from exc
        write_output_metrics(out / "metrics.json", metrics, timings=["wall_s"])
        if mlflow:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.log_metrics({f"auc_{k}": v for k, v in metrics.get("auc_by_kind", {}).items()})
            mlflow.log_artifact(str(out / "scores.csv"))
    auc = f", AUC {metrics['auc']:.3f}" if metrics.get("auc") is not None else ""
    print(f"scored {len(scores)} clips ({len(rejected)} rejected) with {scorer.name} in {wall:.1f} s{auc}")
    return 1 if args.strict and len(rejected) else 0
