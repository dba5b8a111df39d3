"""Prefect flow helpers: process-group isolation of DVC subprocesses, overrides, MLflow grouping, tables."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A command that starts a grandchild (as torchrun starts ranks), records its pid, and then waits.
SPAWNER = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(120)
""")


@pytest.fixture(scope="module")
def flows():
    spec = importlib.util.spec_from_file_location("vaura_flows", REPO / "flows" / "vaura_flows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _wait_for_pid(path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.1)
    raise AssertionError(f"no pid written to {path}")


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_timeout_kills_the_whole_process_group(flows, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(flows.StageFailed, match="ran past 3 s"):
        flows.run_in_group([sys.executable, "-c", SPAWNER, str(pidfile)], tmp_path, timeout_s=3, log=lambda m: None)
    assert _gone(_wait_for_pid(pidfile))


def test_failure_raises_with_the_output_tail(flows, tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('loading\\rstep 9/9'); print('boom: bad cache'); sys.exit(3)"]
    with pytest.raises(flows.StageFailed, match=r"exit code 3:[\s\S]*step 9/9[\s\S]*boom: bad cache"):
        flows.run_in_group(argv, tmp_path, log=lambda m: None)


def test_success_returns_the_tail_and_leaves_no_stray_member(flows, tmp_path: Path) -> None:
    """A leader that exits while its child still runs must not leave that child behind."""
    pidfile = tmp_path / "stray.pid"
    script = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(pidfile)!r}, 'w').write(str(c.pid)); print('done')")
    assert flows.run_in_group([sys.executable, "-c", script], tmp_path, log=lambda m: None).endswith("done")
    assert _gone(_wait_for_pid(pidfile))


def test_sigterm_to_the_flow_process_kills_its_stage_tree(tmp_path: Path) -> None:
    """Prefect cancels a flow run with SIGTERM; the DVC subprocess tree (own session) must die with it."""
    pidfile = tmp_path / "grandchild.pid"
    driver = textwrap.dedent(f"""
        import importlib.util, signal, sys
        spec = importlib.util.spec_from_file_location("vf", {str(REPO / 'flows' / 'vaura_flows.py')!r})
        vf = importlib.util.module_from_spec(spec); spec.loader.exec_module(vf)
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))   # stands in for Prefect's own handler
        vf.install_termination_handler()
        vf.run_in_group([sys.executable, "-c", {SPAWNER!r}, {str(pidfile)!r}], {str(tmp_path)!r}, log=print)
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=tmp_path)
    grandchild = _wait_for_pid(pidfile, timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert _gone(grandchild)


def test_output_reaches_the_log_line_by_line_while_the_stage_runs(flows, tmp_path: Path) -> None:
    """The stage waits for its first line to be logged before it goes on: buffered or end-of-run logging fails."""
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    marker = tmp_path / "seen"
    script = textwrap.dedent(f"""
        import os, sys, time
        print("epoch 1 started")  # no flush: the flow's environment must make stage output unbuffered
        deadline = time.monotonic() + 30
        while not os.path.exists({str(marker)!r}):
            if time.monotonic() > deadline:
                sys.exit("the first line was not logged while the stage ran")
            time.sleep(0.05)
        print("epoch 1 done")
    """)
    logged: list[str] = []

    def log(line: str) -> None:
        logged.append(line)
        if line == "epoch 1 started":
            marker.touch()

    flows.run_in_group([sys.executable, "-c", script], tmp_path, flows.stage_env(tmp_path, "p"), log=log)
    assert [ln for ln in logged if ln.startswith("epoch")] == ["epoch 1 started", "epoch 1 done"]


def test_progress_bar_frames_become_periodic_lines(flows, tmp_path: Path) -> None:
    script = ("import sys\nfor i in range(1, 201):\n    sys.stdout.write(f'\\rtrain {i}/200')\n"
              "sys.stdout.write('\\n')\nprint('saved best.pt')")
    logged: list[str] = []
    flows.run_in_group([sys.executable, "-c", script], tmp_path, log=logged.append)
    body = [ln for ln in logged if not ln.startswith("$ ")]
    assert body == ["train 1/200", "train 200/200", "saved best.pt"]  # first frame, the final line, no frames between


# A stand-in for `python -m dvc`: records which experiment it started, starts a grandchild (as dvc starts
# vaura, which starts torchrun), writes its pid and waits, as a long `dvc exp run` does.
FAKE_DVC = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    if sys.argv[2:4] == ["stage", "list"]:
        print("first\\nsecond\\nthird\\nreport")
        sys.exit(0)
    name = sys.argv[-1]
    Path(sys.argv[1], name + ".started").touch()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(sys.argv[1], name + ".pid").write_text(str(child.pid))
    time.sleep(120)
""")

ABLATION_DRIVER = textwrap.dedent("""
    import importlib.util, sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("vf", sys.argv[1])
    vf = importlib.util.module_from_spec(spec); spec.loader.exec_module(vf)
    work = Path(sys.argv[2])
    vf.PROJECT_DIR = work
    vf._dvc = lambda: [sys.executable, str(work / "fake_dvc.py"), str(work)]
    vf.ablation()
""")


@pytest.mark.slow
def test_cancelling_ablation_kills_the_running_variant_and_starts_no_other(tmp_path: Path, prefect_api) -> None:
    """Prefect cancels a flow run by SIGTERM to its process: the running experiment's tree dies, the queued
    variants never start, the flow process ends promptly and the MLflow parent ends KILLED."""
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "fake_dvc.py").write_text(FAKE_DVC)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # the fake `dvc stage list` names the stages
    (tmp_path / "params.yaml").write_text("tracking:\n  uri: sqlite:///mlruns.db\n  experiment: vaura\n"
                                         "  system_metrics: false\n  system_metrics_interval_s: 10.0\n")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-c", ABLATION_DRIVER, str(REPO / "flows" / "vaura_flows.py"),
                             str(tmp_path)], cwd=tmp_path, env=env)
    try:
        grandchild = _wait_for_pid(next_pid_file(tmp_path, proc), timeout=5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert _gone(grandchild)
    time.sleep(3)  # a unit started after the cancel would show up by now
    assert sorted(p.name for p in tmp_path.glob("*.started")) == ["first.started"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    parents = client.search_runs([client.get_experiment_by_name("vaura").experiment_id],
                                 "tags.`vaura.role` = 'pipeline'")
    assert [r.info.status for r in parents] == ["KILLED"]


def next_pid_file(work: Path, proc: subprocess.Popen, timeout: float = 240.0) -> Path:
    """The pid file of the first experiment, once the flow (which needs the Prefect API) has started it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in work.glob("*.pid") if p.read_text().strip()]
        if found:
            return found[0]
        assert proc.poll() is None, f"flow process exited early ({proc.returncode})"
        time.sleep(0.2)
    raise AssertionError("the first variant never started")


def test_override_args_follow_dvc_set_param_syntax(flows) -> None:
    args = flows._override_args({"model.conditioning": "prepend", "filter.threshold": 0.3,
                                 "sweep.cfg_scales": [1.0, 6.0], "train.compile": False})
    assert args == ["-S", "model.conditioning=prepend", "-S", "filter.threshold=0.3",
                    "-S", "sweep.cfg_scales=[1.0, 6.0]", "-S", "train.compile=false"]


def test_tracking_uri_is_absolute_for_temp_experiments(flows, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("tracking:\n  uri: sqlite:///runs/m.db\n")
    assert flows._tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert flows._tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_stage_env_groups_stages_under_one_parent(flows, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    env = flows.stage_env(tmp_path, "ablation-1234")
    assert env["VAURA_PIPELINE_ID"] == "ablation-1234"
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_mlflow_runs_lists_the_pipelines_runs_parent_first(flows, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("vaura", artifact_location=(tmp_path / "art").as_uri())
    for pid, role, stage in (("p1", "stage", "train"), ("p1", "pipeline", ""), ("p2", "stage", "train")):
        client.create_run(exp, tags={"vaura.pipeline_id": pid, "vaura.role": role, "vaura.stage": stage})
    runs = flows.mlflow_runs("p1", uri)
    assert [(r["role"], r["stage"]) for r in runs] == [("pipeline", ""), ("stage", "train")]
    assert all(r["link"] == "" for r in runs)  # a sqlite store has no UI to link to


PROBE_STAGE = '''\
import json, os, sys, mlflow, yaml
from vaura.tracking import stage_run
stage, p = sys.argv[1], yaml.safe_load(open("params.yaml"))
os.makedirs("out", exist_ok=True)
if stage == "report":  # hermetic: reads the variants' metrics files, writes the table
    rows = [f"| {v} | {json.load(open(f'out/eval-{v}.json'))['score']} |" for v in p["ablation"]["variants"]]
    os.makedirs("reports", exist_ok=True)
    open("reports/table.md", "w").write("| variant | score |\\n|---|---|\\n" + "\\n".join(rows) + "\\n")
    sys.exit(0)
variant = sys.argv[2]
value = float(p["ablation"]["variants"][variant].get("probe", {}).get("value", p["probe"]["value"]))
with stage_run(stage, {"probe": {"value": value}}, params_file="params.yaml"):
    score = value * (2 if stage == "evaluate" else 1)
    mlflow.log_metric("score", score)
if stage == "evaluate":
    json.dump({"score": score}, open(f"out/eval-{variant}.json", "w"))
else:
    open(f"out/train-{variant}.txt", "w").write(str(score))
'''

PROBE_DVC = """\
stages:
  train:
    foreach: ${ablation.variants}
    do:
      cmd: python probe.py train ${key}
      deps: [probe.py]
      params:
        - probe.value
        - ablation.variants.${key}
      outs:
        - out/train-${key}.txt
  evaluate:
    foreach: ${ablation.variants}
    do:
      cmd: python probe.py evaluate ${key}
      deps:
        - probe.py
        - out/train-${key}.txt
      params:
        - ablation.variants.${key}
      metrics:
        - out/eval-${key}.json
  report:
    cmd: python probe.py report
    deps: [out/eval-low.json, out/eval-high.json]
    params: [ablation]
    outs:
      - reports:
          cache: false
"""


@pytest.fixture(scope="module")
def probe_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-stage DVC project whose stages log to MLflow through vaura.tracking, as the real stages do."""
    from pipeline_helpers import DVC, clean_env, run

    proj = tmp_path_factory.mktemp("flows") / "proj"
    proj.mkdir()
    (proj / "probe.py").write_text(PROBE_STAGE)
    (proj / "dvc.yaml").write_text(PROBE_DVC)
    (proj / "params.yaml").write_text("probe:\n  value: 1\nablation:\n  variants:\n    low:\n      probe:\n"
                                      "        value: 3\n    high:\n      probe:\n        value: 5\n"
                                      "tracking:\n  uri: sqlite:///mlruns.db\n"
                                      "  artifact_root: mlartifacts\n  experiment: vaura\n  system_metrics: false\n"
                                      "  system_metrics_interval_s: 10.0\n")
    (proj / ".gitignore").write_text("/mlruns.db\n/mlartifacts/\n/out/\n/reports/\n")
    env = clean_env()
    for argv in (["git", "init", "-q"], ["git", "config", "user.email", "ci@vaura"], ["git", "config", "user.name", "ci"],
                 DVC + ["init", "-q"], DVC + ["config", "core.analytics", "false"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "probe"]):
        run(argv, proj, env)
    return proj


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_ablation_runs_the_params_variants_in_the_checkout_attaches_the_tables_and_pushes(
        flows, probe_project: Path, prefect_api, monkeypatch, tmp_path: Path) -> None:
    """On a fresh clone: every variant of params.yaml and the report run, the table is attached to the flow run,
    the MLflow runs share one parent that ends FINISHED, and `dvc push` right after pushes what the flow made."""
    from mlflow.tracking import MlflowClient
    from pipeline_helpers import DVC, clean_env, run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    monkeypatch.setattr(flows, "PROJECT_DIR", probe_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    stages = flows.ablation()
    assert stages == ["train@low", "train@high", "evaluate@low", "evaluate@high", "report"]
    table = "| variant | score |\n|---|---|\n| low | 6.0 |\n| high | 10.0 |\n"
    assert (probe_project / "reports" / "table.md").read_text() == table
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["table-table"])))
    assert [a.data for a in artifacts] == [table]

    mlc = MlflowClient(f"sqlite:///{probe_project / 'mlruns.db'}")
    runs = mlc.search_runs([mlc.get_experiment_by_name("vaura").experiment_id], "tags.`vaura.role` = 'stage'")
    assert len(runs) == 4 and len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    assert mlc.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "FINISHED"

    remote = tmp_path / "remote"
    env = clean_env()
    run(DVC + ["remote", "add", "--local", "-d", "probe", str(remote)], probe_project, env)
    pushed = run(DVC + ["push"], probe_project, env)
    assert "4 files pushed" in pushed  # both variants' train and evaluate outputs
    assert "up to date" in run(DVC + ["status"], probe_project, env)  # the flow's results are the checkout's


@pytest.mark.slow
def test_train_flow_logs_each_stage_line_and_its_final_state_once(flows, probe_project: Path, prefect_api,
                                                                  monkeypatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    monkeypatch.setattr(flows, "PROJECT_DIR", probe_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    state = flows.train_vaura(overrides={"probe.value": 7}, target="train@low", name="logs-probe",
                              return_state=True)
    assert state.is_completed()
    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    messages = [log.message for log in logs]
    assert "Running stage 'train@low':" in messages  # dvc's own line, logged as it came, not inside a tail
    assert sum(m.startswith("Finished in state") for m in messages) == 1


def test_metrics_under_the_ignored_data_folder_are_cached_so_experiments_show_them() -> None:
    """`dvc exp show` reads an experiment's metrics from its commit: a git-ignored, uncached file is not there."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = [entry for stage in dvc["stages"].values() for entry in stage.get("do", stage).get("metrics", [])]
    assert declared
    for entry in declared:
        path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        if path.startswith("${paths.data}/"):
            assert opts.get("cache", True), f"{path}: cache: false metrics are invisible to `dvc exp show`"


@pytest.mark.slow
def test_a_killed_experiment_does_not_stay_running_nor_keep_its_temp_copy(flows, tmp_path: Path) -> None:
    """DVC closes its record of a `dvc exp run --temp` only when the run ends by itself."""
    from pipeline_helpers import DVC, clean_env, run

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "slow.py").write_text("import time, pathlib\ntime.sleep(300)\npathlib.Path('out.txt').write_text('x')\n")
    (proj / "params.yaml").write_text("v: 1\n")
    (proj / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python slow.py\n    deps: [slow.py]\n"
                                   "    params: [v]\n    outs: [out.txt]\n")
    env = clean_env()
    for argv in (["git", "init", "-q"], ["git", "config", "user.email", "ci@vaura"], ["git", "config", "user.name", "ci"],
                 DVC + ["init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "slow"]):
        run(argv, proj, env)
    logged: list[str] = []
    with pytest.raises(flows.StageFailed, match="ran past"):
        flows.run_experiment("doomed", {"v": 2}, "slow", proj, "p", timeout_s=60, log=logged.append)
    assert "Running stage 'slow':" in logged  # killed mid-stage, not before DVC recorded the run
    shown = run(DVC + ["exp", "show", "--csv"], proj, env)
    assert not [ln for ln in shown.splitlines() if "Running" in ln], shown
    assert not list((proj / ".dvc" / "tmp" / "exps" / "standalone").glob("tmp*"))
