"""Atomic file writes: a stage killed at any moment leaves either the old file or the new one, never half."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


class UnsafeNameError(ValueError):
    """A name taken from outside (URL, S3 key, manifest entry, source file) that would land outside its folder."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_child(folder: str | Path, name: str, *, nested: bool = False) -> Path:
    """Map ``name`` (a URL path, S3 key, source file or manifest entry) to a path inside ``folder``, or refuse it.

    Names from outside decide where we write or read, so they are checked as text, not trusted: empty, ``.``,
    ``..`` components, absolute paths, Windows drives/backslashes and NUL bytes are refused (``nested=False``
    also refuses any folder part: the name must be one file), and the result must still resolve inside
    ``folder`` after symlinks. Raises :class:`UnsafeNameError` whose message is the reason.
    """
    if not name or "\0" in name:
        raise UnsafeNameError(f"unsafe file name {name!r}: empty or contains a NUL byte")
    if "\\" in name or _DRIVE.match(name):
        raise UnsafeNameError(f"unsafe file name {name!r}: Windows-style path (drive or backslash)")
    if name.startswith("/"):
        raise UnsafeNameError(f"unsafe file name {name!r}: absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeNameError(f"unsafe file name {name!r}: empty, '.' or '..' path component")
    if len(parts) > 1 and not nested:
        raise UnsafeNameError(f"unsafe file name {name!r}: contains a folder separator")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise UnsafeNameError(f"unsafe file name {name!r}: resolves outside {folder}")
    return Path(folder) / name


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
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


def atomic_write_csv(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
