"""torchrun target: ``torchrun --nproc-per-node N -m vaura.train --params params.yaml`` (or ``python -m vaura.train``).

Trains the V-AURA decoder on the token/feature cache under ``paths.data`` with the ``train`` and ``model``
sections of the params file. Rank, local rank and world size come from the torchrun environment
(``RANK``/``LOCAL_RANK``/``WORLD_SIZE``); without them it runs as a single process. Writes
``<data>/train/{last,best}.pt``, ``train_log.jsonl`` and ``metrics.json``, and one MLflow run (rank 0).
"""
from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vaura.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (sections train, model, generation, codec, paths, tracking)")
    p.add_argument("--resume", default="auto",
                   help="'auto': continue from <data>/train/last.pt when it exists (exact resume); "
                        "'never': start from scratch; or a checkpoint path")
    p.add_argument("--checksum-dir", default=None,
                   help="write each rank's final weight SHA-256 to DIR/rank<R>.sha256 (DDP consistency check)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from vaura.train.config import load_setup
    from vaura.train.trainer import train

    result = train(load_setup(args.params), resume=args.resume, checksum_dir=args.checksum_dir)
    logging.getLogger("vaura.train").info("done: %s", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
