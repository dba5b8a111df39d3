"""Paper-shaped ablation tables from the variants' metrics files: threshold (Table II), conditioning (Table III),
CFG γ (Table IV), plus every variant side by side.

Input: one ``metrics.json`` per ablation variant (``<data>/eval/<variant>/metrics.json``, written by
``vaura evaluate --variant``; see :func:`vaura.eval.evaluate.metrics_json`) and the training wall time beside it
(``timing.json``, kept apart so identical runs give identical metrics) — the report stage's DVC deps, and
nothing else: what else sits in an MLflow store cannot change a table. Which variant lands in which table
follows from its overrides (``ablation.variants``): only ``filter`` keys → Table II; only
``model.conditioning`` → Table III; the baseline is in both and alone in Table IV. Each cell is the value with
its bootstrap interval (``evaluate.bootstrap``); a metric that did not run says why.

Each comparison under a table is tested twice: by non-overlapping intervals of the two values (strict), and by
the paired bootstrap interval of the onset-F1 difference on the same test clips × samples (``onsets.csv`` beside
each ``metrics.json``), which removes the clip-to-clip spread both sides share.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from vaura.config import bounded
from vaura.eval.bootstrap import BootstrapConfig
from vaura.eval.evaluate import ITEM_COLUMNS, METRIC_KEYS
from vaura.eval.onset_sync import f1_difference

# table column → (metric name in metrics.json, value key, number format, higher is better)
METRIC_COLUMNS: dict[str, tuple[str, str, str, bool]] = {
    "onset F1": ("onset_sync", "f1", "{:.3f}", True),
    "FAD": ("fad", "fad", "{:.2f}", False),
    "KLD": ("kld", "kld", "{:.2f}", False),
    "IB": ("ib", "ib", "{:.2f}", True),
    "Sync (ms)": ("sync", "sync_ms", "{:.0f}", False),
    "DeSync (s)": ("desync", "desync_s", "{:.3f}", False),
    "onset |offset| (ms)": ("onset_sync", "offset_ms", "{:.1f}", False),
    "missed": ("onset_sync", "missed", "{:.0f}", False),
    "extra": ("onset_sync", "extra", "{:.0f}", False),
}
# The metric that chooses γ on the validation split and decides the conclusions (the offline benchmark's
# ground-truth alignment metric), and the one that backs it up.
PRIMARY, SECONDARY = "onset F1", "FAD"


@dataclass
class ReportConfig:
    """params.yaml section ``report``."""

    test_set: str = "test"
    # γ of Tables II and III; None = the baseline's best onset F1 on ``select_set`` (a validation split).
    cfg_scale: float | None = bounded(6.0, ge=0)
    select_set: str = "val"


class ReportError(ValueError):
    """Metrics files missing or not matching the variants (says which file and why)."""


@dataclass
class Cell:
    """One table value: the point estimate and its interval, or why there is none."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    why: str = ""

    def text(self, fmt: str) -> str:
        if self.value is None:
            return self.why
        if self.low is None or self.high is None:
            return fmt.format(self.value)
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def read_metrics(eval_dir: str | Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``variant → metrics.json`` for every variant, with its ``timing.json`` as ``variant.train.minutes`` (a
    missing or foreign metrics file is a :class:`ReportError`)."""
    out = {}
    for name in names:
        path = Path(eval_dir) / name / "metrics.json"
        if not path.is_file():
            raise ReportError(f"{path}: not found (run `dvc repro` so `evaluate@{name}` writes it)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not JSON ({exc})") from exc
        got = (data.get("variant") or {}).get("name")
        if got != name:
            raise ReportError(f"{path}: written for variant {got!r}, expected {name!r}")
        timing = path.with_name("timing.json")
        if timing.is_file():
            try:
                minutes = json.loads(timing.read_text()).get("train_minutes")
            except json.JSONDecodeError as exc:
                raise ReportError(f"{timing}: not JSON ({exc})") from exc
            data["variant"].setdefault("train", {})["minutes"] = minutes
        out[name] = data
    return out


def read_items(eval_dir: str | Path, names: Sequence[str]) -> dict[str, pd.DataFrame | None]:
    """``variant → onsets.csv`` (per-item onset counts; None where a variant has none: its comparisons are then
    unpaired only). A file without the expected columns is a :class:`ReportError`."""
    out: dict[str, pd.DataFrame | None] = {}
    for name in names:
        path = Path(eval_dir) / name / "onsets.csv"
        if not path.is_file():
            out[name] = None
            continue
        try:
            df = pd.read_csv(path, dtype={"test_set": str, "group": str, "clip": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ReportError(f"{path}: not a CSV table ({exc})") from exc
        missing = set(ITEM_COLUMNS) - set(df.columns)
        if missing:
            raise ReportError(f"{path}: columns {sorted(missing)} missing (expected {', '.join(ITEM_COLUMNS)})")
        out[name] = df
    return out


def cell(metrics: Mapping[str, Any], test_set: str, group: str, column: str) -> Cell:
    """The value of ``column`` for one group (``g6``, ``recon``, ``reference``) of one test set."""
    name, key, _, _ = METRIC_COLUMNS[column]
    groups = metrics.get(test_set)
    if not isinstance(groups, Mapping):
        return Cell(why=f"n/a: no test set '{test_set}' in this variant's sweep")
    g = groups.get(group)
    if not isinstance(g, Mapping):
        return Cell(why=f"n/a: no group '{group}' (γ not in sweep.cfg_scales?)")
    res = g.get(name) or {}
    if res.get("status") == "skipped":
        return Cell(why=f"skipped: {res.get('reason') or 'no reason recorded'}")
    if res.get("status") != "ok":
        return Cell(why="n/a: metric not computed")
    value = res.get(key)
    if value is None:
        return Cell(why="n/a: undefined (no matched onsets)" if name == "onset_sync" else "n/a: undefined")
    return Cell(float(value), res.get(f"{key}_low"), res.get(f"{key}_high"))


def gamma_group(gamma: float) -> str:
    return f"g{gamma:g}"


def choose_cfg_scale(metrics: Mapping[str, Any], cfg: ReportConfig) -> tuple[float, str]:
    """γ for Tables II/III and the sentence that says where it came from (never chosen on the test set)."""
    if cfg.cfg_scale is not None:
        return cfg.cfg_scale, f"γ = {cfg.cfg_scale:g}, fixed by report.cfg_scale (the paper's choice is γ = 6)."
    if cfg.select_set == cfg.test_set:
        raise ReportError("report.select_set equals report.test_set: γ must not be chosen on the test set")
    groups = metrics.get(cfg.select_set)
    if not isinstance(groups, Mapping):
        raise ReportError(f"report.cfg_scale is null but the baseline's sweep has no test set "
                          f"'{cfg.select_set}' (report.select_set) to choose γ on")
    scores = {}
    for g in groups.values():
        if isinstance(g, Mapping) and g.get("cfg_scale") is not None and float(g["cfg_scale"]) > 0:
            c = cell(metrics, cfg.select_set, gamma_group(float(g["cfg_scale"])), PRIMARY)
            if c.value is not None:
                scores[float(g["cfg_scale"])] = c.value
    if not scores:
        raise ReportError(f"report.cfg_scale is null but no γ > 0 has an {PRIMARY} on '{cfg.select_set}' "
                          f"(real data has no onset ground truth: set report.cfg_scale, e.g. the paper's 6)")
    best = max(scores, key=lambda k: (scores[k], -k))
    listing = ", ".join(f"γ={k:g}: {v:.3f}" for k, v in sorted(scores.items()))
    return best, (f"γ = {best:g}, chosen as the baseline's best {PRIMARY} on the validation set "
                  f"'{cfg.select_set}' ({listing}); never on the test set.")


def _touches_only(overrides: Mapping[str, Any], prefixes: Sequence[str]) -> bool:
    return bool(overrides) and all(any(k == p or k.startswith(p + ".") for p in prefixes) for k in overrides)


def _threshold_label(v: Mapping[str, Any]) -> str:
    if "train" not in (v.get("filter.apply_to") or []):
        return "unfiltered"
    return f"{float(v['filter.threshold']):g}"


def _train_cost(v: Mapping[str, Any]) -> str:
    t = v.get("train") or {}
    if t.get("minutes") is None:
        return "n/a: no train metrics"
    hours = float(t["minutes"]) / 60.0 * int(t.get("world_size") or 1)
    capped = " (stopped by train.max_minutes)" if t.get("stopped_early") else ""
    return f"{hours:.3f} {str(t.get('device') or '?').upper()}-h, {t.get('steps')} steps{capped}"


def _row(metrics: Mapping[str, Any], test_set: str, group: str) -> dict[str, Cell]:
    return {col: cell(metrics, test_set, group, col) for col in METRIC_COLUMNS}


@dataclass
class Table:
    """Rows of labelled cells, the γ note, the comparisons under the table and the bootstrap note."""

    keys: list[str]
    rows: list[tuple[dict[str, str], dict[str, Cell]]]
    note: str = ""
    conclusions: list[str] | None = None

    def frame(self) -> pd.DataFrame:
        data = [{**labels, **{c: cells[c].text(METRIC_COLUMNS[c][2]) for c in METRIC_COLUMNS}}
                for labels, cells in self.rows]
        return pd.DataFrame(data, columns=self.keys + list(METRIC_COLUMNS))

    def numbers(self) -> pd.DataFrame:
        """The table as numbers: per metric ``<name>``, ``<name>_low``, ``<name>_high`` (names of
        :data:`vaura.eval.evaluate.METRIC_KEYS`, e.g. ``onset_f1``; NaN: none)."""
        data = []
        for labels, cells in self.rows:
            row: dict[str, Any] = dict(labels)
            for col, (name, key, _, _) in METRIC_COLUMNS.items():
                c = cells[col]
                col_name = METRIC_KEYS[(name, key)]
                for suffix, v in (("", c.value), ("_low", c.low), ("_high", c.high)):
                    row[col_name + suffix] = math.nan if v is None else v
            data.append(row)
        return pd.DataFrame(data)


def compare(what: str, a_label: str, a: Cell, b_label: str, b: Cell, higher_is_better: bool) -> str:
    """One conclusion line: does ``a`` beat ``b`` with non-overlapping intervals?"""
    if a.value is None or b.value is None or None in (a.low, a.high, b.low, b.high):
        return f"- {what}: not testable ({a_label}: {a.why or 'no interval'}; {b_label}: {b.why or 'no interval'})."
    a_better = a.value > b.value if higher_is_better else a.value < b.value
    disjoint = a.low > b.high or b.low > a.high  # type: ignore[operator]
    vs = f"{a_label} {a.value:.3g} [{a.low:.3g}, {a.high:.3g}] vs {b_label} {b.value:.3g} [{b.low:.3g}, {b.high:.3g}]"
    if disjoint and a_better:
        verdict = "HOLDS (intervals do not overlap)"
    elif disjoint:
        verdict = "REVERSED (intervals do not overlap, the other way round)"
    else:
        verdict = "NOT SHOWN (the intervals overlap)"
    return f"- {what}: {verdict}: {vs}."


@dataclass
class Side:
    """One side of a paired comparison: a label and the per-item onset counts of one group (None: none)."""

    label: str
    items: pd.DataFrame | None
    test_set: str
    group: str

    def rows(self) -> pd.DataFrame | None:
        if self.items is None:
            return None
        df = self.items[(self.items["test_set"] == self.test_set) & (self.items["group"] == self.group)]
        return df.sort_values(["clip", "sample"], kind="stable").reset_index(drop=True)


def paired(what: str, a: Side, b: Side, boot: Mapping[str, Any] | None) -> str:
    """One conclusion line from the paired bootstrap of ``a``'s pooled onset F1 minus ``b``'s on the same test
    clips × samples (:func:`vaura.eval.onset_sync.f1_difference`): does the difference's interval exclude 0?"""
    head = f"- {what} on {PRIMARY}, paired"
    ra, rb = a.rows(), b.rows()
    if ra is None or rb is None:
        return f"{head}: not testable (no per-item onset counts: onsets.csv of {a.label if ra is None else b.label})."
    if not boot:
        return f"{head}: not testable (the metrics files record no bootstrap settings)."
    if ra.empty or rb.empty:
        return (f"{head}: not testable (onsets.csv of {a.label if ra.empty else b.label} has no items of group "
                f"{(a if ra.empty else b).group} on '{a.test_set}': onset-sync needs the benchmark's true events).")
    if not ra[["clip", "sample"]].equals(rb[["clip", "sample"]]):
        return (f"{head}: not testable (the two sides scored different test items: {len(ra)} vs {len(rb)} "
                f"clip × sample pairs, or other clips).")
    conf = BootstrapConfig(n=int(boot["n"]), seed=int(boot["seed"]), level=float(boot["level"]))
    diff, low, high = f1_difference(ra, rb, list(ra["clip"]), conf)
    if low > 0:
        verdict = "HOLDS (the interval of the difference excludes 0)"
    elif high < 0:
        verdict = "REVERSED (the interval of the difference excludes 0, the other way round)"
    else:
        verdict = "NOT SHOWN (the interval of the difference contains 0)"
    n_clips = ra["clip"].nunique()
    return (f"{head} (the same {n_clips} test clips × {len(ra) // max(n_clips, 1)} samples): {a.label} − {b.label} "
            f"= {diff:+.3f} [{low:+.3f}, {high:+.3f}]: {verdict}.")


def build_tables(metrics: Mapping[str, Mapping[str, Any]], baseline: str, cfg: ReportConfig,
                 items: Mapping[str, pd.DataFrame | None] | None = None) -> tuple[dict[str, Table], float]:
    """``{"threshold": II, "conditioning": III, "cfg": IV, "variants": all}`` and the γ of Tables II/III.

    With ``items`` (:func:`read_items`), each comparison also gets its paired line (:func:`paired`)."""
    if baseline not in metrics:
        raise ReportError(f"no metrics for the baseline variant {baseline!r}")
    base = metrics[baseline]
    boot = base.get("bootstrap")

    gamma, gamma_note = choose_cfg_scale(base, cfg)
    g = gamma_group(gamma)
    ts = cfg.test_set

    def judged(what: str, a: tuple[str, str, str], b: tuple[str, str, str]) -> list[str]:
        """The conclusion lines of "``a`` better than ``b``": each side is (variant, group, label)."""
        lines = [compare(f"{what} on {col}", a[2], cell(metrics[a[0]], ts, a[1], col), b[2],
                         cell(metrics[b[0]], ts, b[1], col), METRIC_COLUMNS[col][3]) for col in (PRIMARY, SECONDARY)]
        if items is not None:
            lines.append(paired(what, *(Side(label, items.get(name), ts, group) for name, group, label in (a, b)),
                                boot))
        return lines

    info = {name: m.get("variant") or {} for name, m in metrics.items()}
    tables: dict[str, Table] = {}

    thr = [n for n in metrics if n == baseline or _touches_only(info[n].get("overrides") or {}, ["filter"])]
    thr.sort(key=lambda n: (-math.inf if _threshold_label(info[n]) == "unfiltered"
                            else float(info[n]["filter.threshold"])))
    rows = [({"variant": n, "threshold": _threshold_label(info[n]),
              "train clips": "n/a" if info[n].get("train_clips") is None else str(info[n]["train_clips"]),
              "training cost": _train_cost(info[n])}, _row(metrics[n], ts, g)) for n in thr]
    lines = [line for n in thr if n != baseline
             for line in judged(f"filtered ({baseline}) better than {n}", (baseline, g, baseline), (n, g, n))]
    tables["threshold"] = Table(["variant", "threshold", "train clips", "training cost"], rows, gamma_note, lines)

    cond = [n for n in metrics if n == baseline
            or _touches_only(info[n].get("overrides") or {}, ["model.conditioning"])]
    rows = [({"variant": n, "conditioning": str(info[n].get("model.conditioning"))}, _row(metrics[n], ts, g))
            for n in cond]
    lines = [line for n in cond if n != baseline
             for line in judged(f"{info[baseline].get('model.conditioning')} better than "
                                f"{info[n].get('model.conditioning')}", (baseline, g, baseline), (n, g, n))]
    tables["conditioning"] = Table(["variant", "conditioning"], rows, gamma_note, lines)

    groups = base.get(ts) or {}
    gammas = sorted(float(v["cfg_scale"]) for v in groups.values()
                    if isinstance(v, Mapping) and v.get("cfg_scale") is not None)
    rows = [({"γ": f"{x:g}" + (" (null condition only)" if x == 0 else "")}, _row(base, ts, gamma_group(x)))
            for x in gammas]
    for ref, label in (("recon", "codec reconstruction"), ("reference", "reference (real audio)")):
        if ref in groups:
            rows.append(({"γ": label}, _row(base, ts, ref)))
    lines = judged(f"conditioned (γ={gamma:g}) better than the null condition (γ=0)", (baseline, g, f"γ={gamma:g}"),
                   (baseline, "g0", "γ=0")) if 0.0 in gammas else []
    tables["cfg"] = Table(["γ"], rows, f"Variant `{baseline}`, every γ of the sweep. Tables II/III use {gamma_note}",
                          lines)

    rows = [({"variant": n, "overrides": ", ".join(f"{k}={v}" for k, v in (info[n].get("overrides") or {}).items())
              or "(baseline)"}, _row(metrics[n], ts, g)) for n in metrics]
    tables["variants"] = Table(["variant", "overrides"], rows, gamma_note)
    return tables, gamma


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


def to_markdown(table: Table, title: str, preamble: Sequence[str] = ()) -> str:
    """A GitHub-markdown table (no extra dependency); skip reasons become numbered notes under it
    (:func:`footnoted`), conclusions follow."""
    short, reasons = footnoted(table.frame())

    def text(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", ""] + [p for item in preamble for p in (item, "")]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(text(c) for c in short.columns) + " |")
    lines.append("|" + "|".join("---" for _ in short.columns) + "|")
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in short.itertuples(index=False)]
    if short.empty:
        lines += ["", "_No variant of the ablation belongs in this table._"]
    if table.conclusions:
        lines += ["", "Conclusions (by the 95 % intervals):", ""] + table.conclusions
    if reasons:
        lines += ["", "Skipped metrics:", ""] + [f"[{n}] {r}  " for r, n in reasons.items()]
    return "\n".join(lines) + "\n"


def bootstrap_note(metrics: Mapping[str, Mapping[str, Any]], test_set: str) -> str:
    """How the intervals were computed (from the metrics files themselves, so the note cannot drift)."""
    boots = {json.dumps(m.get("bootstrap"), sort_keys=True) for m in metrics.values()}
    if len(boots) != 1 or not json.loads(next(iter(boots))):
        return "Intervals: not available for every variant (metrics files from different evaluate settings)."
    b = json.loads(next(iter(boots)))
    sizes = sorted({(g.get("n_clips"), g.get("n_samples")) for m in metrics.values()
                    for name, g in (m.get(test_set) or {}).items() if name.startswith("g")})
    sizes_text = ", ".join(f"{c} clips × {s // max(c, 1)} samples" for c, s in sizes if c)
    return (f"Cells: value on the whole test set [{b['level'] * 100:g} % bootstrap interval], resampling "
            f"{b['over']}; n = {b['n']} resamples (FAD: {b['fad_n']}), seed {b['seed']}; test set `{test_set}`: "
            f"{sizes_text}.")
