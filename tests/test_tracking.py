"""vaura.tracking against a real sqlite-backed MLflow store."""
import hashlib
import io
import json
import subprocess

import numpy as np
import pytest
import soundfile as sf
from mlflow.tracking import MlflowClient

from vaura import tracking, tracking_media


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


SIGNED = ("https://bucket.s3.amazonaws.com/v/list.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIAEXAMPLE%2F20240101&X-Amz-Signature=deadbeefcafe&X-Amz-Security-Token=sesstok")
SECRETS = ("AKIAEXAMPLE", "deadbeefcafe", "sesstok", "hunter2", "sastoken", "azsig")


def test_presigned_signatures_and_passwords_are_redacted_in_every_sink(store):
    """params table, config/params.json, the raw params.yaml artifact and tags, from one redaction function."""
    import yaml

    tmp, params, client = store
    values = {"acquire": {"uri": SIGNED, "endpoint_url": "http://minio:hunter2@host:9000",
                          "mirror": "https://acct.blob.core.windows.net/c/x.mp4?sv=2022&sig=azsig&token=sastoken"}}
    (tmp / "params.yaml").write_text(yaml.safe_dump({**params, **values}))
    with tracking.stage_run("acquire", {**params, **values}, tags={"source": SIGNED}) as run:
        tracking.log_params_file(tmp / "params.yaml")
    r = client.get_run(run.info.run_id)
    sinks = {"params": json.dumps(r.data.params), "tags": json.dumps(r.data.tags),
             "params.json": _artifact(client, run.info.run_id, "config/params.json").decode(),
             "params.yaml": _artifact(client, run.info.run_id, "config/params.yaml").decode()}
    for sink, text in sinks.items():
        assert not [s for s in SECRETS if s in text], sink
    # what is not a secret survives, so the value stays recognisable
    assert r.data.params["acquire.uri"].startswith("https://bucket.s3.amazonaws.com/v/list.txt?X-Amz-Algorithm=AWS4")
    assert "X-Amz-Signature=***" in r.data.params["acquire.uri"] and "sv=2022" in r.data.params["acquire.mirror"]
    assert yaml.safe_load(sinks["params.yaml"])["acquire"]["endpoint_url"] == "http://host:9000"


def test_every_stage_refuses_credentials_in_params_before_dvc_records_them(tmp_path, capsys):
    """dvc.lock stores params values verbatim: every stage stops (no output, so no lock entry) and says where they go."""
    from vaura.cli import main

    params = tmp_path / "p.yaml"
    params.write_text(
        f"seed: 1\npaths: {{data: {tmp_path / 'data'}, reports: reports}}\n"
        f"acquire: {{source: https, uri: '{SIGNED}', endpoint_url: '', output: raw, retries: 0, backoff_s: 0.1, "
        "timeout_s: 5.0, default_split: train}\n"
    )
    assert main(["acquire", "--params", str(params), "--no-track"]) == 1
    err = capsys.readouterr().err
    assert "params.acquire.uri: carries a credential" in err and "environment" in err
    assert not [s for s in SECRETS if s in err] and not (tmp_path / "data").exists()
    # every stage: `dvc repro train` alone (acquire up to date) must not record a credential either
    for stage, line, key in (("train", "codec: {weights: 'https://h/w.pth?X-Amz-Signature=sig123'}", "codec.weights"),
                             ("evaluate", "tracking: {uri: 'http://ml:hunter2@host:5000'}", "tracking.uri")):
        params.write_text(f"seed: 1\npaths: {{data: data, reports: reports}}\n{line}\n")
        assert main([stage, "--params", str(params), "--no-track"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"vaura {stage}: params.{key}: carries a credential") and "sig123" not in err
        assert "hunter2" not in err


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
        tracking_media.log_audio(audio[None], sr, "samples/a.wav")
        tracking_media.log_spectrogram(audio, sr, "samples/a.png", title="a")
        tracking.log_json({"x": [1, 2]}, "extra/x.json")
        tracking_media.log_muxed_video(video, audio, sr, "samples/a.mp4", start_sec=0.8)
    rid = run.info.run_id
    wav, got_sr = sf.read(io.BytesIO(_artifact(client, rid, "samples/a.wav")), dtype="float32")
    assert got_sr == sr and len(wav) == len(audio) and np.abs(wav - audio).max() < 1e-3
    assert _artifact(client, rid, "samples/a.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(_artifact(client, rid, "extra/x.json")) == {"x": [1, 2]}
    info = probe(client.download_artifacts(rid, "samples/a.mp4"))
    assert info.has_video and info.has_audio and info.duration_s == pytest.approx(0.64, abs=0.1)
    with pytest.raises(ValueError, match="mono"):
        tracking_media.log_audio(np.zeros((2, 10)), sr, "bad.wav")


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


# A stage process: opens its stage run, says so, then waits to be signalled (as a long training would).
_STAGE = """
import json, sys, time
from pathlib import Path
from vaura import tracking
params = json.loads(sys.argv[1])
with tracking.stage_run(sys.argv[2], params) as run:
    Path(sys.argv[3]).write_text(run.info.run_id)
    if sys.argv[4] == "wait":
        time.sleep(120)
"""


def _stage_proc(tmp, params, stage, mode, env_extra=None, argv0=None):
    import os
    import sys

    ready = tmp / f"{stage}.run_id"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-c", _STAGE, json.dumps(params), stage, str(ready), mode],
                            cwd=tmp, env=env)
    return proc, ready


def _wait_file(path, proc, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        assert proc.poll() is None, f"stage process exited with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"{path} not written")


def test_sigterm_ends_the_stage_run_killed(store):
    """A cancelled stage (SIGTERM from dvc/Prefect) must not leave its run RUNNING."""
    import signal

    tmp, params, client = store
    proc, ready = _stage_proc(tmp, params, "train", "wait")
    run_id = _wait_file(ready, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert client.get_run(run_id).info.status == "KILLED"


def test_runs_of_a_killed_process_are_closed_on_the_next_start(store):
    """SIGKILL leaves no chance to close a run: the next stage start marks it (and its parent) KILLED."""
    tmp, params, client = store
    proc, ready = _stage_proc(tmp, params, "train", "wait")
    run_id = _wait_file(ready, proc)
    proc.kill()
    proc.wait(timeout=30)
    dead = client.get_run(run_id)
    parent_id = dead.data.tags["mlflow.parentRunId"]
    assert dead.info.status == "RUNNING"
    with tracking.stage_run("evaluate", params) as run:
        assert client.get_run(run_id).info.status == "KILLED"
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert client.get_run(parent_id).info.status == "RUNNING"  # reopened by this stage
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_a_live_owners_running_run_is_left_alone(store):
    tmp, params, client = store
    proc, ready = _stage_proc(tmp, params, "train", "wait")
    try:
        run_id = _wait_file(ready, proc)
        assert run_id not in tracking.close_stale_runs(client)
        assert client.get_run(run_id).info.status == "RUNNING"
    finally:
        proc.kill()
        proc.wait()


# A stand-in for `dvc repro`: a process whose program is named `dvc` that runs two stages one after the other
# and records the parent run's state in between.
_FAKE_DVC = """
import json, subprocess, sys
from mlflow.tracking import MlflowClient
uri, params, stage_code, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
seen = []
for stage in ("train", "evaluate"):
    subprocess.run([sys.executable, "-c", stage_code, params, stage, stage + ".run_id", "go"], check=True)
    parent = MlflowClient(uri).get_run(open(stage + ".run_id").read()).data.tags["mlflow.parentRunId"]
    info = MlflowClient(uri).get_run(parent).info
    seen.append([parent, info.status, info.end_time])
json.dump(seen, open(out, "w"))
"""


def test_parent_stays_running_between_stages_and_closes_after_the_pipeline(store):
    import os
    import sys

    tmp, params, client = store
    fake = tmp / "bin" / "dvc"
    fake.parent.mkdir()
    fake.write_text(_FAKE_DVC)
    out = tmp / "seen.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, str(fake), params["tracking"]["uri"], json.dumps(params), _STAGE, str(out)],
                   cwd=tmp, env=env, check=True, timeout=300)
    (parent, s1, e1), (parent2, s2, e2) = json.loads(out.read_text())
    assert parent == parent2
    assert (s1, e1, s2, e2) == ("RUNNING", None, "RUNNING", None)
    # The pipeline process is gone: the next start closes the parent with its children's outcome and end time.
    assert parent in tracking.close_stale_runs(client)
    info = client.get_run(parent).info
    children = client.search_runs([info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert info.status == "FINISHED"
    assert info.end_time == max(c.info.end_time for c in children)


def test_pipeline_parent_owned_by_a_flow_ends_with_its_outcome(store, monkeypatch):
    tmp, params, client = store
    outcomes = {}
    for name, exc in (("ok", None), ("boom", RuntimeError), ("cancel", KeyboardInterrupt)):
        monkeypatch.setenv("VAURA_PIPELINE_ID", f"flow-{name}")  # as the flow passes it to its stages
        try:
            with tracking.pipeline_parent(f"flow-{name}", params) as parent:
                with tracking.stage_run("train", params) as run:
                    assert run.data.tags["mlflow.parentRunId"] == parent
                assert client.get_run(parent).info.status == "RUNNING"  # the stage left the flow's parent open
                if exc:
                    raise exc
        except (RuntimeError, KeyboardInterrupt):
            pass
        outcomes[name] = client.get_run(parent).info.status
    assert outcomes == {"ok": "FINISHED", "boom": "FAILED", "cancel": "KILLED"}


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


def test_vaura_ui_links_the_runs_table_and_its_shared_view(store, capsys):
    """The printed link opens the classic runs table in a shared view that exists in the store (else the UI says
    the share key does not exist); before any run it says so without creating a store."""
    import json
    import re

    import yaml

    from vaura.cli import main

    tmp, params, client = store
    empty = {**params, "tracking": {**params["tracking"], "uri": f"sqlite:///{tmp / 'none.db'}"}}
    (tmp / "empty.yaml").write_text(yaml.safe_dump(empty))
    assert main(["ui", "--params", str(tmp / "empty.yaml")]) == 0
    assert "no runs" in capsys.readouterr().out and not (tmp / "none.db").exists()

    with tracking.stage_run("evaluate", params) as run:
        pass
    (tmp / "p.yaml").write_text(yaml.safe_dump(params))
    assert main(["ui", "--params", str(tmp / "p.yaml"), "--port", "5123"]) == 0
    out = capsys.readouterr().out
    link = re.search(r"http://127\.0\.0\.1:5123/#/experiments/(\w+)/runs\?(\S+)", out)
    assert link and link.group(1) == run.info.experiment_id
    query = dict(kv.split("=") for kv in link.group(2).split("&"))
    assert query["workflowType"] == "machine_learning"
    view = client.get_experiment(link.group(1)).tags[f"mlflow.sharedViewState.{query['viewStateShareKey']}"]
    assert "params.`gamma`" in json.loads(view)["selectedColumns"]
    assert "--host 127.0.0.1 --port 5123" in out


class _LosesTheRace:
    """A client whose every tag write loses a sqlite INSERT race: a rival stage writes ``rival_value`` first
    (or nothing, when None), then this write fails the way MLflow's sqlite store does."""

    def __init__(self, client, rival_value):
        self._client, self._rival_value = client, rival_value

    def __getattr__(self, name):
        return getattr(self._client, name)

    def set_experiment_tag(self, experiment_id, key, value):
        from mlflow.exceptions import MlflowException

        if self._rival_value is not None:
            self._client.set_experiment_tag(experiment_id, key, value if key.startswith("mlflow.shared")
                                            else self._rival_value)
        raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: experiment_tags.key")


def test_stages_started_side_by_side_tolerate_losing_the_experiment_tag_race(store):
    """Two stages opening a new experiment at once both set its tags; the loser's INSERT fails on sqlite's
    unique key (seen in CI). It must carry on with the winner's tags, and still fail when nobody wrote them."""
    tmp, params, client = store
    cfg = tracking.tracking_config(params)
    exp_id = tracking._experiment_id(_LosesTheRace(client, rival_value="the winner's"), cfg, params["tracking"]["uri"])
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "the winner's" and tags["mlflow.note.content"] == "the winner's"
    assert json.loads(tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])["selectedColumns"]

    cfg_fresh = tracking.tracking_config({"tracking": {**params["tracking"], "experiment": "nobody-wrote"}})
    with pytest.raises(Exception, match="UNIQUE constraint"):
        tracking._experiment_id(_LosesTheRace(client, rival_value=None), cfg_fresh, params["tracking"]["uri"])
