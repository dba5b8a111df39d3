"""Fetch raw videos into <data>/raw (DVC stage `acquire`).

Sources (params `acquire.source`, `acquire.uri`):
  synthetic   render the synthetic benchmark (params `synthetic`, top-level `seed`): MP4s + manifest.csv +
              events.csv + relevance.csv
  local       copy every file of the folder `uri`
  s3          download every object under `uri` = s3://bucket/prefix (boto3; `acquire.endpoint_url` for
              S3-compatible servers such as moto/MinIO; credentials only from the environment:
              AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY[, AWS_SESSION_TOKEN])
  https       download every URL listed in the text file (or URL) `uri`: one `URL [sha256]` per line

Credentials never go in params.yaml (DVC records params values verbatim in dvc.lock, and git keeps them): S3 keys
come from AWS_* environment variables, presigned/signed URLs belong in the URL-list file. A params value that
carries one (user:password@, X-Amz-Signature=, sig=, token=...) stops the stage before anything is recorded.
Bad files (empty, unreadable, unsafe names such as ../x, 404, checksum mismatch) are listed with their reason in
OUT/rejected.csv and the rest goes on.

Resumable: complete files are skipped, NAME.part files are continued (HTTP/S3 Range) or redone, sizes and
checksums are verified where the source declares them; failures are retried with exponential backoff.
A source without its own manifest.csv gets one listing every file (split = `acquire.default_split`).

  vaura acquire --params params.yaml
  vaura acquire --params params.yaml --source s3 --uri s3://bucket/videos --output /tmp/raw
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vaura.config import load_section, to_dict
from vaura.stages import add_common, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--source", choices=["synthetic", "local", "s3", "https"], default=None,
                        help="override acquire.source")
    parser.add_argument("--uri", default=None, help="override acquire.uri (folder, s3://bucket/prefix or URL list)")
    parser.add_argument("--output", type=Path, default=None, help="output folder (default: <paths.data>/<acquire.output>)")


def run(args: argparse.Namespace) -> int:
    from vaura.data.sources import AcquireConfig, acquire
    from vaura.data.synthetic import SyntheticConfig

    ctx, (cfg,) = load(args, "acquire", acquire=AcquireConfig)
    if args.source is not None:
        cfg.source = args.source
    if args.uri is not None:
        cfg.uri = args.uri
    # the synthetic section matters (and must be valid) only for the synthetic source
    synthetic = load_section(SyntheticConfig, "synthetic", ctx.params) if cfg.source == "synthetic" else None
    out = args.output if args.output is not None else ctx.data / cfg.output
    logged = {"acquire": to_dict(cfg)} | ({"synthetic": to_dict(synthetic), "seed": ctx.seed} if synthetic else {})
    with ctx.tracked(logged) as mlflow:
        t0 = time.perf_counter()
        metrics = {**acquire(out, cfg, synthetic, ctx.seed), "wall_s": round(time.perf_counter() - t0, 2)}
        if mlflow:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    if metrics["rejected"]:
        print(f"vaura acquire: {metrics['rejected']} file(s) rejected, reasons in {out / 'rejected.csv'}", file=sys.stderr)
    print(f"acquire {cfg.source}: {metrics['downloaded']} fetched, {metrics['resumed']} resumed, "
          f"{metrics['skipped']} already complete, {metrics['rejected']} rejected -> {out} ({metrics['wall_s']:.1f} s)")
    return 0
