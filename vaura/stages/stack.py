"""Start, inspect or stop the local stack: S3 (localbucket), MLflow server, Prefect server, process work pool + worker.

  vaura stack up        start everything on 127.0.0.1, deploy prefect.yaml, point the DVC remote at the bucket
  vaura stack status    one line per service: pid, alive, healthy; flow-run processes a dead worker left
  vaura stack down      stop every service and every flow run it started (SIGTERM, then SIGKILL; also
                        those of a dead worker) and remove the DVC remote it set

After `up`, `source .stack/env.sh` gives a shell PREFECT_API_URL, MLFLOW_TRACKING_URI and the S3 credentials,
so `prefect deployment run train-vaura/local`, `dvc push` and the MLflow UI work. Ports, bucket and state
folder come from the flags or the VAURA_STACK_DIR / VAURA_S3_PORT / VAURA_MLFLOW_PORT / VAURA_PREFECT_PORT /
VAURA_S3_BUCKET environment variables.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vaura.stack import StackSettings, down, status, strays, up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = StackSettings()
    parser.add_argument("action", choices=["up", "down", "status"], help="what to do with the stack")
    parser.add_argument("--state-dir", type=Path, default=defaults.state_dir,
                        help="pid record, logs, sqlite databases and env.sh (default: %(default)s)")
    parser.add_argument("--project-dir", type=Path, default=defaults.project_dir,
                        help="repo whose prefect.yaml is deployed and whose DVC remote is set (default: cwd)")
    parser.add_argument("--s3-port", type=int, default=defaults.s3_port, help="S3 port (default: %(default)s)")
    parser.add_argument("--mlflow-port", type=int, default=defaults.mlflow_port,
                        help="MLflow server port (default: %(default)s)")
    parser.add_argument("--prefect-port", type=int, default=defaults.prefect_port,
                        help="Prefect server port (default: %(default)s)")
    parser.add_argument("--bucket", default=defaults.bucket, help="S3 bucket for MLflow artifacts and DVC")
    parser.add_argument("--work-pool", default=defaults.work_pool, help="Prefect process work pool name")
    parser.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s,
                        help="seconds to wait for all services to become healthy (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    settings = StackSettings(
        state_dir=args.state_dir, project_dir=args.project_dir, s3_port=args.s3_port,
        mlflow_port=args.mlflow_port, prefect_port=args.prefect_port, bucket=args.bucket,
        work_pool=args.work_pool, deploy=not args.no_deploy, timeout_s=args.timeout,
    )
    if args.action == "up":
        up(settings)
    elif args.action == "down":
        down(settings)
    else:
        rows = status(settings)
        if not rows:
            print(f"no stack recorded in {settings.state_dir}")
            return 1
        for name, pid, alive, healthy in rows:
            print(f"{name:15s} pid {pid:<8d} {'alive' if alive else 'dead':6s} "
                  f"{'healthy' if healthy else 'unhealthy'}")
        left = strays(settings)
        if left:
            print(f"{len(left)} process(es) of flow runs whose worker died still run: "
                  f"{' '.join(str(p.pid) for p in left)} (`vaura stack down` stops them)")
        return 0 if all(h for *_, h in rows) and not left else 1
    return 0
