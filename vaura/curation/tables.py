"""CSV tables whose ``path`` column is stored relative to the table's own folder.

Like ``manifest.csv`` (docs/DATA_LAYOUT.md), the curation tables (``scores.csv``, split lists) stay valid when
the data folder is moved, pushed to a DVC remote or checked out elsewhere; readers get absolute paths.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vaura.io import atomic_write_csv


class TableError(ValueError):
    """A curation table that is missing or malformed (names the file and the reason)."""


def write_table(path: str | Path, rows: pd.DataFrame) -> None:
    """Atomically write ``rows`` with its ``path`` column made relative to ``path``'s folder."""
    path = Path(path)
    out = rows.copy()
    # abspath, not resolve(): a symlinked data folder (e.g. DVC symlink checkouts) must stay as the user sees it
    out["path"] = [os.path.relpath(os.path.abspath(p), os.path.abspath(path.parent)) for p in out["path"]]
    atomic_write_csv(path, out)


def read_table(path: str | Path, required: set[str], hint: str = "") -> pd.DataFrame:
    """Read a table written by :func:`write_table`; ``path`` values come back absolute."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: not found{f' ({hint})' if hint else ''}")
    try:
        df = pd.read_csv(path, dtype={"clip": str, "path": str, "split": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a readable CSV ({exc})") from exc
    missing = set(required) | {"path"}
    missing -= set(df.columns)
    if missing:
        raise TableError(f"{path}: missing column(s) {sorted(missing)}")
    df["path"] = [os.path.abspath(path.parent / p) for p in df["path"]]
    return df
