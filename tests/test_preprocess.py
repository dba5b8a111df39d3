"""`vaura preprocess` as a new user would run it: a folder of mixed real-world-like videos and broken files."""
from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from media_factory import tone, write_av, zero_size_mkv
from vaura import media
from vaura.cli import main

GOOD = ("ntsc_stereo", "mpeg4_mp3", "vp9_portrait", "mjpeg_odd_51", "vfr_h264", "clash")
BAD = {  # file name -> words its rejection reason must contain
    "broken.mp4": "corrupt", "notes.mp4": "not a media file", "empty.mov": "empty", "music.m4a": "no video",
    "silent.mp4": "no audio", "zero.mkv": "zero-sized", "cut.mp4": "truncated", "clash.mp4": "same name stem",
}


def _moving(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), np.uint8)
    return np.stack([np.roll(base, 3 * k, axis=1) for k in range(n)])


def _make_inputs(folder: Path) -> None:
    folder.mkdir()
    ntsc = Fraction(30000, 1001)
    write_av(folder / "ntsc_stereo.mp4", _moving(36, 240, 320, 0), fps=ntsc,
             audio=np.stack([tone(440, 1.2, 44100), tone(660, 1.2, 44100)]), layout="stereo")
    write_av(folder / "mpeg4_mp3.avi", _moving(25, 144, 176, 1), vcodec="mpeg4", audio=tone(300, 1.0, 44100)[None],
             acodec="libmp3lame", fmt="avi")
    write_av(folder / "vp9_portrait.webm", _moving(25, 320, 180, 2), vcodec="libvpx-vp9",
             audio=np.stack([tone(500, 1.0, 48000)] * 2), sample_rate=48000, acodec="libopus", layout="stereo", fmt="webm")
    write_av(folder / "mjpeg_odd_51.mkv", _moving(25, 121, 161, 3), vcodec="mjpeg", pix_fmt="yuvj444p",
             audio=np.stack([tone(200 * (c + 1), 1.0, 48000) for c in range(6)]), sample_rate=48000,
             acodec="pcm_s16le", layout="5.1", fmt="matroska")
    pts = np.concatenate([[0], np.cumsum(np.random.default_rng(4).integers(20, 70, size=23))])
    write_av(folder / "vfr_h264.mov", _moving(24, 180, 240, 4), pts_ms=pts, audio=tone(800, 1.0, 22050)[None],
             sample_rate=22050, fmt="mov")
    write_av(folder / "clash.mp4", _moving(20, 96, 128, 5), audio=tone(440, 0.8, 44100)[None])
    write_av(folder / "clash.mkv", _moving(20, 96, 128, 6), audio=tone(440, 0.8, 44100)[None], fmt="matroska")

    whole = write_av(folder / "whole.tmp", _moving(25, 96, 128, 7), audio=tone(440, 1.0, 44100)[None], fmt="mp4")
    (folder / "broken.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    fast = write_av(folder / "fast.tmp", _moving(50, 96, 128, 8), audio=tone(440, 2.0, 44100)[None], fmt="mp4", faststart=True)
    (folder / "cut.mp4").write_bytes(fast.read_bytes()[: fast.stat().st_size // 3])
    fast.unlink()
    (folder / "notes.mp4").write_text("Remember to buy milk.\n" * 50)
    (folder / "empty.mov").write_bytes(b"")
    write_av(folder / "music.m4a", audio=tone(440, 1.0, 44100)[None], fmt="mp4")
    write_av(folder / "silent.mp4", _moving(10, 96, 128, 9))
    zero_size_mkv(folder / "zero.mkv")
    pd.DataFrame([{"clip": "ntsc_stereo", "path": "ntsc_stereo.mp4", "split": "val", "label": "dog barking"},
                  {"clip": "vp9_portrait", "path": "vp9_portrait.webm", "split": "test", "label": "rain"}]
                 ).to_csv(folder / "manifest.csv", index=False)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int, dict]:
    root = tmp_path_factory.mktemp("pre")
    src, out = root / "in", root / "out"
    _make_inputs(src)
    before = _digest(src)
    rc = main(["preprocess", "--input", str(src), "--output", str(out), "--workers", "2"])
    return src, out, rc, before


def test_good_clips_in_paper_format(run_once: tuple) -> None:
    src, out, rc, _ = run_once
    assert rc == 0
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert sorted(manifest["clip"]) == sorted(GOOD)
    for row in manifest.itertuples():
        clip = out / row.path
        assert clip.name == f"{row.clip}.mp4" and Path(row.source).stem == row.clip
        info = media.probe(clip)
        assert (info.video_codec, info.audio_codec, info.fps) == ("h264", "aac", 25.0), row.clip
        assert (info.sample_rate, info.channels) == (44100, 1), row.clip
        assert min(info.width, info.height) == 256 and info.width % 2 == 0 and info.height % 2 == 0, row.clip
        assert (row.width, row.height, row.fps, row.sample_rate) == (info.width, info.height, 25.0, 44100)
        frames = media.read_video(clip, crop=None)
        assert len(frames) == round(row.duration_s * 25)
        source = media.probe(row.source)
        assert 0 <= source.duration_s - row.duration_s <= 0.081, row.clip  # floor to whole 25 fps frames
        sound = media.read_audio(clip, 44100)
        assert len(sound) == pytest.approx(row.duration_s * 44100, abs=50), row.clip
        assert np.sqrt(np.mean(sound**2)) > 0.05, f"{row.clip}: the sound was lost"
    portrait = manifest.set_index("clip").loc["vp9_portrait"]
    assert (portrait["width"], portrait["height"]) == (256, 456)  # 320 * 256 / 180 = 455.1 -> even 456
    carried = manifest.set_index("clip")
    assert (carried.loc["ntsc_stereo", "split"], carried.loc["ntsc_stereo", "label"]) == ("val", "dog barking")
    assert (carried.loc["vp9_portrait", "split"], carried.loc["mpeg4_mp3", "split"]) == ("test", "train")


def test_every_bad_input_named_with_reason(run_once: tuple) -> None:
    src, out, _, _ = run_once
    rejected = pd.read_csv(out / "rejected.csv")
    assert sorted(Path(p).name for p in rejected["path"]) == sorted(BAD)
    for path, reason in zip(rejected["path"], rejected["reason"]):
        assert BAD[Path(path).name] in reason.lower(), f"{path}: {reason}"
        assert reason[0].isupper() and reason.endswith(".")
    assert not (out / "broken.mp4").exists() and not list(out.glob(".*tmp*"))


def test_inputs_untouched_rerun_skips_and_strict(run_once: tuple) -> None:
    src, out, _, before = run_once
    assert _digest(src) == before
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    manifest, metrics = (out / "manifest.csv").read_text(), (out / "metrics.json").read_bytes()
    assert main(["preprocess", "--input", str(src), "--output", str(out), "--workers", "1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == stamps  # nothing re-encoded
    assert (out / "manifest.csv").read_text() == manifest
    assert (out / "metrics.json").read_bytes() == metrics  # no wall time in what DVC hashes
    assert main(["preprocess", "--input", str(src), "--output", str(out), "--workers", "1", "--strict"]) == 1
    assert _digest(src) == before


def test_changed_format_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the params file's own sqlite store
    src = tmp_path / "in"
    src.mkdir()
    write_av(src / "a.mp4", _moving(10, 96, 128, 0), audio=tone(440, 0.4, 44100)[None])
    params = tmp_path / "p.yaml"
    for short_side, rate in ((256, 44100), (64, 16000)):
        params.write_text(f"paths: {{data: {tmp_path}, reports: reports}}\npreprocess: {{input: in, output: out, fps: 25.0, short_side: "
                          f"{short_side}, sample_rate: {rate}, require_audio: true, strict: false, workers: 1}}\n"
                          f"tracking: {{uri: 'sqlite:///{tmp_path}/mlflow.db', artifact_root: {tmp_path}/art, "
                          f"experiment: t, system_metrics: false, system_metrics_interval_s: 10.0}}\n")
        assert main(["preprocess", "--params", str(params)]) == 0
        info = media.probe(tmp_path / "out" / "a.mp4")
        assert (min(info.width, info.height), info.sample_rate) == (short_side, rate)
    row = pd.read_csv(tmp_path / "out" / "manifest.csv").iloc[0]
    assert (row["height"], row["sample_rate"], row["split"]) == (64, 16000, "train")


def test_nothing_usable_fails(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_text("not a video")
    assert main(["preprocess", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    assert len(pd.read_csv(tmp_path / "out" / "rejected.csv")) == 1
    assert main(["preprocess", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "in")]) == 1
