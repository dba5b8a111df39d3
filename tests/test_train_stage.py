"""`vaura train` with train.nproc > 1 launches torchrun; killing the launcher must not orphan the workers."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from train_helpers import write_micro_cache, write_params
from vaura.stages.train import torchrun_command


def test_torchrun_command_carries_the_entry_point_and_options(tmp_path):
    import argparse

    args = argparse.Namespace(params=tmp_path / "p.yaml", resume="never", checksum_dir=None, root=None,
                              device="cpu", no_track=True, debug=False)
    cmd = torchrun_command(args, 4)
    assert "torchrun" in cmd[2]  # torchrun, run in-process by vaura.stages.train.torchrun
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[-10:] == ["-m", "vaura.cli", "train", "--params", str(tmp_path / "p.yaml"), "--resume", "never",
                         "--device", "cpu", "--no-track"]  # the workers get the launcher's flags


@pytest.mark.slow
def test_sigkill_of_the_launcher_takes_torchrun_and_workers_down(tmp_path):
    data = tmp_path / "data"
    write_micro_cache(data)
    params = write_params(tmp_path / "params.yaml", data, f"sqlite:///{tmp_path / 'ml.db'}", nproc=2,
                          total_steps=100000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "vaura.cli", "train", "--params", str(params)], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(parent.pid)
    deadline = time.monotonic() + 120
    workers: list[psutil.Process] = []
    while len(workers) < 3:  # torchrun + 2 workers
        assert parent.poll() is None, "launcher exited early"
        assert time.monotonic() < deadline, "torchrun workers never appeared"
        workers = proc.children(recursive=True)
        time.sleep(0.1)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs(workers, timeout=60)
    for p in alive:  # clean up before failing
        p.kill()
    assert not alive, [p.pid for p in alive]


def test_a_run_cut_short_by_the_time_budget_fails_the_stage_and_keeps_its_checkpoint(tmp_path, monkeypatch, capsys):
    """How far a wall-clock budget gets depends on the machine's load: DVC must not record such a run, so the
    stage exits non-zero; last.pt stays for the resume."""
    from vaura.cli import main
    from vaura.stages.train import BUDGET_EXIT

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    write_micro_cache(data)
    params = write_params(tmp_path / "params.yaml", data, f"sqlite:///{tmp_path / 'ml.db'}", total_steps=4,
                          max_minutes=1e-9, eval_every=2, ckpt_every=2)
    assert main(["train", "--params", str(params)]) == BUDGET_EXIT
    assert "train.max_minutes=1e-09 stopped training at step 1 of train.total_steps=4" in capsys.readouterr().err
    assert (data / "train" / "last.pt").is_file()


def test_no_profile_stops_training_by_the_wall_clock() -> None:
    """Default params (and every profile) train to total_steps: the cached result cannot depend on the load."""
    from pathlib import Path

    import yaml

    from vaura.profiles import render

    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in ("offline", "micro", "paper"):
        params = yaml.safe_load(render(name, configs))
        assert params["train"]["max_minutes"] == 0, name
