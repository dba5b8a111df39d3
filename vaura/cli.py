"""The ``vaura`` command: one sub-command per pipeline stage plus user tools.

Sub-command modules are imported lazily so ``vaura --help`` stays fast. Each module defines
``add_arguments(parser)`` and ``run(args) -> int`` and a docstring that says what it reads and writes; pipeline
stages take the common flags of :mod:`vaura.stages`. Every command runs under
:func:`vaura.stages.run_guarded`: an expected failure is one line ``vaura <command>: <file or key>: <reason>``
and exit 1; ``--debug`` (or ``VAURA_DEBUG=1``) adds the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name -> (module, one-line help shown by `vaura --help`)
    "acquire": ("vaura.stages.acquire", "fetch raw videos: synthetic benchmark, local folder, s3:// or https list"),
    "preprocess": ("vaura.stages.preprocess", "re-encode videos to the paper format; bad files go to rejected.csv"),
    "codec": ("vaura.stages.codec", "offline codec stand-in: shipped or trained tiny DAC + onset quality gate"),
    "stack": ("vaura.stages.stack", "start/stop/inspect the local stack: S3, MLflow, Prefect server + worker"),
    "profile": ("vaura.stages.profile", "switch params.yaml to a profile in configs/ (offline, paper, micro)"),
    "score": ("vaura.stages.score", "score each clip's audio-visual relevance (motion-onset | imagebind)"),
    "filter": ("vaura.stages.filter", "relevance threshold -> train/val/test lists with fixed eval windows"),
    "avclip": ("vaura.stages.avclip", "offline visual-encoder stand-in: contrastive AV pretraining, then frozen"),
    "cache": ("vaura.stages.cache", "codec tokens + visual features of every kept clip, sharded and resumable"),
    "train": ("vaura.stages.train", "train the decoder (torchrun DDP when train.nproc > 1), exact resume, MLflow"),
    "sweep": ("vaura.stages.sweep", "generate N samples per test clip at every CFG scale (WAVs reused by evaluate)"),
    "evaluate": ("vaura.stages.evaluate", "metrics per test set and CFG scale -> metrics.json + MLflow runs"),
    "report": ("vaura.stages.report", "paper tables (threshold, conditioning, CFG) from MLflow -> reports/"),
    "ui": ("vaura.stages.ui", "the MLflow UI on this project's runs: `mlflow ui` command + link to the runs table"),
    "generate": ("vaura.stages.generate", "generate audio for a whole video with V-AURA and mux it into a copy"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Full parser; only ``command``'s module is imported (to add its arguments)."""
    parser = argparse.ArgumentParser(
        prog="vaura",
        description="V-AURA video-to-audio: pipeline stages (run by `dvc repro`) and user tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            mod = importlib.import_module(module)
            p.description = (mod.__doc__ or help_text).strip()
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            mod.add_arguments(p)
            p.add_argument("--debug", action="store_true",
                           help="on failure, print the traceback too (also VAURA_DEBUG=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    from vaura.stages import debug_enabled, run_guarded

    return run_guarded(args.command, lambda: importlib.import_module(args._module).run(args), debug_enabled(args))


if __name__ == "__main__":
    sys.exit(main())
