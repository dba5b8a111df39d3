"""evaluate → per-variant metrics.json → report: the paper tables with intervals, γ chosen on val, hermetic."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vaura.eval.evaluate import Group, flat_metrics, group_tags, metrics_json
from vaura.eval.report import ReportConfig, ReportError, build_tables, read_items, read_metrics, to_markdown
from vaura.eval.results import MetricResult

SKIP_KLD = MetricResult.skipped("kld", "PaSST weights not found at weights/passt.pt: download it", backbone="passt")


def _group(test_set: str, name: str, gamma: float | None, f1: float, half_width: float = 0.02) -> Group:
    g = Group(test_set, name, gamma, n_clips=4, n_samples=8 if gamma is not None else 4, sample_rate=16000)
    onset = MetricResult.ok("onset_sync", {"f1": f1, "offset_ms": 30.0, "missed": 2, "extra": 1, "precision": f1,
                                           "recall": f1}, backbone="flux")
    onset.intervals = {"f1": (f1 - half_width, f1 + half_width)}
    fad = MetricResult.ok("fad", {"fad": 10 * (1 - f1)}, backbone="log-mel, weight-free")
    fad.intervals = {"fad": (10 * (1 - f1) - 10 * half_width, 10 * (1 - f1) + 10 * half_width)}
    g.metrics = {"onset_sync": onset, "fad": fad, "kld": SKIP_KLD}
    return g


def _variant_doc(name: str, overrides: dict, f1_test: dict[float, float], f1_val: dict[float, float],
                 threshold: float = 0.3, apply_to: tuple = ("train",), conditioning: str = "fusion",
                 half_width: float = 0.02) -> dict:
    groups = [_group("test", "reference", None, 0.95), _group("test", "recon", None, 0.9)]
    groups += [_group("test", f"g{g:g}", g, f, half_width) for g, f in f1_test.items()]
    groups += [_group("val", f"g{g:g}", g, f, half_width) for g, f in f1_val.items()]
    info = {"name": name, "overrides": overrides, "filter.threshold": threshold, "filter.apply_to": list(apply_to),
            "model.conditioning": conditioning, "train_clips": 100 if "train" in apply_to else 160,
            "train": {"steps": 900, "world_size": 1, "device": "cpu", "stopped_early": False}}
    from vaura.eval.bootstrap import BootstrapConfig

    return json.loads(json.dumps(metrics_json(groups, info, BootstrapConfig(n=500, fad_n=100, seed=7))))


def _items(hits: dict[str, tuple[int, int]], clips: tuple[str, ...] = ("a", "b", "c", "d")) -> pd.DataFrame:
    """onsets.csv of one variant: every test item (clip × 2 samples) has 4 true events; ``hits[group]`` =
    (tp, fp) of every item of that group."""
    return pd.DataFrame([{"test_set": "test", "group": group, "clip": clip, "sample": k, "tp": tp, "fp": fp,
                          "fn": 4 - tp} for group, (tp, fp) in hits.items() for clip in clips for k in (1, 0)])


# baseline: every event hit at γ=3, none at γ=0; prepend: the same items as the baseline; unfiltered: one hit
# fewer and one extra onset per item (F1 0.75 against the baseline's 1.0).
ITEMS = {"baseline": _items({"g0": (0, 3), "g3": (4, 0)}), "prepend": _items({"g0": (0, 3), "g3": (4, 0)}),
         "unfiltered": _items({"g0": (0, 3), "g3": (3, 1)})}


def _ablation(tmp: Path) -> dict[str, dict]:
    """Three variants whose val and test disagree on the best γ (val: 3, test: 1), each with its onsets.csv."""
    docs = {
        "baseline": _variant_doc("baseline", {}, {0.0: 0.15, 1.0: 0.80, 3.0: 0.70}, {0.0: 0.2, 1.0: 0.5, 3.0: 0.6}),
        "prepend": _variant_doc("prepend", {"model.conditioning": "prepend"}, {0.0: 0.1, 1.0: 0.5, 3.0: 0.45},
                                {1.0: 0.3, 3.0: 0.3}, conditioning="prepend"),
        "unfiltered": _variant_doc("unfiltered", {"filter.apply_to": []}, {0.0: 0.15, 1.0: 0.78, 3.0: 0.69},
                                   {1.0: 0.5, 3.0: 0.5}, apply_to=()),
    }
    for name, doc in docs.items():
        path = tmp / "data" / "eval" / name / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        path.with_name("timing.json").write_text(json.dumps({"train_minutes": 6.0}))
        ITEMS[name].to_csv(path.with_name("onsets.csv"), index=False)
    return docs


def test_tables_have_every_variant_intervals_and_gamma_chosen_on_val(tmp_path) -> None:
    docs = _ablation(tmp_path)
    tables, gamma = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=None, select_set="val"))
    assert gamma == 3.0  # best on val (0.6); the test set's best (γ=1) must not be what picks it
    thr = tables["threshold"].frame()
    assert list(thr["threshold"]) == ["unfiltered", "0.3"] and list(thr["variant"]) == ["unfiltered", "baseline"]
    assert list(thr["onset F1"]) == ["0.690 [0.670, 0.710]", "0.700 [0.680, 0.720]"]  # the γ=3 test values
    assert list(thr["train clips"]) == ["160", "100"]
    cond = tables["conditioning"].frame()
    assert list(cond["conditioning"]) == ["fusion", "prepend"]
    cfg = tables["cfg"].frame()
    assert list(cfg["γ"]) == ["0 (null condition only)", "1", "3", "codec reconstruction", "reference (real audio)"]
    assert cfg["KLD"].str.startswith("skipped").all()
    assert "chosen as the baseline's best onset F1 on the validation set 'val'" in tables["threshold"].note
    assert set(tables["variants"].frame()["variant"]) == {"baseline", "prepend", "unfiltered"}


def test_conclusions_follow_the_intervals(tmp_path) -> None:
    docs = _ablation(tmp_path)
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0))
    cond = "\n".join(tables["conditioning"].conclusions or [])
    assert "fusion better than prepend on onset F1: HOLDS" in cond          # 0.70±0.02 vs 0.45±0.02
    thr = "\n".join(tables["threshold"].conclusions or [])
    assert "better than unfiltered on onset F1: NOT SHOWN" in thr            # 0.70±0.02 vs 0.69±0.02 overlap
    cfg = "\n".join(tables["cfg"].conclusions or [])
    assert "better than the null condition (γ=0) on onset F1: HOLDS" in cfg
    assert "on FAD: HOLDS" in cfg                                            # FAD: lower is better
    flipped = dict(docs, prepend=_variant_doc("prepend", {"model.conditioning": "prepend"}, {3.0: 0.9}, {},
                                              conditioning="prepend"))
    tables, _ = build_tables(flipped, "baseline", ReportConfig(test_set="test", cfg_scale=3.0))
    assert "onset F1: REVERSED" in "\n".join(tables["conditioning"].conclusions or [])


def test_paired_comparisons_resample_the_same_test_items_for_both_sides(tmp_path) -> None:
    """The separate intervals of baseline and unfiltered overlap (NOT SHOWN), but unfiltered is worse on every
    item, so the paired difference is exactly 1 − 0.75 in every resample: HOLDS."""
    docs = _ablation(tmp_path)
    items = read_items(tmp_path / "data" / "eval", list(docs))
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0), items)
    thr = "\n".join(tables["threshold"].conclusions or [])
    assert "better than unfiltered on onset F1: NOT SHOWN" in thr
    assert ("filtered (baseline) better than unfiltered on onset F1, paired (the same 4 test clips × 2 samples): "
            "baseline − unfiltered = +0.250 [+0.250, +0.250]: HOLDS") in thr
    cond = "\n".join(tables["conditioning"].conclusions or [])
    assert "baseline − prepend = +0.000 [+0.000, +0.000]: NOT SHOWN (the interval of the difference contains 0)" in cond
    cfg = "\n".join(tables["cfg"].conclusions or [])
    assert "γ=3 − γ=0 = +1.000 [+1.000, +1.000]: HOLDS" in cfg

    flipped = dict(items, prepend=_items({"g3": (4, 4)}))  # twice the onsets: F1 2/3
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0), flipped)
    assert "baseline − prepend = +0.333 [+0.333, +0.333]: HOLDS" in "\n".join(tables["conditioning"].conclusions)
    better = dict(items, prepend=_items({"g3": (4, 0)}), baseline=_items({"g0": (0, 3), "g3": (2, 0)}))
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0), better)
    assert "baseline − prepend = -0.333 [-0.333, -0.333]: REVERSED" in "\n".join(tables["conditioning"].conclusions)


def test_paired_comparison_says_why_it_cannot_be_made(tmp_path) -> None:
    docs = _ablation(tmp_path)
    other_clips = dict(ITEMS, unfiltered=_items({"g3": (3, 1)}, clips=("a", "b", "c", "e")))
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0), other_clips)
    assert "paired: not testable (the two sides scored different test items" in "\n".join(tables["threshold"].conclusions)
    no_truth = dict(ITEMS, unfiltered=ITEMS["unfiltered"].iloc[:0])  # real data: onset-sync skipped, no rows
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0), no_truth)
    assert ("paired: not testable (onsets.csv of unfiltered has no items of group g3 on 'test': onset-sync needs "
            "the benchmark's true events)" in "\n".join(tables["threshold"].conclusions))
    (tmp_path / "data" / "eval" / "unfiltered" / "onsets.csv").unlink()
    items = read_items(tmp_path / "data" / "eval", list(docs))
    assert items["unfiltered"] is None
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0), items)
    assert ("paired: not testable (no per-item onset counts: onsets.csv of unfiltered)"
            in "\n".join(tables["threshold"].conclusions))
    (tmp_path / "data" / "eval" / "prepend" / "onsets.csv").write_text("clip,tp\na,1\n")
    with pytest.raises(ReportError, match=r"prepend/onsets.csv: columns \['fn', 'fp', 'group', 'sample', 'test_set'\]"):
        read_items(tmp_path / "data" / "eval", ["prepend"])


def test_gamma_is_never_chosen_on_the_test_set(tmp_path) -> None:
    docs = _ablation(tmp_path)
    with pytest.raises(ReportError, match="must not be chosen on the test set"):
        build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=None, select_set="test"))


def test_training_cost_comes_from_the_timing_file_beside_the_metrics(tmp_path) -> None:
    """The wall time is kept out of metrics.json (identical runs, identical metrics) and still reaches Table II."""
    _ablation(tmp_path)
    docs = read_metrics(tmp_path / "data" / "eval", ["baseline", "prepend", "unfiltered"])
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=None, select_set="val"))
    assert list(tables["threshold"].frame()["training cost"]) == ["0.100 CPU-h, 900 steps"] * 2
    (tmp_path / "data" / "eval" / "baseline" / "timing.json").unlink()
    docs = read_metrics(tmp_path / "data" / "eval", ["baseline", "prepend", "unfiltered"])
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=None, select_set="val"))
    assert list(tables["threshold"].frame()["training cost"]) == ["0.100 CPU-h, 900 steps", "n/a: no train metrics"]


def test_missing_or_foreign_metrics_file_is_a_clear_error(tmp_path) -> None:
    _ablation(tmp_path)
    with pytest.raises(ReportError, match=r"eval/other/metrics.json: not found"):
        read_metrics(tmp_path / "data" / "eval", ["baseline", "other"])
    (tmp_path / "data" / "eval" / "prepend" / "metrics.json").write_text(
        (tmp_path / "data" / "eval" / "baseline" / "metrics.json").read_text())
    with pytest.raises(ReportError, match="written for variant 'baseline', expected 'prepend'"):
        read_metrics(tmp_path / "data" / "eval", ["prepend"])


def _report_params(tmp_path: Path) -> Path:
    from vaura.profiles import render

    params = yaml.safe_load(render("offline", Path(__file__).resolve().parents[1] / "configs"))
    params["tracking"].update(uri=f"sqlite:///{tmp_path}/mlruns.db", artifact_root=str(tmp_path / "art"),
                              system_metrics=False)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params, allow_unicode=True))
    return pfile


@pytest.mark.slow
def test_report_stage_reads_only_its_metrics_files(tmp_path, monkeypatch) -> None:
    """A foreign evaluate run in the MLflow store (better numbers, same variant params) changes no table."""
    from vaura.eval.evaluate import log_groups
    from vaura.stages import report

    _ablation(tmp_path)
    pfile = _report_params(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VAURA_PIPELINE_ID", "report-test")
    args = argparse.Namespace(params=pfile, root=tmp_path, no_track=False)
    assert report.run(args) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "reports").iterdir()}
    assert {"threshold.md", "conditioning.md", "cfg.md", "variants.md", "cfg_curve.csv"} <= set(first)
    assert "[0.680, 0.720]" in first["threshold.md"].decode()
    assert "baseline − unfiltered = +0.250 [+0.250, +0.250]: HOLDS" in first["threshold.md"].decode()  # onsets.csv
    params = yaml.safe_load(pfile.read_text())
    monkeypatch.setenv("VAURA_PIPELINE_ID", "foreign")
    log_groups(params, [_group("test", "g3", 3.0, 0.99)], train_clips=1, variant="baseline")
    assert report.run(args) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "reports").iterdir()} == first
    curve = pd.read_csv(tmp_path / "reports" / "cfg_curve.csv")
    assert list(curve["cfg_scale"]) == [0.0, 1.0, 3.0] and {"onset_f1", "onset_f1_low", "fad_high"} <= set(curve)

    # the tables on the pipeline's parent run: its description is the markdown, its MLflow tables the same cells
    import mlflow

    mlflow.set_tracking_uri(params["tracking"]["uri"])
    runs = mlflow.search_runs(experiment_names=[params["tracking"]["experiment"]],
                              filter_string="tags.`vaura.stage` = 'report'", output_format="pandas")
    # the offline profile leaves γ to the validation set (report.cfg_scale null): the run records which it chose
    assert len(runs) == 2 and set(runs["params.report.cfg_scale"]) == {"None"}
    assert set(runs["metrics.report.cfg_scale"]) == {3.0} and set(runs["tags.vaura.report.cfg_scale"]) == {"3"}
    parent_id = runs["tags.mlflow.parentRunId"].iloc[0]
    note = mlflow.get_run(parent_id).data.tags["mlflow.note.content"]
    for name in ("threshold", "conditioning", "cfg"):
        assert (tmp_path / "reports" / f"{name}.md").read_text() in note
    cfg_md = (tmp_path / "reports" / "cfg.md").read_text()

    def logged_table() -> dict:  # the file the UI's table view reads (load_table would re-parse "2.30" as 2.3)
        return json.loads(mlflow.artifacts.load_text(f"runs:/{parent_id}/tables/cfg.json"))

    logged = logged_table()
    csv_cfg = pd.read_csv(tmp_path / "reports" / "cfg.csv", dtype=str)
    assert logged["columns"] == list(csv_cfg.columns) and len(logged["data"]) == len(csv_cfg)
    for row in logged["data"]:
        assert "| " + " | ".join(row) + " |" in cfg_md  # same cells as the markdown table (reasons as [n])
    assert mlflow.get_run(parent_id).data.tags["mlflow.loggedArtifacts"].count("tables/cfg.json") == 1


def test_markdown_numbers_skip_reasons_and_lists_conclusions(tmp_path) -> None:
    docs = _ablation(tmp_path)
    tables, _ = build_tables(docs, "baseline", ReportConfig(test_set="test", cfg_scale=3.0))
    md = to_markdown(tables["conditioning"], "Table III", ["Cells: value [interval]"])
    assert "| skipped [1] |" in md and f"[1] {SKIP_KLD.reason}" in md
    assert "Conclusions (by the 95 % intervals):" in md and md.index("Cells:") < md.index("| variant |")


def test_metrics_json_and_tags_carry_skip_reasons_and_intervals() -> None:
    g = _group("syn", "g6", 6.0, 0.5)
    doc = metrics_json([g], {"name": "baseline"})
    assert doc["syn"]["g6"]["kld"] == {"status": "skipped", "backbone": "passt", "reason": SKIP_KLD.reason}
    assert doc["syn"]["g6"]["onset_sync"]["f1"] == 0.5
    assert (doc["syn"]["g6"]["onset_sync"]["f1_low"], doc["syn"]["g6"]["onset_sync"]["f1_high"]) == (0.48, 0.52)
    tags = group_tags(g)
    assert tags["metric.kld.status"] == "skipped" and tags["vaura.eval.cfg_scale"] == "6"
    assert "kld" not in flat_metrics(g) and flat_metrics(g)["onset_f1"] == 0.5


@pytest.mark.slow
def test_evaluate_stage_writes_metrics_and_mlflow_artifacts(tmp_path, monkeypatch) -> None:
    """The `evaluate` CLI of one variant on real MP4s + sweep WAVs: metrics.json with the variant and intervals,
    one MLflow run per group tagged with the variant, wav/png/mp4 artifacts."""
    import json

    import mlflow
    import numpy as np
    import soundfile as sf

    from vaura.media import write_video
    from vaura.stages import evaluate

    sr, data = 16000, tmp_path / "data"
    rng = np.random.default_rng(0)
    clip_audio = {}
    for clip in ("a", "b"):
        audio = 0.01 * rng.standard_normal(3 * sr).astype(np.float32)
        for hit in (1.0, 2.0) if clip == "b" else (1.0,):  # b has more events: the clip logged for listening
            at = int(hit * sr)
            audio[at : at + 800] += 0.8 * np.exp(-np.arange(800) / 128.0).astype(np.float32)
        clip_audio[clip] = audio
        write_video(data / "clips" / f"{clip}.mp4", rng.integers(0, 255, (75, 64, 64, 3), dtype=np.uint8), 25.0,
                    audio=audio, sample_rate=sr)
    (data / "raw").mkdir()
    (data / "splits" / "prepend").mkdir(parents=True)
    pd.DataFrame({"clip": ["a", "b", "b"], "time_s": [1.0, 1.0, 2.0], "class": ["x", "x", "x"]}).to_csv(
        data / "raw" / "events.csv", index=False)
    pd.DataFrame({"clip": [f"t{i}" for i in range(5)]}).to_csv(data / "splits" / "prepend" / "train.csv", index=False)
    (data / "train" / "prepend").mkdir(parents=True)
    (data / "train" / "prepend" / "metrics.json").write_text(json.dumps({"steps": 900, "world_size": 1, "device": "cpu",
                                                                           "stopped_early": False}))
    (data / "train" / "prepend" / "timing.json").write_text(json.dumps({"minutes": 6.5}))
    rows = []
    for clip in ("a", "b"):
        for k in range(2):
            p = data / "sweep" / "prepend" / "test" / "g3" / f"{clip}__s{k}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, clip_audio[clip][: int(2.56 * sr)], sr)
            rows.append({"test_set": "test", "cfg_scale": 3.0, "clip": clip, "sample": k, "start_sec": 0.0,
                         "window_s": 2.56, "path": f"test/g3/{clip}__s{k}.wav", "video": f"../../clips/{clip}.mp4",
                         "sample_rate": sr})
    pd.DataFrame(rows).to_csv(data / "sweep" / "prepend" / "index.csv", index=False)
    pfile = _report_params(tmp_path)
    params = yaml.safe_load(pfile.read_text())
    params["evaluate"].update(vggish_weights="w/v.pth", passt_weights="w/p.pt", imagebind_weights="w/ib.pth",
                              synchformer_weights="w/s.pt", n_artifact_clips=1, device="cpu")
    params["evaluate"]["bootstrap"].update(n=50, fad_n=20)
    params["filter"]["threshold"] = 0.2
    pfile.write_text(yaml.safe_dump(params, allow_unicode=True))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VAURA_PIPELINE_ID", "eval-stage-test")
    assert evaluate.run(argparse.Namespace(params=pfile, root=tmp_path, no_track=False, variant="prepend",
                                          device=None)) == 0

    doc = json.loads((data / "eval" / "prepend" / "metrics.json").read_text())
    assert doc["variant"]["name"] == "prepend" and doc["variant"]["model.conditioning"] == "prepend"
    assert doc["variant"]["overrides"] == {"model.conditioning": "prepend"} and doc["variant"]["train_clips"] == 5
    # the training run's facts in metrics.json, its wall time only in timing.json: identical runs, identical metrics
    assert doc["variant"]["train"] == {"steps": 900, "world_size": 1, "device": "cpu", "stopped_early": False}
    assert json.loads((data / "eval" / "prepend" / "timing.json").read_text()) == {"train_minutes": 6.5}
    assert doc["bootstrap"]["n"] == 50 and doc["bootstrap"]["level"] == 0.95
    onset = doc["test"]["g3"]["onset_sync"]
    assert onset["f1"] == pytest.approx(1.0) and onset["f1_low"] == onset["f1_high"] == pytest.approx(1.0)
    assert doc["test"]["g3"]["fad"]["fad_low"] <= doc["test"]["g3"]["fad"]["fad"] <= doc["test"]["g3"]["fad"]["fad_high"]
    assert doc["test"]["g3"]["sync"]["status"] == "skipped" and "w/s.pt" in doc["test"]["g3"]["sync"]["reason"]
    # per-item onset counts: clip a has one event, b two; every sample of the sweep and the real audio is a row
    items = pd.read_csv(data / "eval" / "prepend" / "onsets.csv")
    g3_items = items[items["group"] == "g3"].sort_values(["clip", "sample"])
    assert list(zip(g3_items["clip"], g3_items["sample"], g3_items["tp"], g3_items["fp"], g3_items["fn"])) == [
        ("a", 0, 1, 0, 0), ("a", 1, 1, 0, 0), ("b", 0, 2, 0, 0), ("b", 1, 2, 0, 0)]
    assert sorted(items[items["group"] == "reference"]["clip"]) == ["a", "b"] and set(items["test_set"]) == {"test"}
    assert doc["test"]["g3"]["ib"]["status"] == "skipped" and "w/ib.pth" in doc["test"]["g3"]["ib"]["reason"]
    mlflow.set_tracking_uri(params["tracking"]["uri"])
    runs = mlflow.search_runs(experiment_names=[params["tracking"]["experiment"]],
                              filter_string="tags.`vaura.stage` = 'evaluate'", output_format="pandas")
    assert sorted(runs["tags.vaura.eval.group"]) == ["g3", "reference"]
    g3 = runs[runs["tags.vaura.eval.group"] == "g3"].iloc[0]
    ref = runs[runs["tags.vaura.eval.group"] == "reference"].iloc[0]
    assert g3["metrics.data.train_clips"] == 5 and g3["params.model.conditioning"] == "prepend"
    assert g3["tags.vaura.variant"] == "prepend"
    # runs say what they are: distinct names, the ablation axes as params with the values really used
    assert g3["tags.mlflow.runName"] == "evaluate · prepend · γ 3 · test"
    assert ref["tags.mlflow.runName"] == "evaluate · prepend · real audio · test"
    assert (g3["params.variant"], g3["params.gamma"], g3["params.test_set"]) == ("prepend", "3", "test")
    assert g3["params.evaluate.onset_tolerance_s"] == "0.1"
    params_cols = [c for c in runs.columns if c.startswith("params.")]
    assert "params.generation.cfg_scale" not in params_cols  # never a γ the run did not use
    assert pd.isna(ref.get("params.gamma")) and pd.isna(ref.get("params.model.conditioning"))
    # a skipped metric: short status + key on the run, the long reason once on the parent
    assert g3["tags.metric.sync.status"] == "skipped"
    parent = mlflow.get_run(g3["tags.mlflow.parentRunId"]).data.tags
    assert parent[f"skip.{g3['tags.metric.sync.skip']}"] == doc["test"]["g3"]["sync"]["reason"]
    assert not any(k.endswith(".reason") for k in mlflow.get_run(g3["run_id"]).data.tags)
    names = {a.path for d in ("audio", "spectrogram", "video")
             for a in mlflow.artifacts.list_artifacts(run_id=g3["run_id"], artifact_path=d)}
    assert names == {"audio/b_prepend_g3.wav", "spectrogram/b_prepend_g3.png", "video/b_prepend_g3.mp4"}
