"""Build a fresh git + DVC clone of the pipeline on the micro profile (shared by test_pipeline and test_stack)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from vaura.profiles import render

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = [sys.executable, "-m", "dvc"]
# What a clone needs to run the pipeline and the Prefect deployments (code deps of dvc.yaml included).
PIPELINE_FILES = ("dvc.yaml", ".dvcignore", "prefect.yaml")
PIPELINE_DIRS = ("vaura", "configs", "assets", "flows")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This venv first on PATH; no tracking/pipeline settings leaking in from the caller's shell."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    for key in ("MLFLOW_TRACKING_URI", "VAURA_PIPELINE_ID", "DVC_EXP_NAME", "PREFECT_API_URL"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{argv} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    return res.stdout + res.stderr


def ran_stages(log: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", log)


def make_micro_repo(root: Path) -> Path:
    """Copy the pipeline files into ``root``, switch params.yaml to the micro profile, git + dvc init, commit."""
    root.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PIPELINE_DIRS:
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in PIPELINE_FILES:
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(render("micro", root / "configs"))
    (root / ".gitignore").write_text("/mlruns.db\n/mlartifacts/\n/.stack/\n")
    env = clean_env()
    for argv in (["git", "init", "-q"], ["git", "config", "user.email", "ci@vaura"], ["git", "config", "user.name", "ci"],
                 DVC + ["init", "-q"], DVC + ["config", "core.analytics", "false"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "micro pipeline"]):
        run(argv, root, env)
    return root
