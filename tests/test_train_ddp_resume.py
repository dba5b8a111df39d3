"""Exact resume under DDP: a 2-rank torchrun job SIGKILLed (launcher and workers) after a checkpoint and
relaunched reproduces an uninterrupted 2-rank run of the same seed, step by step and in its final weights."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from train_helpers import read_losses, resume_jobs, wait_for_file

TOTAL = 12
pytestmark = pytest.mark.slow


def _cmd(params, sums):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "vaura.cli", "train", "--params", str(params), "--checksum-dir", str(sums)]


def test_killed_ddp_job_resumes_to_the_uninterrupted_result(tmp_path):
    env, made, _ = resume_jobs(tmp_path, TOTAL)
    jobs = {name: (data, params, tmp_path / name / "sums") for name, (data, params) in made.items()}

    def launch(name):
        data, params, sums = jobs[name]
        return subprocess.Popen(_cmd(params, sums), cwd=data.parent, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    ref, victim = launch("ref"), launch("killed")
    last = jobs["killed"][0] / "train" / "last.pt"
    wait_for_file(victim, last, 300, "torchrun")
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both ranks, as a node failure would
    assert victim.wait() == -signal.SIGKILL
    killed_at = torch.load(last, weights_only=True)["step"]
    assert 3 <= killed_at < TOTAL

    resumed = subprocess.run(_cmd(jobs["killed"][1], jobs["killed"][2]), cwd=jobs["killed"][0].parent, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-3000:]

    ref_losses, got_losses = read_losses(jobs["ref"][0]), read_losses(jobs["killed"][0])
    assert sorted(ref_losses) == sorted(got_losses) == list(range(1, TOTAL + 1))
    for step in ref_losses:
        assert got_losses[step] == pytest.approx(ref_losses[step], rel=1e-6, abs=0), step
    sums = {name: [(jobs[name][2] / f"rank{r}.sha256").read_text().strip() for r in (0, 1)] for name in jobs}
    assert sums["killed"][0] == sums["killed"][1]  # the resumed replicas agree with each other...
    a = torch.load(jobs["ref"][0] / "train" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    for k in a["model"]:  # ...and with the job that was never interrupted
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-6, atol=0)
    assert a["data"] == b["data"] and a["step"] == b["step"] == TOTAL and b["world_size"] == 2
