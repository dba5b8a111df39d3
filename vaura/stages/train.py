"""Train the V-AURA decoder on the token/feature cache (DVC stage `train`).

Reads  <data>/cache/ (shards, index.csv, meta.json; the `cache` stage's output: windows of meta.json's window_s,
       source videos of the logged validation clips from index.csv's path) and, when train.init_from_codec or
       train.log_audio_every is set, the codec of section `codec`.
Writes <data>/train/last.pt        newest checkpoint (every train.ckpt_every steps; exact-resume point)
       <data>/train/best.pt        lowest validation loss so far
       <data>/train/train_log.jsonl per-step loss, lr, grad norm, tokens/s
       <data>/train/metrics.json   final/best losses, steps, minutes
and one MLflow run (params, per-step metrics, per-codebook validation loss, system metrics, generated
validation clips as wav + spectrogram + mp4, the checkpoints).

With train.nproc = 1 it trains in this process; with train.nproc > 1 it launches
`torchrun --standalone --nproc-per-node N -m vaura.train` (gloo on CPU, NCCL on GPU). The launcher is tied
to this process: if `vaura train` is interrupted or killed, torchrun and its workers are terminated too.
Multi-node: infra/slurm/train.sbatch runs the same `-m vaura.train` entry point.
A killed run restarted with the same params continues exactly from last.pt (`--resume auto`). A run cut short by
the wall-clock budget train.max_minutes (0 = none, the default) exits non-zero, so DVC does not record it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys

from vaura.train.config import TrainConfig, load_setup

_PR_SET_PDEATHSIG = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vaura.train.__main__ import add_arguments as add_train_arguments

    add_train_arguments(parser)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the parent dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the signal forwarding below still covers SIGINT/SIGTERM
        pass


def launch(cmd: list[str]) -> int:
    """Run ``cmd`` in its own process group and never leave it behind.

    SIGINT/SIGTERM/SIGHUP to us are forwarded to the whole group; a SIGKILL to us reaches the child through
    PDEATHSIG (torchrun then stops its workers); on any exit of ours the group is killed.
    """
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)

    def forward(signum: int, _frame: object) -> None:
        with_group(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            with_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with_group(proc.pid, signal.SIGKILL)
                proc.wait()


def with_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def torchrun_command(args: argparse.Namespace, nproc: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "vaura.train", "--params", str(args.params), "--resume", str(args.resume)]
    if args.checksum_dir:
        cmd += ["--checksum-dir", str(args.checksum_dir)]
    return cmd


# Exit status of a run cut short by train.max_minutes: DVC records no failed stage in dvc.lock or its cache.
BUDGET_EXIT = 3


def budget_verdict(result: dict, cfg: TrainConfig) -> int:
    """0, or :data:`BUDGET_EXIT` with a one-line reason when the wall-clock budget ended training early.

    How far a time budget gets depends on the machine's load, so such a run is not a reproduction of its params:
    its checkpoints stay in place (the next ``dvc repro`` resumes from last.pt) but the stage fails.
    """
    if not result.get("stopped_early"):
        return 0
    print(f"vaura train: train.max_minutes={cfg.max_minutes:g} stopped training at step {result.get('steps')} of "
          f"train.total_steps={cfg.total_steps}: not recorded as a reproduction; last.pt is kept and the next "
          "`dvc repro` resumes from it (train.max_minutes: 0 trains to total_steps in one go)", file=sys.stderr)
    return BUDGET_EXIT


def run(args: argparse.Namespace) -> int:
    setup = load_setup(args.params)
    if setup.train.nproc > 1:
        rc = launch(torchrun_command(args, setup.train.nproc))
        if rc != 0:
            return rc
        return budget_verdict(json.loads((setup.data_dir / "train" / "metrics.json").read_text()), setup.train)
    from vaura.train.trainer import train

    return budget_verdict(train(setup, resume=args.resume, checksum_dir=args.checksum_dir), setup.train)
