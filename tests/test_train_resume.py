"""Exact resume: a training process really SIGKILLed after a checkpoint and restarted reproduces the
per-step losses and final weights of an uninterrupted run of the same seed."""
import json
import signal
import subprocess
import sys

import pytest
import torch

from train_helpers import assert_same_training, resume_jobs, wait_for_file

TOTAL = 12


def _cmd(params):
    return [sys.executable, "-m", "vaura.cli", "train", "--params", str(params)]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run and a killed-then-resumed run (started side by side to save wall time)."""
    tmp = tmp_path_factory.mktemp("resume")
    env, dirs, uri = resume_jobs(tmp, TOTAL)
    popen = lambda name: subprocess.Popen(_cmd(dirs[name][1]), cwd=dirs[name][0].parent, env=env,  # noqa: E731
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ref, victim = popen("ref"), popen("killed")
    last = dirs["killed"][0] / "train" / "last.pt"
    wait_for_file(victim, last, 240, "training")
    victim.send_signal(signal.SIGKILL)
    killed_rc = victim.wait()
    killed_at = torch.load(last, weights_only=True)["step"]
    resumed = subprocess.run(_cmd(dirs["killed"][1]), cwd=dirs["killed"][0].parent, env=env, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ref.wait(timeout=240) == 0, ref.stderr.read()[-3000:]
    return {"ref": dirs["ref"][0], "killed": dirs["killed"][0], "killed_rc": killed_rc, "killed_at": killed_at,
            "uri": uri}


def test_process_was_really_killed_mid_run(runs):
    assert runs["killed_rc"] == -signal.SIGKILL
    assert 3 <= runs["killed_at"] < TOTAL


def test_resumed_losses_and_weights_equal_uninterrupted(runs):
    a, b = assert_same_training(runs["ref"], runs["killed"], TOTAL)
    assert a["data"] == b["data"] and a["step"] == b["step"] == TOTAL


def test_checkpoint_is_weights_only_and_complete(runs):
    ckpt = torch.load(runs["killed"] / "train" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "data", "step", "best_val"} <= set(ckpt)
    assert all("exp_avg" in s for s in ckpt["optimizer"]["state"].values())
    assert ckpt["scheduler"]["last_epoch"] == TOTAL
    assert set(ckpt["rng"][0]) == {"torch", "cuda", "numpy", "python", "cond"}
    best = torch.load(runs["killed"] / "train" / "best.pt", weights_only=True)
    metrics = json.loads((runs["killed"] / "train" / "metrics.json").read_text())
    assert best["best_val"] == pytest.approx(metrics["best_val_loss"]) and best["step"] % 3 == 0


def test_killed_and_resumed_training_is_one_mlflow_run(runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(runs["uri"])
    exp = client.get_experiment_by_name("test")
    train_runs = client.search_runs([exp.experiment_id], "tags.`vaura.stage` = 'train'")
    assert len(train_runs) == 2
    for run in train_runs:
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert {m.step for m in history} == set(range(1, TOTAL + 1))
