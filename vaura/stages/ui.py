"""The MLflow UI on this project's runs: the command that serves it and the direct link to the runs table.

  vaura ui           print the `mlflow ui` command for the configured store and the link to open
  vaura ui --serve   start it (127.0.0.1 only) and print the link

MLflow 3 opens an experiment on its GenAI overview; the link goes straight to the experiment's runs table,
where each pipeline run is a parent row with its stage runs beneath it and the paper tables in its description.
With the local stack (`$MLFLOW_TRACKING_URI` = its server) the link points at that server instead.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from vaura.config import ConfigError, load_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="port of `mlflow ui` (default: %(default)s)")
    parser.add_argument("--serve", action="store_true", help="start `mlflow ui` (blocks until interrupted)")


def ui_command(store_uri: str, port: int) -> list[str]:
    """``mlflow ui`` over ``store_uri`` (a relative sqlite path made absolute), bound to 127.0.0.1."""
    if store_uri.startswith("sqlite:///") and not store_uri.startswith("sqlite:////"):
        store_uri = "sqlite:///" + str(Path(store_uri[len("sqlite:///"):]).resolve())
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri, "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]


def run(args: argparse.Namespace) -> int:
    from vaura.redact import redact
    from vaura.tracking import experiment_id, runs_link, tracking_config

    try:
        params = load_yaml(args.params) if args.params.is_file() else {}
        cfg = tracking_config(params, args.params)
    except ConfigError as exc:
        print(f"vaura ui: {exc}", file=sys.stderr)
        return 1
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    server = uri.startswith(("http://", "https://"))
    base = uri if server else f"http://127.0.0.1:{args.port}"
    exp = experiment_id(params, args.params)
    cmd = ui_command(uri, args.port)
    if not server:
        print(f"MLflow UI: {shlex.join(cmd)}")
    if exp is None:
        print(f"  no runs in experiment '{cfg.experiment}' of {redact(uri)} yet (run `dvc repro`): {base}")
    else:
        print(f"  runs and paper tables ({cfg.experiment}): {redact(runs_link(base, exp))}")
    if args.serve and not server:
        return subprocess.call(cmd)
    return 0
