"""evaluate → MLflow (real sqlite store) → report: the three paper tables, skipped cells with reasons."""
from __future__ import annotations

import argparse
import time

import pandas as pd
import pytest
import yaml

from vaura.eval.evaluate import Group, flat_metrics, group_tags, log_groups, metrics_json
from vaura.eval.report import ReportConfig, build_tables, search_runs, to_markdown
from vaura.eval.results import MetricResult

SKIP_KLD = MetricResult.skipped("kld", "PaSST weights not found at weights/passt.pt: download it", backbone="passt")


def _group(name: str, gamma: float | None, f1: float, sync_ms: float | None = None) -> Group:
    g = Group("syn", name, gamma, n_clips=3, n_samples=6 if gamma is not None else 3, sample_rate=16000)
    g.metrics = {
        "onset_sync": MetricResult.ok("onset_sync", {"f1": f1, "offset_ms": 30.0, "missed": 2, "extra": 1,
                                                     "precision": f1, "recall": f1}, backbone="flux"),
        "fad": MetricResult.ok("fad", {"fad": 10 * (1 - f1)}, backbone="log-mel, weight-free"),
        "kld": SKIP_KLD,
        "sync": (MetricResult.ok("sync", {"sync_ms": sync_ms}, backbone="synchformer") if sync_ms is not None
                 else MetricResult.skipped("sync", "Synchformer checkpoint not found at w/s.pt", "synchformer")),
    }
    return g


def _params(tmp_path, threshold: float, conditioning: str, experiment: str = "vaura-test") -> dict:
    return {
        "filter": {"threshold": threshold},
        "model": {"conditioning": conditioning},
        "train": {"nproc": 2, "device": "cpu"},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db", "artifact_root": str(tmp_path / "art"),
                     "experiment": experiment, "system_metrics": False, "system_metrics_interval_s": 10.0},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real sqlite MLflow store with train + evaluate runs of four pipeline variants."""
    import mlflow

    tmp_path = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    variants = [(0.0, "fusion", 0.50), (0.2, "fusion", 0.60), (0.3, "fusion", 0.70), (0.3, "prepend", 0.40)]
    from vaura.tracking import stage_run

    for thr, cond, f1 in variants:
        params = _params(tmp_path, thr, cond)
        mp.setenv("VAURA_PIPELINE_ID", f"pipe-{thr}-{cond}")
        with stage_run("train", params):
            time.sleep(0.05)
        baseline = (thr, cond) == (0.3, "fusion")  # only the baseline is swept over γ (as in the paper)
        groups = [_group("reference", None, 0.9), _group("recon", None, 0.8)] if baseline else []
        groups += [_group(f"g{g:g}", g, f1 * (0.5 + g / 12)) for g in ((1.0, 3.0, 6.0) if baseline else (6.0,))]
        log_groups(params, groups, train_clips=int(100 * (1 - thr)), variant=f"t{thr}-{cond}")
    # a newer re-evaluation of the 0.3/fusion γ=6 variant replaces the older one in the tables
    params = _params(tmp_path, 0.3, "fusion")
    mp.setenv("VAURA_PIPELINE_ID", "pipe-0.3-fusion")
    log_groups(params, [_group("g6", 6.0, 0.77, sync_ms=120.0)], train_clips=70, variant="t0.3-fusion")
    mlflow.set_tracking_uri(params["tracking"]["uri"])
    yield tmp_path, params
    mp.undo()


@pytest.mark.slow
def test_tables_from_a_real_sqlite_store(store) -> None:
    tmp_path, _ = store
    evals, trains = search_runs("vaura-test", "evaluate"), search_runs("vaura-test", "train")
    assert len(evals) == 5 + 3 + 1 and len(trains) == 4
    cfg = ReportConfig(test_set="syn", cfg_scale=6.0, baseline_threshold=0.3, baseline_conditioning="fusion")
    t = build_tables(evals, trains, cfg)

    thr = t["threshold"]
    assert list(thr["threshold"]) == ["0", "0.2", "0.3"]  # prepend is not part of Table II
    assert list(thr["train clips"]) == ["100", "80", "70"]
    assert all(v.endswith("CPU-h") for v in thr["training device-hours"])
    f1 = thr["onset F1"].astype(float).tolist()
    assert f1 == pytest.approx([0.5 * 1.0, 0.6 * 1.0, 0.77], abs=1e-3)  # γ = 6; the latest 0.3 run wins
    assert "FAD (log-mel, weight-free)" in thr.columns
    assert all(v.startswith("skipped: PaSST weights not found") for v in thr["KLD (passt)"])
    assert list(thr["Sync (ms)"])[-1] == "120" and list(thr["Sync (ms)"])[0].startswith("skipped: Synchformer")
    assert all(v.startswith("n/a") for v in thr["IB"])  # IB never ran in these runs

    cond = t["conditioning"]
    assert list(cond["conditioning"]) == ["fusion", "prepend"]
    assert cond["onset F1"].astype(float).tolist() == pytest.approx([0.77, 0.40 * 1.0], abs=1e-3)

    cfg_t = t["cfg"]
    assert list(cfg_t["γ"]) == ["1", "3", "6", "codec reconstruction", "reference (real audio)"]
    assert cfg_t["onset F1"].astype(float).tolist()[:2] == pytest.approx([0.7 * (0.5 + 1 / 12), 0.7 * 0.75], abs=1e-3)
    md = to_markdown(cfg_t, "Table IV")
    assert md.count("\n|") == 2 + 5
    # the KLD reason is stated once as a note; cells refer to it
    assert md.count("PaSST weights not found") == 1 and "[1] PaSST weights not found" in md
    assert md.count("skipped [1]") == 5


@pytest.mark.slow
def test_report_stage_writes_and_logs_tables(store, tmp_path, monkeypatch) -> None:
    import json

    import mlflow

    from vaura.stages import report

    db_dir, params = store
    params = {**params, "paths": {"data": "data", "reports": "reports"},
              "filter": {"threshold": 0.3},  # report.baseline_threshold null → this threshold
              "report": {"test_set": "syn", "cfg_scale": 6.0, "baseline_threshold": None,
                         "baseline_conditioning": "fusion"}}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    monkeypatch.setenv("VAURA_PIPELINE_ID", "report-test")
    rc = report.run(argparse.Namespace(params=pfile, root=tmp_path, no_track=False))
    assert rc == 0
    for name in ("threshold", "conditioning", "cfg"):
        assert (tmp_path / "reports" / f"{name}.md").read_text().startswith("# Table")
        csv = pd.read_csv(tmp_path / "reports" / f"{name}.csv")
        assert len(csv) >= 2
    curve = pd.read_csv(tmp_path / "reports" / "cfg_curve.csv")
    assert list(curve["cfg_scale"]) == [1.0, 3.0, 6.0]
    assert curve["onset_f1"].iloc[-1] == pytest.approx(0.77) and curve["kld"].isna().all()
    reasons = pd.read_csv(tmp_path / "reports" / "threshold.csv")["KLD (passt)"]
    assert reasons.str.endswith("download it").all()  # full reason in the CSV
    runs = search_runs("vaura-test", "report")
    assert len(runs) == 1
    arts = mlflow.artifacts.list_artifacts(run_id=runs["run_id"].iloc[0], artifact_path="reports")
    assert {a.path.split("/")[-1] for a in arts} >= {"threshold.md", "cfg.csv"}

    # the tables on the pipeline's parent run: its description is the markdown, its MLflow tables the same cells
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
    # a second report under the same pipeline replaces the tables instead of appending rows
    assert report.run(argparse.Namespace(params=pfile, root=tmp_path, no_mlflow_log=False)) == 0
    assert logged_table() == logged


def test_baseline_threshold_defaults_to_the_pipelines_own_filter_threshold() -> None:
    from vaura.eval.report import ReportError

    assert ReportConfig().resolved({"filter": {"threshold": 0.3}}).baseline_threshold == 0.3
    assert ReportConfig(baseline_threshold=0.4).resolved({"filter": {"threshold": 0.3}}).baseline_threshold == 0.4
    with pytest.raises(ReportError, match="filter.threshold"):
        ReportConfig().resolved({})


def test_report_without_runs_fails_clearly(tmp_path, monkeypatch) -> None:
    from vaura.eval.report import ReportError

    with pytest.raises(ReportError, match="evaluate"):
        build_tables(pd.DataFrame(), pd.DataFrame(), ReportConfig())


def test_metrics_json_and_tags_carry_skip_reasons() -> None:
    g = _group("g6", 6.0, 0.5)
    doc = metrics_json([g], {"filter.threshold": 0.3})
    assert doc["syn"]["g6"]["kld"] == {"status": "skipped", "backbone": "passt", "reason": SKIP_KLD.reason}
    assert doc["syn"]["g6"]["onset_sync"]["f1"] == 0.5
    tags = group_tags(g)
    assert tags["metric.kld.status"] == "skipped" and tags["vaura.eval.cfg_scale"] == "6"
    assert "kld" not in flat_metrics(g) and flat_metrics(g)["onset_f1"] == 0.5


@pytest.mark.slow
def test_evaluate_stage_writes_metrics_and_mlflow_artifacts(store, tmp_path, monkeypatch) -> None:
    """The `evaluate` CLI on real MP4s + sweep WAVs: metrics.json, one run per group, wav/png/mp4 artifacts."""
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
    (data / "splits").mkdir()
    pd.DataFrame({"clip": ["a", "b", "b"], "time_s": [1.0, 1.0, 2.0], "class": ["x", "x", "x"]}).to_csv(
        data / "raw" / "events.csv", index=False)
    pd.DataFrame({"clip": [f"t{i}" for i in range(5)]}).to_csv(data / "splits" / "train.csv", index=False)
    rows = []
    for clip in ("a", "b"):
        for k in range(2):
            p = data / "sweep" / "test" / "g3" / f"{clip}__s{k}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, clip_audio[clip][: int(2.56 * sr)], sr)
            rows.append({"test_set": "test", "cfg_scale": 3.0, "clip": clip, "sample": k, "start_sec": 0.0,
                         "window_s": 2.56, "path": f"test/g3/{clip}__s{k}.wav", "video": f"../clips/{clip}.mp4",
                         "sample_rate": sr})
    pd.DataFrame(rows).to_csv(data / "sweep" / "index.csv", index=False)
    params = _params(store[0], 0.2, "fusion", experiment="vaura-eval-stage")  # the module's store, own experiment
    params.update({"paths": {"data": "data", "reports": "reports"},
                   "evaluate": {"fad_backbone": "logmel", "vggish_weights": "w/v.pth", "passt_weights": "w/p.pt",
                                "imagebind_weights": "w/ib.pth", "synchformer_weights": "w/s.pt",
                                "events": "raw/events.csv", "onset_tolerance_s": 0.1, "n_artifact_clips": 1,
                                "device": "cpu"}})
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VAURA_PIPELINE_ID", "eval-stage-test")
    assert evaluate.run(argparse.Namespace(params=pfile, root=tmp_path, no_track=False, variant="prepend")) == 0

    doc = json.loads((data / "eval" / "metrics.json").read_text())
    assert doc["variant"] == {"filter.threshold": 0.2, "model.conditioning": "fusion"}
    assert doc["test"]["g3"]["onset_sync"]["f1"] == pytest.approx(1.0)
    assert doc["test"]["g3"]["sync"]["status"] == "skipped" and "w/s.pt" in doc["test"]["g3"]["sync"]["reason"]
    assert doc["test"]["g3"]["ib"]["status"] == "skipped" and "w/ib.pth" in doc["test"]["g3"]["ib"]["reason"]
    mlflow.set_tracking_uri(params["tracking"]["uri"])
    runs = search_runs("vaura-eval-stage", "evaluate")
    assert sorted(runs["tags.vaura.eval.group"]) == ["g3", "reference"]
    g3 = runs[runs["tags.vaura.eval.group"] == "g3"].iloc[0]
    ref = runs[runs["tags.vaura.eval.group"] == "reference"].iloc[0]
    assert g3["metrics.data.train_clips"] == 5 and g3["params.filter.threshold"] == "0.2"
    # runs say what they are: distinct names, the ablation axes as params with the values really used
    assert g3["tags.mlflow.runName"] == "evaluate · prepend · γ 3 · test"
    assert ref["tags.mlflow.runName"] == "evaluate · prepend · real audio · test"
    assert (g3["params.variant"], g3["params.gamma"], g3["params.test_set"]) == ("prepend", "3", "test")
    assert g3["params.model.conditioning"] == "fusion" and g3["params.evaluate.onset_tolerance_s"] == "0.1"
    params_cols = [c for c in runs.columns if c.startswith("params.")]
    assert "params.generation.cfg_scale" not in params_cols  # never a γ the run did not use
    assert pd.isna(ref.get("params.gamma")) and pd.isna(ref.get("params.model.conditioning"))
    # a skipped metric: short status + key on the run, the long reason once on the parent
    assert g3["tags.metric.sync.status"] == "skipped" and "tags.metric.sync.reason" in runs.columns
    assert "w/s.pt" in g3["tags.metric.sync.reason"]  # resolved from the parent by search_runs
    parent = mlflow.get_run(g3["tags.mlflow.parentRunId"]).data.tags
    assert parent[f"skip.{g3['tags.metric.sync.skip']}"] == doc["test"]["g3"]["sync"]["reason"]
    assert not any(k.endswith(".reason") for k in mlflow.get_run(g3["run_id"]).data.tags)
    names = {a.path for d in ("audio", "spectrogram", "video")
             for a in mlflow.artifacts.list_artifacts(run_id=g3["run_id"], artifact_path=d)}
    assert names == {"audio/b_prepend_g3.wav", "spectrogram/b_prepend_g3.png", "video/b_prepend_g3.mp4"}


def test_training_hours_follow_the_variant_not_just_the_pipeline() -> None:
    """An ablation flow runs every variant under one pipeline id: hours must come from the matching train run."""
    t0 = pd.Timestamp("2026-01-01 10:00", tz="UTC")

    def train(thr: str, minutes: float, world: str | None) -> dict:
        return {"status": "FINISHED", "start_time": t0, "end_time": t0 + pd.Timedelta(minutes=minutes),
                "tags.vaura.pipeline_id": "ablation-1", "tags.dvc.exp_name": f"ablation-1-t{thr}",
                "params.filter.threshold": thr, "params.model.conditioning": "fusion",
                "tags.vaura.world_size": world, "params.train.nproc": "1", "params.train.device": "cpu"}

    trains = pd.DataFrame([train("0.0", 30, "2"), train("0.4", 6, None)])
    evals = pd.DataFrame([
        {"start_time": t0, "tags.vaura.pipeline_id": "ablation-1", "tags.dvc.exp_name": f"ablation-1-t{thr}",
         "params.filter.threshold": thr, "params.model.conditioning": "fusion", "tags.vaura.eval.test_set": "syn",
         "tags.vaura.eval.group": "g6", "tags.vaura.eval.cfg_scale": "6", "metrics.data.train_clips": 10.0,
         "metrics.onset_f1": 0.5}
        for thr in ("0.0", "0.4")
    ])
    table = build_tables(evals, trains, ReportConfig(test_set="syn", cfg_scale=6.0))["threshold"]
    # 30 min × world size 2 = 1 h; 6 min × train.nproc 1 = 0.1 h
    assert list(table["training device-hours"]) == ["1.000 CPU-h", "0.100 CPU-h"]
