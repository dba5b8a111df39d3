"""The skeleton every ``vaura <stage>`` CLI stands on: common flags, params read once, one root, one error rule.

- Flags (:func:`add_common`): ``--params`` (default ``params.yaml``), ``--root`` (default: the params file's
  folder; every path in params is relative to it), ``--no-track`` (no MLflow run), ``--device`` where the stage
  runs a network (default: the stage's params value; resolved by :func:`vaura.devices.resolve_device`).
  ``vaura`` adds ``--debug`` to every command (:mod:`vaura.cli`).
- Params (:func:`load`): the file is parsed once (:func:`read_params`), the sections a stage asks for come back
  typed, with a :class:`Context` (root, data folder, seed, tracking on/off, device override). A file that holds
  a credential is refused by every stage: DVC copies params values into ``dvc.lock`` verbatim.
- Errors (:func:`run_guarded`): a project error, a YAML error, an OS error or a ``ValueError`` raised by vaura's
  own checks ends the stage with exit 1 and ONE line ``vaura <stage>: <file or key>: <reason>``; the traceback
  only with ``--debug`` or ``VAURA_DEBUG=1``. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml

from vaura.config import ConfigError, PathsConfig, load_section, load_yaml
from vaura.redact import find_secret

_PACKAGE = Path(__file__).resolve().parents[1]  # the vaura/ folder: ValueErrors raised here are vaura's checks
ERROR_DIR_ENV = "VAURA_ERROR_DIR"  # set by `vaura train` for its torchrun workers: one file per failed rank


def add_common(parser: argparse.ArgumentParser, *, device: str | None = None, params_help: str = "",
               variant: bool = False) -> None:
    """The flags every pipeline stage takes; ``device`` is the help text of ``--device`` where it applies.

    ``params_help`` (a stage that also runs without a params file) makes ``--params`` optional (default None).
    ``variant``: the stage runs once per ablation variant (``--variant NAME``, see :mod:`vaura.variants`).
    """
    parser.add_argument("--params", type=Path, default=None if params_help else Path("params.yaml"),
                        help=params_help or "params file (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder the paths in params are relative to (default: the params file's folder)")
    parser.add_argument("--no-track", action="store_true", help="do not log an MLflow run")
    if device is not None:
        parser.add_argument("--device", default=None, help=f"{device} (auto, cpu, cuda or cuda:N)")
    if variant:
        parser.add_argument("--variant", default=None,
                            help="ablation variant (params ablation.variants): its overrides apply and its outputs "
                                 "go to <data>/<stage>/<variant>/")


def read_params(path: str | Path) -> dict[str, Any]:
    """The one place a stage reads its params file (YAML errors become a ConfigError naming file and line)."""
    try:
        return load_yaml(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_reason(exc)})") from exc


@dataclass(frozen=True)
class Context:
    """What every stage needs besides its own sections."""

    stage: str
    params_file: Path
    params: Mapping[str, Any]  # the whole parsed file, with --variant's overrides applied (tracking logs parts of it)
    root: Path
    data: Path  # <root>/<paths.data>
    paths: PathsConfig
    seed: int
    track: bool
    device: str | None  # --device, when the stage has it and it was given
    variant: str | None = None  # --variant, when the stage runs per ablation variant and it was given

    def out(self, stage: str) -> Path:
        """Folder of a per-variant stage's outputs: ``<data>/<stage>``, or ``<data>/<stage>/<variant>``."""
        from vaura.variants import output_dir

        return output_dir(self.data, stage, self.variant)

    def path(self, rel: str | Path) -> Path:
        """A path named in params (weights, shipped files), relative to the root."""
        return self.root / rel

    def device_or(self, default: str) -> Any:
        """``--device`` if given, else the stage's params value, resolved once (a ConfigError when unusable)."""
        from vaura.devices import resolve_device

        return resolve_device(self.device or default)

    def tracking(self) -> Any:
        """The ``tracking`` section with a relative sqlite store and artifact folder under the root (the root rule
        holds for MLflow too; with the default root ``.`` nothing changes)."""
        from vaura.tracking import TrackingConfig

        cfg = load_section(TrackingConfig, "tracking", self.params)
        uri, art = cfg.uri, cfg.artifact_root
        sqlite = "sqlite:///"
        if uri.startswith(sqlite) and not Path(uri[len(sqlite):]).is_absolute():
            uri = sqlite + str(self.root / uri[len(sqlite):])
        if "://" not in art and not Path(art).is_absolute():
            art = str(self.root / art)
        return dataclasses.replace(cfg, uri=uri, artifact_root=art)

    @contextlib.contextmanager
    def tracked(self, logged: Mapping[str, Any], **kwargs: Any) -> Iterator[Any]:
        """The stage's MLflow run (yields the ``mlflow`` module), or nothing with ``--no-track`` (yields None)."""
        if not self.track:
            yield None
            return
        import mlflow

        from vaura.tracking import stage_run

        kwargs.setdefault("variant", self.variant)  # stage_run falls back to the DVC experiment's name
        with stage_run(self.stage, logged, params_file=self.params_file, config=self.tracking(), **kwargs):
            yield mlflow


def load(args: argparse.Namespace, stage: str, **sections: type) -> tuple[Context, tuple[Any, ...]]:
    """Read ``args.params`` once; return the context and the typed ``sections`` (name=Class) in order.

    With ``--variant NAME`` the variant's overrides are applied here, the one place they are
    (:func:`vaura.variants.apply_variant`), so every section a stage reads is the variant's. Every section is
    checked before the stage does any work, so a bad key fails in a second, not after a long computation.
    """
    from vaura.variants import resolve

    params_file = Path(args.params)
    variant = getattr(args, "variant", None)
    raw = read_params(params_file)
    secret = find_secret(raw)
    if secret:  # every stage: DVC records its params values verbatim in dvc.lock, where nothing can redact them
        raise ConfigError(f"{secret}: carries a credential, which DVC would record in dvc.lock; put credentials "
                          "in the environment (AWS_* variables, MLFLOW_TRACKING_USERNAME/PASSWORD) and signed URLs "
                          "in the URL-list file")
    params = resolve(raw, variant)
    paths: PathsConfig = load_section(PathsConfig, "paths", params)
    typed = tuple(load_section(cls, name, params) for name, cls in sections.items())
    root = Path(args.root) if getattr(args, "root", None) is not None else params_file.parent
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"params.seed: expected an integer, got {seed!r}")
    ctx = Context(stage=stage, params_file=params_file, params=params, root=root, data=root / paths.data,
                  paths=paths, seed=seed, track=not getattr(args, "no_track", False),
                  device=getattr(args, "device", None), variant=variant)
    return ctx, typed


def debug_enabled(args: argparse.Namespace) -> bool:
    """``--debug`` or ``VAURA_DEBUG=1``: show tracebacks of expected failures too."""
    return bool(getattr(args, "debug", False)) or os.environ.get("VAURA_DEBUG", "") not in ("", "0")


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def _raised_by_vaura(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def one_line(exc: BaseException) -> str | None:
    """``<file or key>: <reason>`` for an expected failure; None for a bug (which keeps its traceback)."""
    if isinstance(exc, yaml.YAMLError):
        name = getattr(getattr(exc, "problem_mark", None), "name", None) or "YAML"
        return f"{name}: not valid YAML ({_yaml_reason(exc)})"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    expected = (isinstance(exc, OSError) or type(exc).__module__.split(".")[0] == "vaura"
                or (isinstance(exc, ValueError) and _raised_by_vaura(exc)))
    if not expected:
        return None
    return " ".join(str(exc).split()) or type(exc).__name__


# (No name in this module may be a stage's: importing vaura.stages.<name> sets that attribute on the package.)
def print_error(stage: str, line: str) -> None:
    """Print ``vaura <stage>: <line>`` (credentials in URLs masked: logs are a sink too), or, in a worker of
    ``vaura train``, leave it for the launcher to print once."""
    from vaura.redact import redact

    line = redact(line)
    error_dir = os.environ.get(ERROR_DIR_ENV)
    if error_dir:
        from vaura.io import atomic_write_text

        atomic_write_text(Path(error_dir) / f"rank{os.environ.get('RANK', '0')}.err", line)
        return
    print(f"vaura {stage}: {line}", file=sys.stderr)


def run_guarded(stage: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run a stage body; an expected failure becomes exit 1 and one line (plus the traceback with ``debug``)."""
    try:
        return int(fn() or 0)
    except Exception as exc:  # noqa: BLE001 - classified below; bugs re-raise unchanged
        line = one_line(exc)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print_error(stage, line)
        return 1
