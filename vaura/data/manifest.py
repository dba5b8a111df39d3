"""VGGSound-style clip manifests (``clip,path,split,label,...``), validated once here for every stage."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

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
        df = read_table(path, REQUIRED, hint="a manifest needs " + ",".join(REQUIRED), path_columns=(),
                        dtype={"label": str, "source": str}, keep_default_na=False)
    except TableError as exc:
        raise ManifestError(str(exc)) from exc
    if (df["clip"] == "").any() or (df["path"] == "").any():
        rows = df.index[(df["clip"] == "") | (df["path"] == "")].tolist()
        raise ManifestError(f"{path}: empty clip or path in row(s) {[r + 2 for r in rows]}")
    dup = df["clip"][df["clip"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{path}: duplicate clip id(s) {dup[:5]}")
    bad = sorted(set(df["split"]) - set(SPLIT_VALUES))
    if bad:
        raise ManifestError(f"{path}: unknown split value(s) {bad}; allowed {list(SPLIT_VALUES)}")
    df["path"] = absolute_from_table(path, df["path"])
    if check_files:
        absent = [p for p in df["path"] if not Path(p).is_file()]
        if absent:
            raise ManifestError(f"{path}: {len(absent)} listed file(s) do not exist, e.g. {absent[0]}")
    return df
