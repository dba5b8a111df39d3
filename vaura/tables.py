"""Clip tables: CSV files whose ``path`` column is stored relative to the table's own folder.

Every table that names media files (``clips/manifest.csv``, ``scores/scores.csv``, the split lists,
``cache/index.csv``, ``sweep/index.csv``) goes through :func:`write_table` / :func:`read_table`, so the data
folder stays valid when it is moved, pushed to a DVC remote or checked out elsewhere, and every reader
resolves paths by one rule: ``abspath(table folder / path)``. ``abspath``, not ``resolve()``: a symlinked data
folder (DVC's symlink checkouts) must stay as the user sees it, not turn into cache-internal targets.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from vaura.io import atomic_write_csv

TEXT_COLUMNS = {"clip": str, "path": str, "split": str, "video": str}


class TableError(ValueError):
    """A clip table that is missing or malformed (names the file and the reason)."""


def relative_to_table(table: str | Path, paths: Iterable[str | Path]) -> list[str]:
    """``paths`` written relative to ``table``'s folder (the form :func:`read_table` turns back into absolute)."""
    base = os.path.abspath(Path(table).parent)
    return [Path(os.path.relpath(os.path.abspath(p), base)).as_posix() for p in paths]


def absolute_from_table(table: str | Path, paths: Iterable[str]) -> list[str]:
    """Inverse of :func:`relative_to_table` (absolute entries stay as they are)."""
    base = Path(table).parent
    return [os.path.abspath(base / p) for p in paths]


def write_table(path: str | Path, rows: pd.DataFrame, path_columns: Iterable[str] = ("path",)) -> None:
    """Atomically write ``rows`` with its ``path_columns`` made relative to ``path``'s folder."""
    out = rows.copy()
    for col in path_columns:
        out[col] = relative_to_table(path, out[col])
    atomic_write_csv(path, out)


def read_table(
    path: str | Path,
    required: Iterable[str] = (),
    *,
    hint: str = "",
    path_columns: Iterable[str] = ("path",),
    dtype: Mapping[str, type] | None = None,
    keep_default_na: bool = True,
) -> pd.DataFrame:
    """Read a table written by :func:`write_table`; ``path_columns`` come back absolute.

    Text columns (``clip``, ``path``, ``split``, ``video``) stay strings (a clip id ``00123`` is not a number).
    Missing file or columns, and empty paths, raise :class:`TableError` naming the file.
    """
    path = Path(path)
    path_columns = list(path_columns)
    if not path.is_file():
        raise TableError(f"{path}: not found{f' ({hint})' if hint else ''}")
    try:
        df = pd.read_csv(path, dtype={**TEXT_COLUMNS, **(dtype or {})}, keep_default_na=keep_default_na)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a readable CSV ({exc})") from exc
    missing = (set(required) | set(path_columns)) - set(df.columns)
    if missing:
        raise TableError(f"{path}: missing column(s) {sorted(missing)}")
    for col in path_columns:
        empty = df.index[df[col].isna() | (df[col] == "")].tolist()
        if empty:
            raise TableError(f"{path}: empty {col} in row(s) {[r + 2 for r in empty][:5]}")
        df[col] = absolute_from_table(path, df[col])
    return df
