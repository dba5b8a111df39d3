"""Write the paper's ablation tables from the variants' metrics files (the `report` DVC stage).

Reads <data>/eval/<variant>/metrics.json and onsets.csv of every `ablation.variants` entry (its DVC deps;
nothing from MLflow) and writes to <reports>/ (paths.reports):

  threshold.md / .csv      Table II: relevance threshold (baseline + variants that override only `filter`)
  conditioning.md / .csv   Table III: conditioning (baseline + variants that override only `model.conditioning`)
  cfg.md / .csv            Table IV: the baseline at every CFG γ (plus codec-reconstruction and real-audio rows)
  variants.md / .csv       every variant at the γ of Tables II/III, with its overrides
  cfg_curve.csv            Table IV as numbers (cfg_scale, metric, interval) for `dvc plots`

Every value is shown with its 95 % bootstrap interval over test clips × samples (evaluate.bootstrap); each
table says which γ it uses: `report.cfg_scale`, or when that is null the baseline's best onset F1 on the
validation set `report.select_set` (never the test set). Under Tables II-IV the report states whether the
expected ordering holds by non-overlapping intervals, and by the paired bootstrap interval of the onset-F1
difference on the same test clips × samples (<data>/eval/<variant>/onsets.csv). MLflow receives the tables
too: artifacts of a `report` run, and on the pipeline's parent run its description (the markdown tables) and
MLflow tables `tables/<name>.json`.
"""
from __future__ import annotations

import argparse
import dataclasses

from vaura.stages import add_common, load

TITLES = {
    "threshold": "Table II — relevance-threshold ablation",
    "conditioning": "Table III — conditioning: prepend vs channel-wise fusion",
    "cfg": "Table IV — classifier-free guidance scale γ",
    "variants": "Every ablation variant",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)  # --no-track: write the tables, log no report run


def run(args: argparse.Namespace) -> int:
    from vaura.eval.report import (
        ReportConfig, bootstrap_note, build_tables, footnoted, read_items, read_metrics, to_markdown,
    )
    from vaura.io import atomic_write_csv, atomic_write_text
    from vaura.tracking import describe_pipeline
    from vaura.variants import ablation_config

    ctx, (cfg,) = load(args, "report", report=ReportConfig)
    ablation = ablation_config(ctx.params)
    metrics = read_metrics(ctx.data / "eval", list(ablation.variants))
    items = read_items(ctx.data / "eval", list(ablation.variants))
    tables, gamma = build_tables(metrics, ablation.baseline, cfg, items)
    out = ctx.root / ctx.paths.reports
    preamble = [bootstrap_note(metrics, cfg.test_set)]
    written, texts = [], []
    for name, table in tables.items():
        texts.append(to_markdown(table, TITLES[name], preamble))
        atomic_write_text(out / f"{name}.md", texts[-1])
        atomic_write_csv(out / f"{name}.csv", table.frame())
        written += [out / f"{name}.md", out / f"{name}.csv"]
        print(texts[-1])
    curve = tables["cfg"].numbers()
    curve = curve[curve["γ"].str.match(r"^[-0-9.e]+")].copy()
    curve.insert(0, "cfg_scale", curve.pop("γ").str.split(" ").str[0].astype(float))
    atomic_write_csv(out / "cfg_curve.csv", curve)
    written.append(out / "cfg_curve.csv")
    logged = {"report": dataclasses.asdict(cfg),
              "ablation": {"baseline": ablation.baseline, "variants": ",".join(ablation.variants)}}
    with ctx.tracked(logged, tags={"vaura.report.cfg_scale": f"{gamma:g}"}) as run_log:
        if run_log:
            run_log.log_metric("report.cfg_scale", gamma)
            for path in written:
                run_log.log_artifact(str(path), artifact_path="reports")
            # the tables where a user looks first: the pipeline run's description and its table view
            describe_pipeline("\n".join(texts), {name: footnoted(t.frame())[0] for name, t in tables.items()}, written)
    return 0
