"""Atomic file writes: a stage killed at any moment leaves either the old file or the new one, never half."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd


class UnsafeNameError(ValueError):
    """A name taken from outside (URL, S3 key, manifest entry, source file) that would land outside its folder."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_child(folder: str | Path, name: str) -> Path:
    """Map ``name`` (a URL path, S3 key, source file name or manifest clip id) to a file directly inside ``folder``,
    or refuse it.

    Names from outside decide where we write, so they are checked as text, not trusted: empty, ``.``, ``..``,
    any folder separator, absolute paths, Windows drives/backslashes and NUL bytes are refused, and the result
    must still resolve inside ``folder`` after symlinks. Raises :class:`UnsafeNameError` whose message is the
    reason.
    """
    if not name or "\0" in name:
        raise UnsafeNameError(f"unsafe file name {name!r}: empty or contains a NUL byte")
    if "\\" in name or _DRIVE.match(name):
        raise UnsafeNameError(f"unsafe file name {name!r}: Windows-style path (drive or backslash)")
    if name.startswith("/"):
        raise UnsafeNameError(f"unsafe file name {name!r}: absolute path")
    if name in (".", ".."):
        raise UnsafeNameError(f"unsafe file name {name!r}: '.' or '..'")
    if "/" in name:
        raise UnsafeNameError(f"unsafe file name {name!r}: contains a folder separator")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise UnsafeNameError(f"unsafe file name {name!r}: resolves outside {folder}")
    return Path(folder) / name


class OutputPathError(ValueError):
    """An output path that would destroy an input or cannot be written as a file; checked before any work."""


def check_output_file(out: str | Path, *inputs: str | Path) -> None:
    """Refuse ``out`` when it is an existing folder or the same file as an input (also through a symlink or hard
    link), so a long job fails at once with one line instead of overwriting its source or failing at the end."""
    out = Path(out)
    if out.is_dir():
        raise OutputPathError(f"{out}: is a folder; give a file name for the output")
    for src in inputs:
        if out.exists() and Path(src).exists() and os.path.samefile(out, src):
            raise OutputPathError(f"{out}: is the input {src} itself; choose another output file")


def _umask() -> int:
    """The process umask (read without changing it where /proc allows; else set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# atomic_path's temp names: "." + name + "." + mkstemp's 8 random characters + ".tmp" + the name's suffix
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?")


def remove_stale_temps(folder: str | Path) -> int:
    """Delete the hidden temp files a killed writer left in ``folder`` (recursively); returns how many.

    A process killed inside :func:`atomic_path` never reaches its cleanup. Call this when a stage starts on
    a folder only it writes; a resumed stage then leaves no hidden debris for DVC to cache.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.rglob(".*.tmp*") if p.is_file() and _TEMP_NAME.fullmatch(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``.

    The result gets the mode a plain ``open(path, "w")`` would give (an existing file's mode, else 0666 minus
    the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_output_metrics(path: str | Path, metrics: Mapping[str, Any], timings: Iterable[str]) -> None:
    """A stage's ``metrics.json`` inside a DVC output, without the wall-clock ``timings`` keys.

    DVC hashes the output: wall times in it would make identical runs (a re-run, a second clone) differ, and every
    stage that depends on it re-run. Timings go to MLflow and the stage's output line instead.
    """
    timings = set(timings)
    atomic_write_json(path, {k: v for k, v in metrics.items() if k not in timings})


def atomic_write_csv(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # through a file object: given a path, torch names the archive's root folder after the (random) temp
        # file name, so the same object would give different bytes every time
        torch.save(obj, fh)
