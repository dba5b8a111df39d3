"""Write the paper's ablation tables from MLflow (the `report` DVC stage).

Reads every `evaluate` run of the MLflow experiment (`mlflow.search_runs` → pandas) and the `train` runs for
training time, and writes to <reports>/ (paths.reports):

  threshold.md / .csv      Table II: relevance threshold, train clips, training device-hours, KLD, FAD, IB, Sync
  conditioning.md / .csv   Table III: prepend vs fusion
  cfg.md / .csv            Table IV: CFG γ (plus the codec-reconstruction and real-audio ceilings)
  cfg_curve.csv            Table IV as numbers (cfg_scale + one column per metric) for `dvc plots`

Each table is restricted to `report.test_set`; Tables II and III at γ = `report.cfg_scale`, Tables III and IV at
`report.baseline_threshold` (null: this params file's `filter.threshold`), Tables II and IV with `report.baseline_conditioning`. Cells a profile cannot fill
say why ("skipped: <reason>"). The tables are logged to MLflow as artifacts of a `report` run and on the
pipeline's parent run: its description (the markdown tables) and MLflow tables `tables/<name>.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

from vaura.stages import add_common, load

TITLES = {
    "threshold": "Table II — relevance-threshold ablation",
    "conditioning": "Table III — conditioning: prepend vs channel-wise fusion",
    "cfg": "Table IV — classifier-free guidance scale γ",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)  # --no-track: read MLflow, but log no report run


def run(args: argparse.Namespace) -> int:
    import mlflow

    from vaura.eval.report import ReportConfig, build_tables, cfg_curve, footnoted, search_runs, to_markdown
    from vaura.io import atomic_write_csv, atomic_write_text
    from vaura.tracking import describe_pipeline

    ctx, (cfg,) = load(args, "report", report=ReportConfig)
    tcfg = ctx.tracking()
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or tcfg.uri)
    cfg = cfg.resolved(ctx.params)
    evals, trains = search_runs(tcfg.experiment, "evaluate"), search_runs(tcfg.experiment, "train")
    tables = build_tables(evals, trains, cfg)
    out = ctx.root / ctx.paths.reports
    note = (f"Test set `{cfg.test_set}`; latest `evaluate` run per row (MLflow experiment `{tcfg.experiment}`, "
            f"{len(evals)} evaluate runs). γ = {cfg.cfg_scale:g} where not varied; baseline threshold "
            f"{cfg.baseline_threshold:g}, conditioning `{cfg.baseline_conditioning}`.")
    written, texts = [], []
    for name, table in tables.items():
        texts.append(to_markdown(table, TITLES[name], note))
        atomic_write_text(out / f"{name}.md", texts[-1])
        atomic_write_csv(out / f"{name}.csv", table)
        written += [out / f"{name}.md", out / f"{name}.csv"]
        print(to_markdown(table, TITLES[name]))
    atomic_write_csv(out / "cfg_curve.csv", cfg_curve(evals, cfg))
    written.append(out / "cfg_curve.csv")
    with ctx.tracked({"report": dataclasses.asdict(cfg)}) as run_log:
        if run_log:
            for path in written:
                run_log.log_artifact(str(path), artifact_path="reports")
            # the tables where a user looks first: the pipeline run's description and its table view
            describe_pipeline("\n".join(texts), {name: footnoted(t)[0] for name, t in tables.items()}, written)
    return 0
