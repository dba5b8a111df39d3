"""Threshold filtering: which clips each split keeps, fixed eval windows, Table II counts, the `filter` stage."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from vaura.curation.filtering import FilterConfig, FilterError, eval_window_start, filter_scores, read_split
from vaura.tables import TableError, read_table, write_table


def scores_table(tmp_path) -> pd.DataFrame:
    rows = [  # clip, split, score, duration
        ("t1", "train", 0.05, 10.0), ("t2", "train", 0.25, 10.0), ("t3", "train", 0.35, 10.0),
        ("t4", "train", 0.45, 10.0), ("t5", "train", 0.9, 2.0),  # t5 too short for a 2.56 s window
        ("v1", "val", 0.01, 10.0), ("v2", "val", 0.5, 3.0),
        ("e1", "test", 0.02, 10.0), ("e2", "test", 0.3, 2.6),
    ]
    df = pd.DataFrame(rows, columns=["clip", "split", "score", "duration_s"])
    df["path"] = [str(tmp_path / f"{c}.mp4") for c in df["clip"]]
    df["scorer"] = "motion-onset"
    return df


def test_threshold_filters_train_only_and_counts_each_report_threshold(tmp_path):
    cfg = FilterConfig(threshold=0.3, apply_to=["train"], report_thresholds=[0.0, 0.2, 0.3, 0.4], eval_start_s=0.0)
    lists, metrics = filter_scores(scores_table(tmp_path), cfg)
    assert list(lists["train"]["clip"]) == ["t3", "t4"]
    assert list(lists["val"]["clip"]) == ["v1", "v2"]  # val/test are not thresholded
    assert list(lists["test"]["clip"]) == ["e1", "e2"]
    assert metrics["kept"] == {"train": 2, "val": 2, "test": 2}
    assert metrics["kept_train_at"] == {"0": 4, "0.2": 3, "0.3": 2, "0.4": 1}
    assert metrics["too_short"] == 1 and metrics["scorer"] == "motion-onset"
    assert list(lists["train"].columns) == ["clip", "path"]
    assert list(lists["val"].columns) == ["clip", "path", "start_sec"]


def test_apply_to_can_threshold_evaluation_splits_too(tmp_path):
    cfg = FilterConfig(threshold=0.3, apply_to=["train", "val", "test"])
    lists, _ = filter_scores(scores_table(tmp_path), cfg)
    assert list(lists["val"]["clip"]) == ["v2"] and list(lists["test"]["clip"]) == ["e2"]


@pytest.mark.parametrize(
    "duration, wanted, expected",
    [
        (10.0, 1.01, 0.96),  # snapped down to a 0.08 s token boundary
        (10.0, 9.0, 7.04),  # 250 frames -> 15 segments = 9.6 s of features; 9.6 - 2.56 = 7.04
        (3.0, 1.0, 0.0),  # 75 frames -> 4 segments = 2.56 s: only start 0 fits
        (10.0, -1.0, 0.0),
    ],
)
def test_eval_window_lies_inside_the_visual_features(duration, wanted, expected):
    assert eval_window_start(duration, wanted, 2.56) == pytest.approx(expected)


def test_eval_window_rejects_clips_shorter_than_the_window():
    with pytest.raises(FilterError, match="cannot hold"):
        eval_window_start(2.0, 0.0, 2.56)


def test_missing_columns_name_the_source(tmp_path):
    with pytest.raises(FilterError, match=r"scores\.csv.*duration_s"):
        filter_scores(scores_table(tmp_path).drop(columns="duration_s"), FilterConfig(), source="scores.csv")


def test_tables_store_paths_relative_to_their_folder(tmp_path):
    clips = tmp_path / "data" / "clips"
    clips.mkdir(parents=True)
    df = pd.DataFrame({"clip": ["a"], "path": [str(clips / "a.mp4")], "start_sec": [0.0]})
    out = tmp_path / "data" / "splits" / "val.csv"
    write_table(out, df)
    assert pd.read_csv(out)["path"].iloc[0] == "../clips/a.mp4"
    back = read_split(out)
    assert back["path"].iloc[0] == os.path.abspath(clips / "a.mp4")
    with pytest.raises(TableError, match="missing column"):
        read_table(out, {"score"})
    with pytest.raises(TableError, match="not found"):
        read_split(tmp_path / "nope.csv")


def test_table_paths_keep_a_symlinked_data_folder_as_the_user_sees_it(tmp_path):
    """abspath, not resolve(): a DVC symlink checkout must not turn into paths inside the cache it points to."""
    real = tmp_path / "store"
    (real / "clips").mkdir(parents=True)
    (tmp_path / "data").symlink_to(real)
    out = tmp_path / "data" / "splits" / "val.csv"
    write_table(out, pd.DataFrame({"clip": ["a"], "path": [str(tmp_path / "data" / "clips" / "a.mp4")]}))
    assert read_table(out)["path"].iloc[0] == os.path.join(str(tmp_path), "data", "clips", "a.mp4")
    pd.DataFrame({"clip": ["a"], "path": [""]}).to_csv(out, index=False)
    with pytest.raises(TableError, match="empty path"):
        read_table(out)


def test_filter_stage_writes_lists_and_metrics(tmp_path, monkeypatch):
    from vaura.cli import main

    data = tmp_path / "data"
    write_table(data / "scores" / "scores.csv", scores_table(data / "clips"))
    params = {
        "paths": {"data": "data", "reports": "reports"},
        "filter": {"threshold": 0.2, "apply_to": ["train"], "report_thresholds": [0.0, 0.4], "eval_start_s": 1.0,
                   "window_s": 2.56},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db", "artifact_root": str(tmp_path / "art"),
                     "experiment": "test", "system_metrics": False, "system_metrics_interval_s": 1.0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["filter", "--params", "params.yaml"]) == 0
    train = read_split(data / "splits" / "train.csv")
    assert list(train["clip"]) == ["t2", "t3", "t4"]
    assert train["path"].iloc[0] == os.path.abspath(data / "clips" / "t2.mp4")
    val = pd.read_csv(data / "splits" / "val.csv")
    assert list(val["start_sec"]) == [pytest.approx(0.96), pytest.approx(0.0)]  # v2 is 3 s: only start 0 fits
    metrics = json.loads((data / "splits" / "metrics.json").read_text())
    assert metrics["kept_train_at"] == {"0": 4, "0.4": 1} and metrics["kept"]["train"] == 3
