"""vaura.tracking against a real sqlite-backed MLflow store."""
import hashlib
import io
import json
import subprocess

import numpy as np
import pytest
import soundfile as sf
from mlflow.tracking import MlflowClient

from vaura import tracking


@pytest.fixture(scope="module")
def db_uri(tmp_path_factory):
    """One sqlite store for the module (creating its tables is the slow part); tests use their own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'ml.db'}"


@pytest.fixture()
def store(tmp_path, monkeypatch, db_uri, request):
    monkeypatch.chdir(tmp_path)  # dvc.lock / params.yaml lookups are relative to the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("VAURA_PIPELINE_ID", "pipe-A")
    params = {"tracking": {"uri": db_uri, "artifact_root": str(tmp_path / "art"), "experiment": request.node.name,
                           "system_metrics": False, "system_metrics_interval_s": 1.0}}
    return tmp_path, params, MlflowClient(db_uri)


def _artifact(client, run_id, path) -> bytes:
    local = client.download_artifacts(run_id, path)
    with open(local, "rb") as fh:
        return fh.read()


def test_stages_nest_under_one_parent_per_pipeline_with_tags(store, monkeypatch):
    tmp, params, client = store
    data = tmp / "index.csv"
    data.write_text("clip,split\na,train\n")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-42")
    ids = []
    for stage in ("cache", "train"):
        with tracking.stage_run(stage, {**params, "train": {"lr": 0.1}}, data_files=[data]) as run:
            ids.append(run.info.run_id)
    monkeypatch.setenv("VAURA_PIPELINE_ID", "pipe-B")
    with tracking.stage_run("cache", params) as run:
        other = run.info.run_id
    runs = {i: client.get_run(i) for i in [*ids, other]}
    parents = {i: r.data.tags["mlflow.parentRunId"] for i, r in runs.items()}
    assert parents[ids[0]] == parents[ids[1]] != parents[other]
    parent = client.get_run(parents[ids[0]])
    assert parent.data.tags["vaura.pipeline_id"] == "pipe-A" and parent.data.tags["vaura.role"] == "pipeline"
    assert parent.info.status == "FINISHED"
    tags = runs[ids[1]].data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=tmp).stdout.strip()
    assert tags["git.commit"] == (head or "unknown")
    assert tags["vaura.stage"] == "train" and tags["dvc.exp_name"] == "exp-42"
    assert tags[f"data.md5.{data.as_posix()}"] == hashlib.md5(data.read_bytes()).hexdigest()
    assert runs[ids[1]].data.params["train.lr"] == "0.1"
    assert runs[ids[1]].info.artifact_uri.startswith((tmp / "art").as_uri())


def test_dvc_lock_dependency_hashes_become_tags(store):
    tmp, params, client = store
    (tmp / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: vaura train\n    deps:\n    - path: data/cache\n"
        "      hash: md5\n      md5: abc123.dir\n")
    with tracking.stage_run("train", params) as run:
        pass
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["data.dep.data/cache"] == "abc123.dir"
    assert tags["dvc.lock.md5"] == hashlib.md5((tmp / "dvc.lock").read_bytes()).hexdigest()


def test_credentials_never_reach_the_store(store):
    tmp, params, client = store
    secret = {"s3": {"secret_access_key": "hunter2", "endpoint": "http://user:pw@host:9000/b", "region": "x",
                     "session_token": "t0k", "max_tokens": 5}}
    with tracking.stage_run("acquire", {**params, **secret}, tags={"remote": "s3://ak:sk@bucket/p"}) as run:
        pass
    r = client.get_run(run.info.run_id)
    assert r.data.params["s3.secret_access_key"] == "***"
    assert r.data.params["s3.endpoint"] == "http://host:9000/b" and r.data.params["s3.region"] == "x"
    assert r.data.params["s3.session_token"] == "***" and r.data.params["s3.max_tokens"] == "5"
    assert r.data.tags["remote"] == "s3://bucket/p"
    stored = _artifact(client, run.info.run_id, "config/params.json").decode()
    assert "hunter2" not in stored and "pw@" not in stored


def test_failed_stage_marks_run_failed_and_reraises(store):
    _, params, client = store
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run("score", params) as run:
            raise RuntimeError("boom")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_audio_spectrogram_json_and_muxed_video_artifacts(store):
    from vaura.media import probe, write_video

    tmp, params, client = store
    sr = 16000
    t = np.arange(int(0.64 * sr)) / sr
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    video = tmp / "src.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (50, 64, 64, 3), dtype=np.uint8)
    write_video(video, frames, 25.0)
    with tracking.stage_run("train", params) as run:
        tracking.log_audio(audio[None], sr, "samples/a.wav")
        tracking.log_spectrogram(audio, sr, "samples/a.png", title="a")
        tracking.log_json({"x": [1, 2]}, "extra/x.json")
        tracking.log_muxed_video(video, audio, sr, "samples/a.mp4", start_sec=0.8)
    rid = run.info.run_id
    wav, got_sr = sf.read(io.BytesIO(_artifact(client, rid, "samples/a.wav")), dtype="float32")
    assert got_sr == sr and len(wav) == len(audio) and np.abs(wav - audio).max() < 1e-3
    assert _artifact(client, rid, "samples/a.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(_artifact(client, rid, "extra/x.json")) == {"x": [1, 2]}
    info = probe(client.download_artifacts(rid, "samples/a.mp4"))
    assert info.has_video and info.has_audio and info.duration_s == pytest.approx(0.64, abs=0.1)
    with pytest.raises(ValueError, match="mono"):
        tracking.log_audio(np.zeros((2, 10)), sr, "bad.wav")


def test_pipeline_id_follows_commit_and_params(tmp_path, monkeypatch):
    monkeypatch.delenv("VAURA_PIPELINE_ID", raising=False)
    p = tmp_path / "params.yaml"
    p.write_text("a: 1\n")
    first = tracking.pipeline_id(p)
    assert first == tracking.pipeline_id(p)
    p.write_text("a: 2\n")
    assert tracking.pipeline_id(p) != first
    assert tracking.pipeline_id(p).endswith(hashlib.md5(b"a: 2\n").hexdigest()[:8])


def test_each_stage_run_honours_its_own_params_store(store, tmp_path):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second stage_run in the same process must not
    # mistake that for the user's override and log into the first run's store.
    _, params, _ = store
    other_uri = f"sqlite:///{tmp_path / 'other.db'}"
    other = {"tracking": {**params["tracking"], "uri": other_uri}}
    with tracking.stage_run("first", params) as first:
        pass
    with tracking.stage_run("second", other) as second:
        import mlflow

        mlflow.log_metric("x", 1.0)
    assert MlflowClient(other_uri).get_run(second.info.run_id).data.metrics["x"] == 1.0
    assert MlflowClient(params["tracking"]["uri"]).get_run(first.info.run_id).info.status == "FINISHED"


def test_runs_are_named_and_the_experiment_described_for_the_ui(store, tmp_path):
    """MLflow's UI reads these: run names in the table, the experiment type and the markdown descriptions."""
    tmp, params, client = store
    (tmp / "params.yaml").write_text("profile: micro\n")
    with tracking.stage_run("train", params, variant="prepend") as run:
        pass
    with tracking.stage_run("cache", params) as shared:
        pass
    got = client.get_run(run.info.run_id)
    assert got.info.run_name == "train · prepend" and got.data.tags["vaura.variant"] == "prepend"
    assert client.get_run(shared.info.run_id).info.run_name == "cache"
    parent = client.get_run(got.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "pipeline · micro · pipe-A"
    assert "pipe-A" in parent.data.tags["mlflow.note.content"]
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Paper tables" in exp.tags["mlflow.note.content"]
    client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", "my own notes")
    with tracking.stage_run("cache", params):
        pass
    assert client.get_experiment(exp.experiment_id).tags["mlflow.note.content"] == "my own notes"
