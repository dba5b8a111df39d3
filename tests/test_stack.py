"""The local stack end to end: `vaura stack up` → a Prefect deployment run through the worker → MLflow artifacts
in the moto bucket → `dvc push`/`pull` against it → `vaura stack down` leaves no process behind."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from vaura.stack import StackError, StackSettings, free_port, up

BIN = Path(sys.executable).parent

PROBE = '''\
import mlflow, yaml
from vaura.tracking import stage_run
p = yaml.safe_load(open("params.yaml"))
with stage_run("probe", {"probe": p["probe"]}, params_file="params.yaml"):
    mlflow.log_text(f"value={p['probe']['value']}\\n", "probe/out.txt")
open("out.txt", "w").write(str(p["probe"]["value"]))
'''

PROBE_PARAMS = """\
probe:
  value: 1
tracking:
  uri: sqlite:///mlruns.db
  artifact_root: mlartifacts
  experiment: vaura
  system_metrics: false
  system_metrics_interval_s: 10.0
"""

PROBE_DVC = """\
stages:
  probe:
    cmd: python probe.py
    deps: [probe.py]
    params: [probe.value]
    outs: [out.txt]
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    env.update(extra or {})
    return env


def _sh(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{argv} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


@pytest.fixture()
def probe_project(tmp_path: Path, repo_root: Path) -> Path:
    """A git + DVC project with the repo's flows and deployments and one cheap stage that logs to MLflow."""
    proj = tmp_path / "proj"
    (proj / "flows").mkdir(parents=True)
    shutil.copy(repo_root / "flows" / "vaura_flows.py", proj / "flows")
    shutil.copy(repo_root / "prefect.yaml", proj)
    (proj / "probe.py").write_text(PROBE)
    (proj / "params.yaml").write_text(PROBE_PARAMS)
    (proj / "dvc.yaml").write_text(PROBE_DVC)
    (proj / ".gitignore").write_text("mlruns.db\nmlartifacts/\n.stack/\n")
    env = _env()
    for argv in (["git", "init", "-q"], ["git", "config", "user.email", "ci@vaura"], ["git", "config", "user.name", "ci"],
                 [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "config", "core.analytics", "false"],
                 ["git", "add", "-A"], ["git", "commit", "-qm", "probe project"]):
        _sh(argv, proj, env, 120)
    return proj


@pytest.mark.slow
def test_stack_runs_deployment_tracks_to_s3_and_serves_dvc_remote(probe_project: Path) -> None:
    import boto3
    from mlflow.tracking import MlflowClient

    proj = probe_project
    state = proj / ".stack"
    ports = {"--s3-port": free_port(), "--mlflow-port": free_port(), "--prefect-port": free_port()}
    argv = [str(BIN / "vaura"), "stack", "up", "--state-dir", str(state), "--project-dir", str(proj),
            "--bucket", "vaura-ci", *[str(x) for kv in ports.items() for x in kv]]
    env = _env()
    recorded: list[int] = []
    try:
        _sh(argv, proj, env, 400)
        record = json.loads((state / "stack.json").read_text())
        recorded = [svc["pid"] for svc in record["services"]]
        assert {svc["name"] for svc in record["services"]} == {"s3", "mlflow", "prefect-server", "prefect-worker"}
        client = {line.split("=", 1)[0].removeprefix("export "): line.split("=", 1)[1]
                  for line in (state / "env.sh").read_text().splitlines() if line.startswith("export ")}
        cenv = _env(client)

        run = _sh([str(BIN / "prefect"), "deployment", "run", "train-vaura/local", "--param", "target=probe",
                   "--param", 'overrides={"probe.value": 7}', "--watch", "--watch-timeout", "400"], proj, cenv, 450)
        assert "Completed" in run.stdout

        # The experiment's stage run (value 7, applied by `dvc exp run -S`) landed in MLflow with its artifacts in S3.
        mlc = MlflowClient(client["MLFLOW_TRACKING_URI"])
        exp = mlc.get_experiment_by_name("vaura")
        runs = mlc.search_runs([exp.experiment_id], "tags.`vaura.stage` = 'probe'")
        assert [r.data.params["probe.value"] for r in runs] == ["7"]
        assert runs[0].data.tags["vaura.pipeline_id"].startswith("train-vaura-")
        s3 = boto3.client("s3", endpoint_url=client["AWS_ENDPOINT_URL_S3"], region_name=client["AWS_DEFAULT_REGION"],
                          aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=client["AWS_SECRET_ACCESS_KEY"])
        key = f"mlflow/{exp.experiment_id}/{runs[0].info.run_id}/artifacts/probe/out.txt"
        assert s3.get_object(Bucket="vaura-ci", Key=key)["Body"].read() == b"value=7\n"
        # The workspace is untouched by the temp experiment; DVC recorded the experiment.
        assert not (proj / "out.txt").exists()
        shown = _sh([str(BIN / "dvc"), "exp", "show", "--csv"], proj, cenv, 120).stdout
        exps = {row["Experiment"]: row["probe.value"] for row in csv.DictReader(io.StringIO(shown)) if row["Experiment"]}
        assert list(exps.values()) == ["7"] and next(iter(exps)).startswith("train-")

        # dvc push / pull against the stack's bucket.
        _sh([str(BIN / "dvc"), "repro"], proj, cenv, 300)
        _sh([str(BIN / "dvc"), "push"], proj, cenv, 120)
        assert s3.list_objects_v2(Bucket="vaura-ci", Prefix="dvc/").get("KeyCount", 0) >= 1
        shutil.rmtree(proj / ".dvc" / "cache")
        (proj / "out.txt").unlink()
        _sh([str(BIN / "dvc"), "pull"], proj, cenv, 120)
        assert (proj / "out.txt").read_text() == "1"
        tree = [p.pid for pid in recorded if psutil.pid_exists(pid) for p in psutil.Process(pid).children(True)]
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
