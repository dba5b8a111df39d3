"""Two training nodes simulated on 127.0.0.1: two torchrun launchers (``--nnodes 2 --nproc-per-node 1``, c10d
rendezvous, gloo on CPU) running the torchrun command of ``infra/slurm/train.sbatch`` itself.

- the two-node run equals a one-node two-process run of the same global batch, step by step and in its weights;
- a SIGKILLed worker on one node is restarted by torchrun (``--max-restarts``), every node's workers restart
  from ``last.pt``, and the run ends with the same losses and weights as the uninterrupted one.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from train_helpers import (SBATCH, assert_same_training, sbatch_exports, sbatch_torchrun, write_micro_cache,
                           write_params)

TOTAL = 9
pytestmark = pytest.mark.slow


def expand(tokens: list[str], values: dict[str, str]) -> list[str]:
    """Substitute ``$VAR`` / ``${VAR}`` as the shell would; an unknown variable is an error (the script changed)."""
    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"{SBATCH.name} uses ${name}; the test does not know it"
        return values[name]

    return [re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, t) for t in tokens]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(tmp: Path, name: str, cache: Path) -> tuple[Path, Path]:
    import shutil

    data = tmp / name / "data"
    shutil.copytree(cache, data / "cache")
    params = write_params(tmp / name / "params.yaml", data, f"sqlite:///{tmp / name / 'ml.db'}", total_steps=TOTAL,
                          eval_every=3, ckpt_every=3, grad_accum=2)
    return data, params


def node_command(params: Path, port: int, job_id: str) -> list[str]:
    return expand(sbatch_torchrun(), {
        "PYTHON": sys.executable, "SLURM_JOB_NUM_NODES": "2", "GPUS_PER_NODE": "1", "SLURM_JOB_ID": job_id,
        "head_node": "127.0.0.1", "RDZV_PORT": str(port), "MAX_RESTARTS": "1", "PARAMS": str(params)})


def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """A launcher in its own process group; stderr to a file (a full pipe would stall a rank mid-collective)."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=fh)
    proc.stderr_log = log
    return proc


def launch_nodes(params: Path, cwd: Path, env: dict, job_id: str) -> list[subprocess.Popen]:
    port = free_port()
    cmd = node_command(params, port, job_id)
    cmd.insert(cmd.index("--nnodes=2"), "--local-addr=127.0.0.1")  # loopback only, as everything in the tests
    return [start(cmd, cwd, env, cwd / f"node{i}.log") for i in range(2)]


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    """Wait for every launcher (killing all on a timeout); each must exit 0. Returns their stderr."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    errs = [Path(p.stderr_log).read_text() for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-3000:]
    return errs


def same_run(a: Path, b: Path) -> None:
    """Same per-step losses and the same final weights and data position."""
    ca, cb = assert_same_training(a, b, TOTAL)
    assert ca["data"] == cb["data"] and ca["step"] == cb["step"] == TOTAL and cb["world_size"] == 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The shared cache, the environment, and the one-node two-process reference run everything is compared to."""
    tmp = tmp_path_factory.mktemp("multinode")
    cache = write_micro_cache(tmp / "cache_src")
    env = {**os.environ, **sbatch_exports(), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    one_data, one_params = job(tmp, "one_node", cache)
    finish([start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "vaura.cli", "train", "--params", str(one_params)], one_data.parent, env,
                  tmp / "one_node.log")])
    return tmp, cache, env, one_data


def test_sbatch_runs_the_training_entry_point_with_elastic_c10d_rendezvous():
    cmd = node_command(Path("p.yaml"), 29501, "42")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("-m", 3):] == ["-m", "vaura.cli", "train", "--params", "p.yaml", "--resume", "auto"]
    assert {"--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:29501",
            "--rdzv-id=42", "--max-restarts=1"} <= set(cmd)
    assert sbatch_exports()["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_two_nodes_equal_one_node_with_the_same_global_batch(runs):
    tmp, cache, env, one_data = runs
    two_data, two_params = job(tmp, "two_nodes", cache)
    finish(launch_nodes(two_params, two_data.parent, env, "two-nodes"))
    # both: 2 ranks x batch 2 x 2 micro-batches per step; rank r reads the same DistributedSampler shard,
    # draws from the same per-rank RNG streams, and the gloo mean over 2 ranks is order-independent
    same_run(one_data, two_data)


def test_a_killed_worker_is_restarted_and_the_run_resumes_exactly(runs):
    tmp, cache, env, one_data = runs
    data, params = job(tmp, "killed", cache)
    nodes = launch_nodes(params, data.parent, env, "killed")
    deadline = time.monotonic() + 240
    while not (data / "train" / "last.pt").exists():
        assert nodes[1].poll() is None and time.monotonic() < deadline, nodes[1].stderr_log.read_text()[-3000:]
        time.sleep(0.01)
    first = [psutil.Process(n.pid).children() for n in nodes]
    assert [len(w) for w in first] == [1, 1] and "vaura.cli" in " ".join(first[1][0].cmdline())
    first[1][0].send_signal(signal.SIGKILL)  # one node's worker dies; its launcher and the other node live on
    killed_at = torch.load(data / "train" / "last.pt", weights_only=True)["step"]
    assert 3 <= killed_at < TOTAL
    # torchrun restarts the worker group on every node: each launcher gets a new worker process
    old = {w.pid for ws in first for w in ws}
    restarted: set[int] = set()
    deadline = time.monotonic() + 120
    while len(restarted) < 2 and time.monotonic() < deadline and all(n.poll() is None for n in nodes):
        for i, n in enumerate(nodes):
            if any(c.pid not in old for c in psutil.Process(n.pid).children()):
                restarted.add(i)
        time.sleep(0.02)
    assert restarted == {0, 1}, "torchrun did not restart both nodes' workers"
    finish(nodes)  # exit 0: the job survived the lost worker
    # resumed, not restarted from scratch: the checkpoint's MLflow run was continued (a fresh start opens a new one)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{data.parent / 'ml.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`vaura.stage` = 'train'")
    assert len(runs) == 1
    same_run(one_data, data)  # = the uninterrupted run (two nodes equal one node: the test above)
