"""The synthetic benchmark: deterministic, resumable, and its ground truth is really heard and really seen."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vaura import media
from vaura.data.manifest import ManifestError, read_manifest
from vaura.data.synthetic import CLASSES, SyntheticConfig, generate_benchmark, plan_benchmark
from vaura.onsets import detect_onsets, event_f1

MICRO = SyntheticConfig(n_train=6, n_val=2, n_test=1, size=128, irrelevant_fraction=0.5, workers=1)
SEED = 7


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    generate_benchmark(out, MICRO, SEED)
    return out


def _decoded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return media.read_video(path, crop=None), media.read_audio(path, MICRO.sample_rate)


def test_files_and_tables(bench: Path) -> None:
    manifest = read_manifest(bench / "manifest.csv", check_files=True)
    assert list(manifest["split"].value_counts().sort_index().items()) == [("test", 1), ("train", 6), ("val", 2)]
    assert set(manifest["label"]) <= {name for name, _, _ in CLASSES}
    info = media.probe(manifest["path"].iloc[0])
    assert (info.fps, info.width, info.height, info.sample_rate, info.channels) == (25.0, 128, 128, 44100, 1)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.duration_s == pytest.approx(MICRO.duration_s, abs=0.05)

    events = pd.read_csv(bench / "events.csv")
    assert list(events.columns) == ["clip", "time_s", "class"]
    for clip, group in events.groupby("clip"):
        times = np.sort(group["time_s"].to_numpy())
        assert MICRO.min_events <= len(times) <= MICRO.max_events
        assert np.diff(times).min(initial=1.0) >= MICRO.min_gap_s - 1e-9
        assert times.min() > 0 and times.max() < MICRO.duration_s
    assert set(events["clip"]) == set(manifest["clip"])

    relevance = pd.read_csv(bench / "relevance.csv").merge(manifest[["clip", "split"]], on="clip")
    train = relevance[relevance["split"] == "train"]
    assert (train["relevant"] == 0).sum() == round(MICRO.irrelevant_fraction * MICRO.n_train)  # the known fraction
    assert set(train.loc[train["relevant"] == 0, "kind"]) == {"swapped", "shifted", "music"}
    assert (relevance.loc[relevance["split"] != "train", "kind"] == "ok").all()
    assert ((relevance["kind"] == "ok") == (relevance["relevant"] == 1)).all()


def test_at_least_six_distinct_classes() -> None:
    assert len(CLASSES) >= 6
    assert len({shape for _, shape, _ in CLASSES}) == len(CLASSES)
    assert len({colour for _, _, colour in CLASSES}) == len(CLASSES)
    plans = plan_benchmark(SyntheticConfig(n_train=40, n_val=0, n_test=0), SEED)
    assert {c for p in plans for _, c in p.events} == set(range(len(CLASSES)))


def test_events_are_audible(bench: Path) -> None:
    manifest = read_manifest(bench / "manifest.csv")
    events = pd.read_csv(bench / "events.csv")
    kinds = pd.read_csv(bench / "relevance.csv").set_index("clip")["kind"]
    for clip, path in zip(manifest["clip"], manifest["path"]):
        truth = events.loc[events["clip"] == clip, "time_s"].to_numpy()
        onsets = detect_onsets(media.read_audio(path, MICRO.sample_rate), MICRO.sample_rate)
        f1 = event_f1(onsets, truth, tol=0.05)["f1"]
        if kinds[clip] == "ok":
            assert f1 >= 0.9, f"{clip}: events not heard at their times (F1 {f1:.2f})"
        else:  # irrelevant audio must NOT line up with what is seen
            assert f1 <= 0.5, f"{clip} ({kinds[clip]}): audio matches the visual events (F1 {f1:.2f})"


def test_events_are_visible_as_motion(bench: Path) -> None:
    manifest = read_manifest(bench / "manifest.csv")
    events = pd.read_csv(bench / "events.csv")
    for clip, path in zip(manifest["clip"], manifest["path"]):
        frames = media.read_video(path, crop=None).astype(np.float32)
        energy = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # energy[j]: change into frame j + 1
        times = (np.arange(len(energy)) + 1) / MICRO.fps
        strong = energy >= 2.0 * np.median(energy)
        is_peak = np.r_[False, (energy[1:-1] >= energy[:-2]) & (energy[1:-1] >= energy[2:]), False] & strong
        truth = events.loc[events["clip"] == clip, "time_s"].to_numpy()
        for t in truth:  # the contact frame (or the one before) is a strong local maximum of motion
            assert is_peak[(times >= t - 0.06) & (times <= t + 0.045)].any(), f"{clip}: no motion peak at {t:.2f}s"
        top_t = times[np.argmax(energy)]  # the strongest motion is a contact, not a distractor
        assert np.abs(truth - top_t).min() <= 0.08, f"{clip}: strongest motion at {top_t:.2f}s, away from events"


def test_deterministic_and_resumable(bench: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_benchmark(again, dataclasses.replace(MICRO, workers=2), SEED)  # parallel == serial
    for name in ("manifest.csv", "events.csv", "relevance.csv"):
        assert (again / name).read_bytes() == (bench / name).read_bytes()
    clips = sorted(p.name for p in bench.glob("*.mp4"))
    assert clips == sorted(p.name for p in again.glob("*.mp4"))
    for name in clips[:3]:
        for a, b in zip(_decoded(bench / name), _decoded(again / name)):
            np.testing.assert_array_equal(a, b)

    # resume: a missing clip is rendered again identically, present ones are left alone
    victim, kept = again / clips[0], again / clips[1]
    reference = _decoded(victim)
    victim.unlink()
    os.utime(kept, (1_000_000_000, 1_000_000_000))
    generate_benchmark(again, MICRO, SEED)
    for a, b in zip(reference, _decoded(victim)):
        np.testing.assert_array_equal(a, b)
    assert kept.stat().st_mtime == 1_000_000_000

    # another seed into the same folder: the old clips are not kept under the new ground truth
    generate_benchmark(again, MICRO, SEED + 1)
    assert not np.array_equal(_decoded(kept)[1], _decoded(bench / kept.name)[1])
    assert kept.stat().st_mtime != 1_000_000_000

    other = plan_benchmark(MICRO, SEED + 1)
    assert [p.events for p in other] != [p.events for p in plan_benchmark(MICRO, SEED)]
    # per-clip seeds: a val clip does not depend on how many train clips there are
    bigger = plan_benchmark(SyntheticConfig(n_train=9, n_val=2, n_test=1, size=128), SEED)
    assert [p.events for p in bigger if p.split == "val"] == [p.events for p in plan_benchmark(MICRO, SEED) if p.split == "val"]


def test_bad_settings_and_manifests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_events"):
        plan_benchmark(SyntheticConfig(min_events=5, max_events=3), SEED)
    with pytest.raises(ValueError, match="do not fit"):
        plan_benchmark(SyntheticConfig(max_events=30, min_gap_s=0.3), SEED)
    bad = tmp_path / "m.csv"
    for text, reason in (
        ("clip,path,split\na,a.mp4,train\n", "missing column"),
        ("clip,path,split,label\na,a.mp4,training,x\n", "unknown split"),
        ("clip,path,split,label\na,a.mp4,train,x\na,b.mp4,val,y\n", "duplicate clip"),
        ("clip,path,split,label\na,,train,x\n", "empty clip or path"),
    ):
        bad.write_text(text)
        with pytest.raises(ManifestError, match=reason):
            read_manifest(bad)
    bad.write_text("clip,path,split,label\n007,x.mp4,val,\n")
    df = read_manifest(bad)
    assert df["clip"].iloc[0] == "007" and df["label"].iloc[0] == "" and Path(df["path"].iloc[0]).is_absolute()
    with pytest.raises(ManifestError, match="do not exist"):
        read_manifest(bad, check_files=True)
