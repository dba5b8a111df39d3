"""VGGSound-style clip manifests (``clip,path,split,label,...``), validated once here for every stage.

``path`` may be left out (``clip,split,label``, the short form for a folder of your own videos): each clip's file is
then the one in the manifest's folder whose stem is the clip id. Clip ids come from outside and name the files
stages write (``<clip>.mp4``, cache rows, sweep WAVs), so each must be a plain file name (checked like any other
outside name, :func:`vaura.io.safe_child`). Paths are only ever read, so they may point elsewhere (``../raw/x.mp4``).
"""
from __future__ import annotations

from glob import escape as glob_escape
from pathlib import Path

import pandas as pd

from vaura.io import UnsafeNameError, safe_child
from vaura.tables import TableError, absolute_from_table, read_table

REQUIRED = ("clip", "path", "split", "label")
SPLIT_VALUES = ("train", "val", "test")


class ManifestError(TableError):
    """A manifest that other stages cannot trust; the message names the file and the reason."""


def read_manifest(path: str | Path, check_files: bool = False) -> pd.DataFrame:
    """Read and validate ``manifest.csv``; ``path`` entries come back absolute (:mod:`vaura.tables` rule).

    Text columns stay strings (a clip id such as ``00123`` must not become a number) and an empty label is
    ``""``. ``check_files`` additionally requires every listed file to exist.
    """
    path = Path(path)
    try:
        df = read_table(path, [c for c in REQUIRED if c != "path"], hint="a manifest needs " + ",".join(REQUIRED),
                        path_columns=(), dtype={"label": str, "source": str}, keep_default_na=False)
    except TableError as exc:
        raise ManifestError(str(exc)) from exc
    if "path" not in df.columns:
        df.insert(1, "path", [_file_of(path.parent, clip) for clip in df["clip"]])
    if (df["clip"] == "").any() or (df["path"] == "").any():
        rows = df.index[(df["clip"] == "") | (df["path"] == "")].tolist()
        raise ManifestError(f"{path}: empty clip or path in row(s) {[r + 2 for r in rows]}")
    dup = df["clip"][df["clip"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{path}: duplicate clip id(s) {dup[:5]}")
    bad = sorted(set(df["split"]) - set(SPLIT_VALUES))
    if bad:
        raise ManifestError(f"{path}: unknown split value(s) {bad}; allowed {list(SPLIT_VALUES)}")
    base = path.resolve().parent
    for row, clip in enumerate(df["clip"], start=2):
        try:
            safe_child(base, clip)
        except UnsafeNameError as exc:
            raise ManifestError(f"{path}: row {row}: {exc}") from exc
    df["path"] = absolute_from_table(path, df["path"])
    if check_files:
        absent = [p for p in df["path"] if not Path(p).is_file()]
        if absent:
            raise ManifestError(f"{path}: {len(absent)} listed file(s) do not exist, e.g. {absent[0]}")
    return df


def _file_of(folder: Path, clip: str) -> str:
    """The file in ``folder`` whose stem is ``clip`` (the short manifest form); ``clip`` itself when none or several."""
    try:
        safe_child(folder, clip)
    except UnsafeNameError:
        return clip  # refused with its reason by the caller's check
    matches = [p.name for p in folder.glob(f"{glob_escape(clip)}.*") if p.stem == clip and p.suffix != ".part"]
    return matches[0] if len(matches) == 1 else clip
