"""A crash under `dvc repro` does not lose the training run.

`dvc repro` is SIGKILLed (its whole process tree, as a power cut or the OOM killer would) during `train`; the
next `dvc repro` must continue from the last checkpoint (DVC must not delete it first), reproduce an
uninterrupted run's per-step losses, and close the killed MLflow run instead of leaving it RUNNING. The stage is
the real one from the repository's dvc.yaml (one per ablation variant: its command, outs and their `persist`
flags), on the micro training cache with a single variant, the baseline, whose split lists name every cached clip.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline_helpers import DVC, REPO, clean_env, run
from train_helpers import assert_same_training, read_losses, resume_jobs, wait_for_file
from vaura.tables import read_table, write_table
from vaura.variants import output_dir

TOTAL = 12
VARIANT = "baseline"
pytestmark = pytest.mark.slow


def _train_only_project(root: Path) -> None:
    """dvc.yaml holding the repository's `train` stage, narrowed to what the micro project has."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    params = yaml.safe_load((root / "params.yaml").read_text())

    def local(entry):
        return json.loads(json.dumps(entry).replace("${paths.data}", "data"))

    do = local(stage["do"])
    do["deps"] = [d for d in do["deps"] if (root / d.replace("${key}", VARIANT)).exists()]
    do["params"] = [p for p in do["params"] if p.split(".")[0] in params]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {**stage, "do": do}}}, sort_keys=False))
    env = clean_env()
    for argv in (DVC + ["init", "-q", "--no-scm"], DVC + ["config", "core.analytics", "false"]):
        run(argv, root, env)


def _one_variant(data: Path, params_path: Path) -> None:
    """Only the baseline variant, its split lists naming every cached clip (what its `filter` would keep)."""
    params = yaml.safe_load(params_path.read_text())
    params["ablation"] = {"baseline": VARIANT, "variants": {VARIANT: {}}}
    params_path.write_text(yaml.safe_dump(params))
    splits = data / "splits" / VARIANT
    index = read_table(data / "cache" / "index.csv", {"clip", "split", "path"})
    for split in ("train", "val"):
        write_table(splits / f"{split}.csv", index.loc[index["split"] == split, ["clip", "path"]])


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dvc_crash")
    _, dirs, uri = resume_jobs(tmp, TOTAL)
    env = clean_env({"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    root = dirs["killed"][0].parent
    for data, params_path in dirs.values():
        _one_variant(data, params_path)
    _train_only_project(root)
    ref = subprocess.Popen([sys.executable, "-m", "vaura.cli", "train", "--params", str(dirs["ref"][1]), "--variant", VARIANT],
                           cwd=dirs["ref"][0].parent,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    repro = subprocess.Popen(DVC + ["repro"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    last = output_dir(dirs["killed"][0], "train", VARIANT) / "last.pt"
    wait_for_file(repro, last, 300, "dvc repro")
    os.killpg(repro.pid, signal.SIGKILL)
    killed_rc = repro.wait()
    at_kill = torch.load(last, weights_only=True)
    second = run(DVC + ["repro"], root, env, timeout=300)
    third = run(DVC + ["repro"], root, env, timeout=120)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-3000:]
    return {"root": root, "ref": dirs["ref"][0], "killed": dirs["killed"][0], "uri": uri, "killed_rc": killed_rc,
            "killed_at": at_kill["step"], "killed_run": at_kill["mlflow_run_id"], "second": second, "third": third,
            "env": env}


def test_repro_was_really_killed_mid_training(crashed):
    assert crashed["killed_rc"] == -signal.SIGKILL
    assert 3 <= crashed["killed_at"] < TOTAL


def test_rerun_resumes_and_matches_uninterrupted_losses(crashed):
    assert_same_training(crashed["ref"], crashed["killed"], TOTAL, VARIANT)
    assert "didn't change" in crashed["third"] or "up to date" in crashed["third"]


def test_killed_mlflow_run_is_continued_and_finished(crashed):
    """Resumed, not restarted: the run the killed process opened is the one that finishes (a restart from step 0
    would open a second run and leave the first RUNNING)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(crashed["uri"])
    exp = client.get_experiment_by_name("test")
    runs = client.search_runs([exp.experiment_id], "tags.`vaura.stage` = 'train'")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert crashed["killed_run"] in {r.info.run_id for r in runs}
    history = client.get_metric_history(crashed["killed_run"], "train/loss")
    assert {m.step for m in history} == set(range(1, TOTAL + 1))


def test_changed_params_start_fresh_instead_of_continuing_the_old_checkpoint(crashed):
    """last.pt survives `dvc repro` only to be resumed by the same run: new params train from step 0."""
    root = crashed["root"]
    before = read_losses(crashed["killed"], VARIANT)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["seed"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run(DVC + ["repro"], root, crashed["env"], timeout=300)
    after = read_losses(crashed["killed"], VARIANT)
    assert sorted(after) == list(range(1, TOTAL + 1)) and after != before  # retrained, not "already at step 12"
    ckpt = torch.load(output_dir(crashed["killed"], "train", VARIANT) / "last.pt", weights_only=True)
    assert ckpt["train_config"]["seed"] == params["train"]["seed"] and ckpt["mlflow_run_id"] != crashed["killed_run"]
