"""Train the V-AURA decoder on the token/feature cache (DVC stage `train`).

Reads  <data>/cache/ (shards, index.csv, meta.json; the `cache` stage's output) and, when
       train.init_from_codec or train.log_audio_every is set, the codec of section `codec`.
Writes <data>/train/last.pt        newest checkpoint (every train.ckpt_every steps; exact-resume point)
       <data>/train/best.pt        lowest validation loss so far
       <data>/train/train_log.jsonl per-step loss, lr, grad norm, tokens/s
       <data>/train/metrics.json   final/best losses, steps, minutes
and one MLflow run (params, per-step metrics, per-codebook validation loss, system metrics, generated
validation clips as wav + spectrogram + mp4, the checkpoints).

With train.nproc = 1 it trains in this process; with train.nproc > 1 it launches
`torchrun --standalone --nproc-per-node N -m vaura.cli train ...` (gloo on CPU, NCCL on GPU); a `vaura train`
started by torchrun (LOCAL_RANK set) is a worker and trains. The launcher is tied to this process: if
`vaura train` is interrupted or killed, torchrun and its workers are terminated too. A failing worker's error is
printed once, as one line (the workers' tracebacks only with --debug).
Multi-node: infra/slurm/train.sbatch runs the same `torchrun ... -m vaura.cli train` entry point.
A killed run restarted with the same params continues exactly from last.pt (`--resume auto`). A run cut short by
the wall-clock budget train.max_minutes (0 = none, the default) exits non-zero, so DVC does not record it.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vaura.stages import ERROR_DIR_ENV, add_common, load

if TYPE_CHECKING:
    from vaura.train.config import TrainConfig

_PR_SET_PDEATHSIG = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, device="where to train; a GPU rank uses cuda:LOCAL_RANK (default: params train.device)")
    parser.add_argument("--resume", default="auto",
                        help="'auto': continue from <data>/train/last.pt when it exists (exact resume); "
                             "'never': start from scratch; or a checkpoint path")
    parser.add_argument("--checksum-dir", default=None,
                        help="write each rank's final weight SHA-256 to DIR/rank<R>.sha256 (DDP consistency check)")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the parent dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the signal forwarding below still covers SIGINT/SIGTERM
        pass


def launch(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in its own process group and never leave it behind.

    SIGINT/SIGTERM/SIGHUP to us are forwarded to the whole group; a SIGKILL to us reaches the child through
    PDEATHSIG (torchrun then stops its workers); on any exit of ours the group is killed.
    """
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, env=env)

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
    """torchrun (without its failure report, see :func:`torchrun`) running ``vaura train`` as the workers."""
    cmd = [sys.executable, "-c", "import sys; from vaura.stages.train import torchrun; sys.exit(torchrun(sys.argv[1:]))",
           "--standalone", "--nproc-per-node", str(nproc),
           "-m", "vaura.cli", "train", "--params", str(args.params), "--resume", str(args.resume)]
    for flag, value in (("--root", args.root), ("--device", getattr(args, "device", None)),
                        ("--checksum-dir", args.checksum_dir)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += [flag for flag, on in (("--no-track", args.no_track), ("--debug", args.debug)) if on]
    return cmd


def torchrun(argv: list[str]) -> int:
    """``torchrun`` whose failure is an exit status, not a report: each worker prints (or files) its one line."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError:
        return 1
    return 0


def launch_workers(args: argparse.Namespace, nproc: int) -> int:
    """Launch ``nproc`` workers; print the distinct one-line errors they left (once, not once per rank)."""
    with tempfile.TemporaryDirectory(prefix="vaura-train-errors-") as errors:
        status = launch(torchrun_command(args, nproc), env={**os.environ, ERROR_DIR_ENV: errors})
        lines = dict.fromkeys(p.read_text() for p in sorted(Path(errors).glob("rank*.err")))
    for line in lines:
        print(f"vaura train: {line}", file=sys.stderr)
    if status and not lines:
        print(f"vaura train: torchrun: a worker failed (exit status {status}); rerun with --debug for its traceback",
              file=sys.stderr)
    return 1 if status else 0


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
    from vaura.codec.config import CodecConfig
    from vaura.model.config import GenerationConfig, ModelConfig
    from vaura.train.config import TrainConfig, TrainSetup

    ctx, (cfg, model, generation, codec) = load(args, "train", train=TrainConfig, model=ModelConfig,
                                                generation=GenerationConfig, codec=CodecConfig)
    if ctx.device is not None:
        cfg = dataclasses.replace(cfg, device=ctx.device)
    if cfg.nproc > 1 and "LOCAL_RANK" not in os.environ:
        rc = launch_workers(args, cfg.nproc)
        if rc != 0:
            return rc
        return budget_verdict(json.loads((ctx.data / "train" / "metrics.json").read_text()), cfg)
    from vaura.train.trainer import train

    setup = TrainSetup(train=cfg, model=model, generation=generation, codec=codec, tracking=ctx.tracking(),
                       params=ctx.params, params_file=ctx.params_file, root=ctx.root, data_dir=ctx.data,
                       track=ctx.track)
    return budget_verdict(train(setup, resume=args.resume, checksum_dir=args.checksum_dir), cfg)
