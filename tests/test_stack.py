"""The local stack end to end: `vaura stack up` → `prefect deployment run train-vaura/local` through the worker
(micro profile) → MLflow artifacts in the moto bucket → `dvc push`/`pull` against it → `vaura stack down`
leaves no process behind."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from pipeline_helpers import BIN, DVC, clean_env, make_micro_repo, run

from vaura.stack import MEMBER_ENV, StackError, StackSettings, down, free_port, strays, up

@pytest.mark.slow
def test_stack_trains_through_the_worker_tracks_to_s3_and_serves_dvc_remote(tmp_path: Path) -> None:
    """`prefect deployment run train-vaura/local` on the micro pipeline, end to end through the stack."""
    import boto3
    from mlflow.tracking import MlflowClient

    proj = make_micro_repo(tmp_path / "proj")
    state = tmp_path / "stack"
    ports = {"--s3-port": free_port(), "--mlflow-port": free_port(), "--prefect-port": free_port()}
    env = clean_env()
    up_argv = [str(BIN / "vaura"), "stack", "up", "--state-dir", str(state), "--project-dir", str(proj),
               "--bucket", "vaura-ci", *[str(x) for kv in ports.items() for x in kv]]
    recorded: list[int] = []
    tree: list[int] = []
    try:
        run(up_argv, proj, env, 400)
        record = json.loads((state / "stack.json").read_text())
        recorded = [svc["pid"] for svc in record["services"]]
        assert {svc["name"] for svc in record["services"]} == {"s3", "mlflow", "prefect-server", "prefect-worker"}
        client = {line.split("=", 1)[0].removeprefix("export "): line.split("=", 1)[1]
                  for line in (state / "env.sh").read_text().splitlines() if line.startswith("export ")}
        cenv = clean_env(client)

        out = run([str(BIN / "prefect"), "deployment", "run", "train-vaura/local", "--param", "name=ci-prepend",
                   "--param", 'overrides={"model.conditioning": "prepend"}', "--watch", "--watch-timeout", "1500"],
                  proj, cenv, 1600)
        assert "Completed" in out
        tree = [p.pid for pid in recorded if psutil.pid_exists(pid) for p in psutil.Process(pid).children(True)]

        # The experiment's train run (override applied by `dvc exp run -S`) is in MLflow, its artifacts in S3.
        mlc = MlflowClient(client["MLFLOW_TRACKING_URI"])
        exp = mlc.get_experiment_by_name("vaura")
        runs = mlc.search_runs([exp.experiment_id], "tags.`vaura.stage` = 'train'")
        assert [r.data.params["model.conditioning"] for r in runs] == ["prepend"]
        assert runs[0].data.tags["vaura.pipeline_id"].startswith("train-vaura-")
        assert runs[0].data.tags["dvc.exp_name"] == "ci-prepend"
        s3 = boto3.client("s3", endpoint_url=client["AWS_ENDPOINT_URL_S3"], region_name=client["AWS_DEFAULT_REGION"],
                          aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=client["AWS_SECRET_ACCESS_KEY"])
        prefix = f"mlflow/{exp.experiment_id}/{runs[0].info.run_id}/artifacts/"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="vaura-ci", Prefix=prefix).get("Contents", [])]
        assert prefix + "config/params.json" in keys

        # The temp experiment left the workspace alone; apply it, push its outputs, drop them, pull them back.
        assert not (proj / "data").exists()
        shown = run(DVC + ["exp", "show", "--csv"], proj, cenv)
        rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(shown)) if r["Experiment"]}
        assert rows["ci-prepend"]["model.conditioning"] == "prepend"
        # (`exp apply` exits 255 here by design: the stages after `train` never ran, so it cannot create their outs)
        subprocess.run(DVC + ["exp", "apply", "ci-prepend"], cwd=proj, env=cenv, capture_output=True, timeout=300)
        best = proj / "data" / "train" / "best.pt"
        digest = best.read_bytes()
        run(DVC + ["push", "--with-deps", "train"], proj, cenv, 300)
        assert s3.list_objects_v2(Bucket="vaura-ci", Prefix="dvc/").get("KeyCount", 0) >= 1
        shutil.rmtree(proj / ".dvc" / "cache")
        shutil.rmtree(proj / "data")
        run(DVC + ["pull", "--with-deps", "train"], proj, cenv, 300)
        assert best.read_bytes() == digest and (proj / "data" / "cache" / "index.csv").is_file()
    finally:
        down = subprocess.run([str(BIN / "vaura"), "stack", "down", "--state-dir", str(state)], cwd=proj, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    alive = [pid for pid in recorded + tree if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert not (state / "stack.json").exists()
    local_cfg = proj / ".dvc" / "config.local"
    assert not local_cfg.exists() or "vaura-stack" not in local_cfg.read_text()
    status = subprocess.run([str(BIN / "vaura"), "stack", "status", "--state-dir", str(state)], cwd=proj, env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "no stack" in status.stdout


def test_up_refuses_a_busy_port_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        settings = StackSettings(state_dir=tmp_path / "st", project_dir=tmp_path, s3_port=free_port(),
                                 mlflow_port=port, prefect_port=free_port(), deploy=False)
        with pytest.raises(StackError, match=f"MLflow port 127.0.0.1:{port} is in use"):
            up(settings, log=lambda m: None)
    assert not (tmp_path / "st" / "stack.json").exists()


def test_failed_start_stops_what_it_started(tmp_path: Path) -> None:
    """An invalid bucket name fails after moto and both servers were launched: none of them may survive."""
    settings = StackSettings(state_dir=tmp_path / "st", project_dir=tmp_path, s3_port=free_port(),
                             mlflow_port=free_port(), prefect_port=free_port(), bucket="x", deploy=False, timeout_s=60)
    before = {p.pid for p in psutil.process_iter()}
    with pytest.raises(StackError, match="cannot create S3 bucket 'x'"):
        up(settings, log=lambda m: None)
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if p.pid not in before and any(str(settings.s3_port) in c or str(settings.mlflow_port) in c
                                                for c in (p.info["cmdline"] or []))]
    assert leftovers == []
    assert not (tmp_path / "st" / "stack.json").exists()


def test_down_stops_a_dead_workers_flow_runs_and_says_the_worker_was_dead(tmp_path: Path) -> None:
    """A killed worker leaves its flow run (own session, re-parented to init) running: `down` must find and stop
    that tree, and must not claim it stopped a worker that was already gone."""
    import os
    import sys

    from vaura.io import atomic_write_json

    settings = StackSettings(state_dir=tmp_path / "st", project_dir=tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_json(settings.state_dir / "stack.json", {
        "settings": {"project_dir": str(tmp_path)},
        "services": [{"name": "prefect-worker", "pid": dead.pid, "argv": [], "log": "worker.log", "health_url": ""}],
    })
    pidfile = tmp_path / "child.pid"
    flow_run = subprocess.Popen(  # a flow run as the worker starts it: own session, with a child (dvc, stages)
        [sys.executable, "-c", "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
         f"'import time; time.sleep(120)']); open({str(pidfile)!r}, 'w').write(str(c.pid)); time.sleep(120)"],
        env={**os.environ, MEMBER_ENV: str(settings.state_dir)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pidfile.read_text())
        assert {p.pid for p in strays(settings)} == {flow_run.pid, child}
        said: list[str] = []
        down(settings, log=said.append)
        flow_run.wait(timeout=10)
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        assert any(f"prefect-worker (pid {dead.pid}) was not running" in m for m in said)
        assert not any(m.startswith("stopped prefect-worker") for m in said)
        assert any("whose worker had died" in m and str(flow_run.pid) in m for m in said)
        assert not (settings.state_dir / "stack.json").exists()
    finally:
        flow_run.kill()


@pytest.mark.slow
def test_old_runs_keep_their_artifacts_and_the_dvc_remote_its_objects_across_a_restart(tmp_path: Path) -> None:
    """`stack down` + `stack up` must not break old MLflow runs (their artifacts live in the stack's S3)."""
    import boto3
    from mlflow.tracking import MlflowClient

    from vaura.stack import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

    proj = tmp_path / "proj"
    proj.mkdir()
    for argv in (["git", "init", "-q"], DVC + ["init", "-q"]):
        run(argv, proj, clean_env())
    settings = StackSettings(state_dir=tmp_path / "st", project_dir=proj, s3_port=free_port(),
                             mlflow_port=free_port(), prefect_port=free_port(), bucket="vaura-restart", deploy=False)
    s3 = boto3.client("s3", endpoint_url=settings.s3_url, aws_access_key_id=S3_ACCESS_KEY,
                      aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION)
    blob = bytes(range(256)) * 40_000  # 10 MB: boto3 uploads it in parts
    try:
        up(settings, log=lambda m: None)
        client = MlflowClient(settings.mlflow_url)
        run_id = client.create_run(client.create_experiment("restart")).info.run_id
        client.log_text(run_id, "loss went down", "notes/summary.txt")
        client.set_terminated(run_id)
        (tmp_path / "blob.bin").write_bytes(blob)
        s3.upload_file(str(tmp_path / "blob.bin"), settings.bucket, "dvc/files/md5/ab/cdef")
        down(settings, log=lambda m: None)
        up(settings, log=lambda m: None)
        got = Path(MlflowClient(settings.mlflow_url).download_artifacts(run_id, "notes/summary.txt", str(tmp_path)))
        assert got.read_text() == "loss went down"
        assert s3.get_object(Bucket=settings.bucket, Key="dvc/files/md5/ab/cdef")["Body"].read() == blob
    finally:
        down(settings, log=lambda m: None)


def test_a_fresh_clone_names_the_stack_remote_and_the_stack_env_reaches_it() -> None:
    """The DVC remote must not live only in the ignored .dvc/config.local: the committed config names it (url
    only: no endpoint, no credentials), and env.sh gives the endpoint and keys that DVC's S3 client reads."""
    import configparser

    from vaura.stack import DEFAULT_REMOTE_URL, DVC_REMOTE, client_env

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / ".dvc" / "config")
    assert cfg["core"]["remote"] == DVC_REMOTE
    assert dict(cfg[f"'remote \"{DVC_REMOTE}\"'"]) == {"url": DEFAULT_REMOTE_URL}
    env = client_env(StackSettings(s3_port=9100))
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9100"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"] and env["AWS_DEFAULT_REGION"]
