"""Switch ``params.yaml`` to a parameter profile.

  vaura profile offline   the default: synthetic benchmark, offline stand-in encoders, CPU-sized (minutes)
  vaura profile paper     the published setup: real data and pretrained weights under weights/, GPUs
  vaura profile micro     tiny everything, for CI and quick checks

configs/offline.yaml is the full, commented parameter file; the other profiles list only the keys they
change. The result is validated strictly before params.yaml is replaced; DVC then re-runs exactly the stages
whose parameters changed. `--check` exits 1 (writing nothing) when params.yaml differs from the profile.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vaura.profiles import render, switch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="profile name: a file configs/<name>.yaml (offline, paper, micro)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="file to write (default: %(default)s)")
    parser.add_argument("--configs", type=Path, default=None,
                        help="profile folder (default: configs/ beside the params file)")
    parser.add_argument("--check", action="store_true", help="only report whether params.yaml matches the profile")


def run(args: argparse.Namespace) -> int:
    configs = args.configs if args.configs is not None else args.params.parent / "configs"
    if args.check:
        same = args.params.exists() and args.params.read_text() == render(args.name, configs)
        print(f"{args.params}: {'matches' if same else 'differs from'} profile '{args.name}'")
        return 0 if same else 1
    changed = switch(args.name, args.params, configs)
    print(f"{args.params}: profile '{args.name}'" + ("" if changed else " (already)"))
    return 0
