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
                              no_track=True, debug=False)
    cmd = torchrun_command(args, 4)
    assert "torchrun" in cmd[2]  # torchrun, run in-process by vaura.stages.train.torchrun
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[-8:] == ["-m", "vaura.cli", "train", "--params", str(tmp_path / "p.yaml"), "--resume", "never",
                        "--no-track"]


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
