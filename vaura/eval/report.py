"""Paper-shaped ablation tables from MLflow: threshold (Table II), conditioning (Table III), CFG γ (Table IV).

Input: the ``evaluate`` runs (``mlflow.search_runs`` → pandas), identified by the contract documented in
:mod:`vaura.eval.evaluate` — params ``filter.threshold`` / ``model.conditioning`` (the variant), tags
``vaura.eval.test_set`` / ``vaura.eval.group`` / ``vaura.eval.cfg_scale``, metric statuses and reasons — plus the
``train`` run of the same variant (same pipeline id, DVC experiment, threshold and conditioning) for training
time. When a variant was evaluated
several times, its latest run counts. A cell whose metric was skipped says ``skipped: <reason>``; a cell with no
run says why too, so a table never shows a silent gap or a fake zero.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from vaura.config import bounded

# table column → (metric column in MLflow, metric name for status/reason tags, number format)
METRIC_COLUMNS: dict[str, tuple[str, str, str]] = {
    "KLD": ("kld", "kld", "{:.2f}"),
    "FAD": ("fad", "fad", "{:.2f}"),
    "IB": ("ib", "ib", "{:.2f}"),
    "Sync (ms)": ("sync_ms", "sync", "{:.0f}"),
    "DeSync (s)": ("desync_s", "desync", "{:.3f}"),
    "onset F1": ("onset_f1", "onset_sync", "{:.3f}"),
    "onset |offset| (ms)": ("onset_offset_ms", "onset_sync", "{:.1f}"),
    "missed": ("onset_missed", "onset_sync", "{:.0f}"),
    "extra": ("onset_extra", "onset_sync", "{:.0f}"),
}


@dataclass
class ReportConfig:
    """params.yaml section ``report``."""

    test_set: str = "test"
    cfg_scale: float = bounded(6.0, ge=0)
    # None = the threshold of the params file the report runs with (``filter.threshold``), so the baseline
    # follows the pipeline's own setting instead of silently drifting from it.
    baseline_threshold: float | None = bounded(None, ge=-1, le=1)
    baseline_conditioning: str = "fusion"

    def resolved(self, params: Mapping[str, Any]) -> "ReportConfig":
        """This config with ``baseline_threshold`` filled from ``params['filter']['threshold']`` when None."""
        if self.baseline_threshold is not None:
            return self
        try:
            threshold = float(params["filter"]["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError("report.baseline_threshold is null but params has no numeric filter.threshold") from exc
        return dataclasses.replace(self, baseline_threshold=threshold)


class ReportError(ValueError):
    """No runs to build a table from (says which runs were looked for)."""


def search_runs(experiment: str, stage: str) -> pd.DataFrame:
    """All runs of one stage in ``experiment`` as a DataFrame (empty when there are none)."""
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        return pd.DataFrame()
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.`vaura.stage` = '{stage}'", output_format="pandas",
        max_results=50000,
    )
    return _with_skip_reasons(runs, experiment) if stage == "evaluate" else runs


def _with_skip_reasons(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Add ``tags.metric.<name>.reason`` to each run from its parent's ``skip.<key>`` tags (a skip reason is
    logged once per pipeline run; each run carries only the key, ``metric.<name>.skip``)."""
    import mlflow

    keys = [c for c in runs.columns if c.startswith("tags.metric.") and c.endswith(".skip")]
    if runs.empty or not keys or "tags.mlflow.parentRunId" not in runs.columns:
        return runs
    parents = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`vaura.role` = 'pipeline'",
                                 output_format="pandas", max_results=50000).set_index("run_id")
    runs = runs.copy()
    for col in keys:
        def reason(row: pd.Series, col: str = col) -> Any:
            key, parent = row[col], row["tags.mlflow.parentRunId"]
            if pd.isna(key) or parent not in parents.index:
                return None
            return parents.at[parent, f"tags.skip.{key}"] if f"tags.skip.{key}" in parents.columns else None

        runs[col[: -len(".skip")] + ".reason"] = runs.apply(reason, axis=1)
    return runs


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def _float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


VARIANT_KEYS = ("tags.vaura.pipeline_id", "tags.dvc.exp_name", "params.filter.threshold", "params.model.conditioning")


def _variant_key(run: pd.Series) -> tuple[str, ...]:
    """Which training a run belongs to: pipeline id, DVC experiment and the variant's params (an ablation flow
    runs all its variants under one pipeline id, so the id alone is not enough)."""
    return tuple("" if pd.isna(run.get(k)) else str(run.get(k)) for k in VARIANT_KEYS)


def train_hours(train_runs: pd.DataFrame) -> dict[tuple[str, ...], tuple[float, str]]:
    """``variant key → (device-hours, device kind)`` of the latest finished train run of each variant.

    Device-hours = wall-clock duration × processes (tag ``vaura.world_size``, else param ``train.nproc``); the
    kind is GPU when the run's ``train.device`` is cuda or it logged GPU system metrics, else CPU.
    """
    if train_runs.empty:
        return {}
    df = train_runs[_col(train_runs, "status") == "FINISHED"].sort_values("start_time")
    out: dict[tuple[str, ...], tuple[float, str]] = {}
    for _, r in df.iterrows():
        if pd.isna(r.get("end_time")):
            continue
        hours = (r["end_time"] - r["start_time"]).total_seconds() / 3600.0
        procs = pd.to_numeric(r.get("tags.vaura.world_size"), errors="coerce")
        if pd.isna(procs):
            procs = pd.to_numeric(r.get("params.train.nproc"), errors="coerce")
        procs = 1 if pd.isna(procs) else int(procs)
        gpu = str(r.get("params.train.device")) == "cuda" or any(
            c.startswith("metrics.system/gpu") and pd.notna(r[c]) for c in df.columns
        )
        out[_variant_key(r)] = (hours * procs, "GPU" if gpu else "CPU")
    return out


def _cell(run: pd.Series, metric_col: str, metric_name: str, fmt: str) -> str:
    value = run.get(f"metrics.{metric_col}")
    if value is not None and not pd.isna(value):
        return fmt.format(float(value))
    status = run.get(f"tags.metric.{metric_name}.status")
    if status == "skipped":
        return f"skipped: {run.get(f'tags.metric.{metric_name}.reason') or 'no reason recorded'}"
    if status == "ok":
        return "n/a: undefined (no matched onsets)" if metric_name == "onset_sync" else "n/a: undefined"
    return "n/a: metric not computed by this run"


def _backbone(runs: pd.DataFrame, metric_name: str) -> str:
    vals = sorted({str(v) for v in _col(runs, f"tags.metric.{metric_name}.backbone").dropna() if str(v)})
    return ", ".join(vals)


def _latest(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    return runs.sort_values("start_time").drop_duplicates(key, keep="last").sort_values(key)


def _metric_cells(run: pd.Series) -> dict[str, str]:
    return {col: _cell(run, m, name, fmt) for col, (m, name, fmt) in METRIC_COLUMNS.items()}


def _headers(runs: pd.DataFrame) -> dict[str, str]:
    """Column → header with the backbone named (e.g. ``FAD (log-mel, weight-free)``)."""
    out = {}
    for col, (_, name, _) in METRIC_COLUMNS.items():
        bb = _backbone(runs, name) if name in ("fad", "kld", "ib") else ""
        out[col] = f"{col.split(' (')[0]} ({bb})" if bb else col
    return out


def _select(runs: pd.DataFrame, cfg: ReportConfig, group: str | None, threshold: float | None,
            conditioning: str | None) -> pd.DataFrame:
    df = runs[_col(runs, "tags.vaura.eval.test_set") == cfg.test_set]
    if group is not None:
        df = df[_col(df, "tags.vaura.eval.group") == group]
    else:
        df = df[_col(df, "tags.vaura.eval.group").astype(str).str.match(r"^g[-0-9.e]+$")]
    if threshold is not None:
        df = df[np.isclose(_float(_col(df, "params.filter.threshold")), threshold)]
    if conditioning is not None:
        df = df[_col(df, "params.model.conditioning") == conditioning]
    return df


def build_tables(eval_runs: pd.DataFrame, train_runs: pd.DataFrame, cfg: ReportConfig) -> dict[str, pd.DataFrame]:
    """``{"threshold": Table II, "conditioning": Table III, "cfg": Table IV}`` as string-celled DataFrames
    (a skipped cell reads ``skipped: <full reason>``)."""
    if eval_runs.empty:
        raise ReportError("no `evaluate` runs in the MLflow experiment (run `vaura evaluate` first)")
    gname = f"g{cfg.cfg_scale:g}"
    hours = train_hours(train_runs)
    tables: dict[str, pd.DataFrame] = {}

    df = _select(eval_runs, cfg, gname, None, cfg.baseline_conditioning).copy()
    df["_thr"] = _float(_col(df, "params.filter.threshold"))
    rows = []
    for _, r in _latest(df, "_thr").iterrows():
        h = hours.get(_variant_key(r))
        clips = r.get("metrics.data.train_clips")
        rows.append({
            "threshold": f"{r['_thr']:g}",
            "train clips": "n/a: no data/splits/train.csv" if clips is None or pd.isna(clips) else f"{int(clips)}",
            "training device-hours": f"{h[0]:.3f} {h[1]}-h" if h else "n/a: no finished train run of this variant",
            **_metric_cells(r),
        })
    tables["threshold"] = _frame(rows, ["threshold", "train clips", "training device-hours"], df)

    df = _select(eval_runs, cfg, gname, cfg.baseline_threshold, None).copy()
    df["_cond"] = _col(df, "params.model.conditioning").astype(str)
    rows = [{"conditioning": r["_cond"], **_metric_cells(r)} for _, r in _latest(df, "_cond").iterrows()]
    tables["conditioning"] = _frame(rows, ["conditioning"], df)

    df = _select(eval_runs, cfg, None, cfg.baseline_threshold, cfg.baseline_conditioning).copy()
    df["_g"] = _float(_col(df, "tags.vaura.eval.cfg_scale"))
    rows = [{"γ": f"{r['_g']:g}", **_metric_cells(r)} for _, r in _latest(df, "_g").iterrows()]
    for ref in ("recon", "reference"):
        extra = _select(eval_runs, cfg, ref, None, None)  # real audio and its codec recon: no model variant
        if len(extra):
            label = "codec reconstruction" if ref == "recon" else "reference (real audio)"
            rows.append({"γ": label, **_metric_cells(extra.sort_values("start_time").iloc[-1])})
    tables["cfg"] = _frame(rows, ["γ"], df)
    return tables


def _frame(rows: Sequence[dict[str, Any]], keys: list[str], runs: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=keys + list(METRIC_COLUMNS))
    return df.rename(columns=_headers(runs))


def footnoted(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``df`` with each ``skipped: <reason>`` cell shortened to ``skipped [n]`` and ``{reason: n}`` (numbered in
    reading order), so a column skipped in every row does not repeat a long sentence."""
    reasons: dict[str, int] = {}
    short = df.copy()
    for i in range(len(df)):
        for j in range(df.shape[1]):
            text = str(df.iat[i, j])
            if text.startswith("skipped: "):
                short.iat[i, j] = f"skipped [{reasons.setdefault(text[len('skipped: '):], len(reasons) + 1)}]"
    return short, reasons


def to_markdown(df: pd.DataFrame, title: str, note: str = "") -> str:
    """A GitHub-markdown table (no extra dependency); skip reasons become numbered notes under the table
    (:func:`footnoted`)."""
    short, reasons = footnoted(df)

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(cell(c) for c in short.columns) + " |")
    lines.append("|" + "|".join("---" for _ in short.columns) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in short.itertuples(index=False)]
    if df.empty:
        lines += ["", "_No runs match this table's selection yet._"]
    if reasons:
        lines += ["", "Skipped metrics:", ""] + [f"[{n}] {r}  " for r, n in reasons.items()]
    return "\n".join(lines) + "\n"


def cfg_curve(eval_runs: pd.DataFrame, cfg: ReportConfig) -> pd.DataFrame:
    """Table IV as numbers for ``dvc plots``: ``cfg_scale`` + one numeric column per metric (NaN when skipped)."""
    if eval_runs.empty:
        return pd.DataFrame(columns=["cfg_scale"] + [m for m, _, _ in METRIC_COLUMNS.values()])
    df = _select(eval_runs, cfg, None, cfg.baseline_threshold, cfg.baseline_conditioning).copy()
    df["cfg_scale"] = _float(_col(df, "tags.vaura.eval.cfg_scale"))
    df = _latest(df, "cfg_scale")
    out = pd.DataFrame({"cfg_scale": df["cfg_scale"].to_numpy()})
    for metric, _, _ in METRIC_COLUMNS.values():
        out[metric] = _float(_col(df, f"metrics.{metric}")).to_numpy()
    return out
