"""dvc.yaml: structure checks (fast) and the micro profile end to end (`dvc repro`, no-op rerun, `-S` experiment)."""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaura.cli import COMMANDS
from vaura.config import flatten
from vaura.profiles import render

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = [sys.executable, "-m", "dvc"]


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _interp(text: str, params: dict) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(params[m.group(1)]), text)


def _path(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def test_stages_are_the_issue_dag_in_dependency_order() -> None:
    """Flows run the stages in file order, so every dependency on another stage's output must come earlier."""
    stages = _stages()
    assert list(stages) == ["acquire", "preprocess", "score", "filter", "codec", "avclip", "cache", "train", "sweep",
                            "evaluate", "report"]
    params = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    produced: dict[str, str] = {}
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            dep = _interp(dep, params)
            owners = [s for out, s in produced.items() if dep == out or dep.startswith(out + "/")
                      or out.startswith(dep + "/")]
            outs_later = [s for s, st in stages.items() if list(stages).index(s) > list(stages).index(name)
                          and any(_interp(_path(o), params) == dep for o in st.get("outs", []) + st.get("metrics", []))]
            assert not outs_later, f"{name} depends on {dep}, produced by later stage(s) {outs_later}"
            if dep.startswith(params["paths.data"] + "/"):
                assert owners, f"{name} depends on {dep}, which no earlier stage writes"
        for out in stage.get("outs", []) + stage.get("metrics", []):
            produced[_interp(_path(out), params)] = name


def test_every_stage_is_a_vaura_command_with_known_params() -> None:
    params = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    sections = {k.split(".")[0] for k in params}
    for name, stage in _stages().items():
        assert stage["cmd"] == f"vaura {name} --params params.yaml"
        assert name in COMMANDS
        for p in stage.get("params", []):
            assert p in params or p in sections, f"stage {name}: params key {p} not in params.yaml"
            assert not p.startswith("tracking"), "where runs are logged must not invalidate results"


@pytest.fixture(scope="module")
def micro_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh git + DVC clone of the pipeline files with params.yaml switched to the micro profile."""
    root = tmp_path_factory.mktemp("pipe")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("vaura", "configs", "assets"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(render("micro", root / "configs"))
    (root / ".gitignore").write_text("/mlruns.db\n/mlartifacts/\n")
    env = _env()
    for argv in (["git", "init", "-q"], ["git", "config", "user.email", "ci@vaura"], ["git", "config", "user.name", "ci"],
                 DVC + ["init", "-q"], DVC + ["config", "core.analytics", "false"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "micro pipeline"]):
        _run(argv, root, env)
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    for key in ("MLFLOW_TRACKING_URI", "VAURA_PIPELINE_ID", "DVC_EXP_NAME"):
        env.pop(key, None)
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{argv} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    return res.stdout + res.stderr


def _ran(log: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", log)


@pytest.mark.slow
def test_micro_pipeline_end_to_end_noop_and_experiment(micro_repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    root, env = micro_repo, _env()
    log = _run(DVC + ["repro"], root, env, timeout=1500)
    assert _ran(log) == list(_stages())
    for out in ("data/train/best.pt", "data/eval/metrics.json", "data/cache/index.csv", "data/sweep/index.csv",
                "reports/threshold.md", "reports/conditioning.md", "reports/cfg.md", "reports/cfg_curve.csv"):
        assert (root / out).is_file(), out
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(_stages())

    again = _run(DVC + ["repro"], root, env, timeout=300)
    assert _ran(again) == [] and "Data and pipelines are up to date." in again

    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "micro results"], root, env)
    exp = _run(DVC + ["exp", "run", "-n", "prepend", "-S", "model.conditioning=prepend"], root, env, timeout=900)
    assert _ran(exp) == ["train", "sweep", "evaluate", "report"]
    shown = _run(DVC + ["exp", "show", "--csv"], root, env)
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(shown)) if r["Experiment"]}
    assert rows["prepend"]["model.conditioning"] == "prepend"

    # MLflow: each pipeline run is one parent with its stages beneath; the experiment's runs form another.
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("vaura").experiment_id
    runs = client.search_runs([exp_id], max_results=500)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("vaura.role") == "pipeline"}
    stage_runs = [r for r in runs if r.data.tags.get("vaura.role") == "stage"]
    assert len(parents) == 2
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in stage_runs)
    by_parent = {pid: {r.data.tags["vaura.stage"] for r in stage_runs if r.data.tags["mlflow.parentRunId"] == pid}
                 for pid in parents}
    first, second = sorted(by_parent.values(), key=len, reverse=True)
    assert {"acquire", "preprocess", "score", "filter", "codec", "avclip", "cache", "train", "evaluate",
            "report"} <= first
    assert {"train", "evaluate", "report"} <= second and not second & {"acquire", "preprocess", "cache"}
    conds = {r.data.params.get("model.conditioning") for r in stage_runs if r.data.tags["vaura.stage"] == "train"}
    assert conds == {"fusion", "prepend"}
