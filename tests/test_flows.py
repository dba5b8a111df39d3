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


def test_ablation_table_takes_each_variants_latest_run(flows) -> None:
    runs = [
        {"stage": "evaluate", "variant": "baseline", "metrics": {"sync_ms": 90.0}},
        {"stage": "evaluate", "variant": "baseline", "metrics": {"sync_ms": 50.0}},
        {"stage": "train", "variant": "prepend", "metrics": {"loss": 3.0}},
        {"stage": "evaluate", "variant": "", "metrics": {"sync_ms": 1.0}},
        {"stage": "evaluate", "variant": "prepend", "metrics": {"sync_ms": 105.0}},
    ]
    table = flows.ablation_table(runs, ["baseline", "prepend", "unfiltered"])
    assert table == [{"variant": "baseline", "sync_ms": 50.0}, {"variant": "prepend", "sync_ms": 105.0},
                     {"variant": "unfiltered"}]


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
import sys, mlflow, yaml
from vaura.tracking import stage_run
stage, variant, p = sys.argv[1], sys.argv[2], yaml.safe_load(open("params.yaml"))
value = float(p["ablation"]["variants"][variant]["value"]) if variant != "-" else float(p["probe"]["value"])
with stage_run(stage, {"probe": {"value": value}}, {"vaura.variant": variant} if variant != "-" else {},
               params_file="params.yaml"):
    value *= 2 if stage == "evaluate" else 1
    mlflow.log_metric("score", value)
open(f"{stage}-{variant}.txt", "w").write(str(value))
'''

PROBE_DVC = """\
stages:
  train:
    cmd: python probe.py train -
    deps: [probe.py]
    params: [probe.value]
    outs: [train--.txt]
  evaluate:
    foreach: ${ablation.variants}
    do:
      cmd: python probe.py evaluate ${key}
      deps: [probe.py, train--.txt]
      params:
        - ablation.variants.${key}
      outs:
        - evaluate-${key}.txt
"""


@pytest.fixture(scope="module")
def probe_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-stage DVC project whose stages log to MLflow through vaura.tracking, as the real stages do."""
    from pipeline_helpers import DVC, clean_env, run

    proj = tmp_path_factory.mktemp("flows") / "proj"
    proj.mkdir()
    (proj / "probe.py").write_text(PROBE_STAGE)
    (proj / "dvc.yaml").write_text(PROBE_DVC)
    (proj / "params.yaml").write_text("probe:\n  value: 1\nablation:\n  baseline: low\n  variants:\n"
                                      "    low: {value: 3}\n    high: {value: 5}\n"
                                      "tracking:\n  uri: sqlite:///mlruns.db\n"
                                      "  artifact_root: mlartifacts\n  experiment: vaura\n  system_metrics: false\n"
                                      "  system_metrics_interval_s: 10.0\n")
    (proj / ".gitignore").write_text("/mlruns.db\n/mlartifacts/\n")
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
def test_pipeline_and_ablation_flows_group_runs_and_gather_the_table(flows, probe_project: Path, prefect_api,
                                                                     monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(flows, "PROJECT_DIR", probe_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert flows.vaura_pipeline() == ["train", "evaluate"]
    assert (probe_project / "evaluate-low.txt").read_text() == "6.0"
    assert (probe_project / "evaluate-high.txt").read_text() == "10.0"
    (probe_project / "evaluate-high.txt").unlink()  # the ablation flow must bring it back, from params.yaml

    table = flows.ablation(report=False)
    # only `high` ran in this flow run (`low` was up to date), so only it has metrics under the flow's parent
    assert [(row["variant"], row.get("score")) for row in table] == [("low", None), ("high", 10.0)]
    assert (probe_project / "evaluate-high.txt").read_text() == "10.0"
    with pytest.raises(flows.StageFailed, match="unknown variant"):
        flows.ablation(variants=["nope"], report=False)

    client = MlflowClient(f"sqlite:///{probe_project / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("vaura").experiment_id
    runs = client.search_runs([exp_id], max_results=100)
    pids = {r.data.tags["vaura.pipeline_id"] for r in runs}
    assert {p.split("-")[0] for p in pids} == {"vaura", "ablation"}
    ablation_stage_runs = [r for r in runs if r.data.tags["vaura.pipeline_id"].startswith("ablation-")
                           and r.data.tags["vaura.role"] == "stage"]
    assert [r.data.tags["vaura.variant"] for r in ablation_stage_runs] == ["high"]  # low was up to date
