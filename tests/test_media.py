"""vaura.media on real files written by PyAV: round trips, frame-rate/layout conversion, windows, bad inputs."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from media_factory import (click_track, index_frame, read_index, rotate_mp4_90_clockwise, tone, write_av, write_wav,
                           zero_size_mkv)
from vaura import media

SR = 44100
FIXTURES = Path(__file__).parent / "fixtures"


def _index_video(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.stack([index_frame(k, h, w) for k in range(n)])


def test_write_read_round_trip(tmp_path: Path) -> None:
    frames = _index_video(50)
    audio = click_track(2.0, SR, at_s=0.7)
    path = tmp_path / "rt.mp4"
    assert media.write_video(path, frames, 25.0, audio, SR) == 50

    info = media.probe(path)
    assert (info.width, info.height, info.fps) == (64, 48, 25.0)
    assert (info.video_codec, info.audio_codec, info.sample_rate, info.channels) == ("h264", "aac", SR, 1)
    assert info.duration_s == pytest.approx(2.0, abs=0.05)

    video = media.read_video(path, short_side=None, crop=None)
    assert video.shape == (50, 48, 64, 3) and video.dtype == np.uint8
    assert [read_index(f) for f in video] == list(range(50))
    assert np.abs(video.astype(int) - frames).mean() < 3.0  # crf 18: near-lossless

    sound = media.read_audio(path, SR)
    assert sound.dtype == np.float32 and len(sound) == pytest.approx(2.0 * SR, abs=2)
    assert abs(int(np.argmax(np.abs(sound))) - round(0.7 * SR)) < 0.002 * SR  # AAC priming compensated


def test_resize_and_crops(tmp_path: Path) -> None:
    path = write_av(tmp_path / "wide.mp4", np.random.default_rng(0).integers(0, 255, (4, 96, 160, 3), np.uint8))
    full = media.read_video(path, short_side=64, crop=None)
    assert full.shape[1:] == (64, 106, 3)  # 160 * 64 / 96 = 106.7 -> even 106
    centre = media.read_video(path, short_side=64, crop=48)
    assert centre.shape[1:] == (48, 48, 3)
    np.testing.assert_array_equal(centre, full[:, 8:56, 29:77])

    flips = set()
    for seed in range(8):
        a = media.read_video(path, short_side=64, crop=48, crop_mode="random", rng=np.random.default_rng(seed))
        b = media.read_video(path, short_side=64, crop=48, crop_mode="random", rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        found = None
        for flip in (False, True):
            ref = full[:, :, ::-1] if flip else full
            for y in range(64 - 48 + 1):
                for x in range(106 - 48 + 1):
                    if np.array_equal(ref[:1, y : y + 48, x : x + 48], a[:1]):
                        found = flip
        assert found is not None, "a random crop must be a (possibly flipped) window of the resized frame"
        if found:
            a = a[:, :, ::-1]
        flips.add(found)
    assert flips == {False, True}


def test_portrait_short_side(tmp_path: Path) -> None:
    path = write_av(tmp_path / "portrait.mkv", np.zeros((3, 99, 55, 3), np.uint8), vcodec="mjpeg", pix_fmt="yuvj444p")
    video = media.read_video(path, short_side=32, crop=None)
    assert video.shape[1:] == (58, 32, 3)  # 99 * 32 / 55 = 57.6 -> even 58


def test_phone_rotation_applied(tmp_path: Path) -> None:
    frames = np.zeros((3, 32, 64, 3), np.uint8)
    frames[:, :, :8] = 255  # a white stripe on the left of the stored (landscape) picture
    path = rotate_mp4_90_clockwise(write_av(tmp_path / "phone.mp4", frames))
    video = media.read_video(path, short_side=32, crop=None)
    assert video.shape[1:] == (64, 32, 3)  # shown portrait
    assert video[:, :8].mean() > 200 and video[:, 16:].mean() < 30  # left stripe turned clockwise to the top


def test_2997_fps_resampled_by_timestamp(tmp_path: Path) -> None:
    rate = Fraction(30000, 1001)
    path = write_av(tmp_path / "ntsc.mp4", _index_video(60), fps=rate)
    video = media.read_video(path, fps=25.0, short_side=None, crop=None)
    src_times = np.arange(60) / float(rate)
    assert len(video) == int(60 / float(rate) * 25)  # whole clip: floor(duration * 25) = 50
    for i, frame in enumerate(video):
        expected = int(np.argmin(np.abs(src_times - i / 25.0)))  # nearest source frame in time
        assert read_index(frame) == expected, f"output frame {i}"


def test_variable_frame_rate_resampled_by_timestamp(tmp_path: Path) -> None:
    gaps = np.random.default_rng(3).integers(15, 90, size=40)
    pts = np.concatenate([[0], np.cumsum(gaps)[:-1]])
    path = write_av(tmp_path / "vfr.mkv", _index_video(40), fps=25, pts_ms=pts, fmt="matroska")
    video = media.read_video(path, fps=25.0, short_side=None, crop=None, duration=1.6)
    assert len(video) == 40
    src_times = pts / 1000.0
    for i, frame in enumerate(video):
        d = np.abs(src_times - i / 25.0)
        nearest = set(np.flatnonzero(d - d.min() < 1e-9))
        assert read_index(frame) in nearest, f"output frame {i} at {i / 25:.2f}s"


def test_transport_stream_time_starts_at_container_start(tmp_path: Path) -> None:
    path = write_av(tmp_path / "cam.ts", _index_video(50), vcodec="mpeg2video", audio=click_track(2.0, 48000, 0.8)[None],
                    sample_rate=48000, acodec="mp2", fmt="mpegts")
    assert media.probe(path).duration_s == pytest.approx(2.0, abs=0.05)
    video = media.read_video(path, short_side=None, crop=None)
    assert [read_index(f) for f in video] == list(range(50))  # TS timestamps do not start at 0: no repeated first frames
    window = media.read_video(path, short_side=None, crop=None, start_sec=0.4, duration=0.8)
    assert [read_index(f) for f in window] == list(range(10, 30))
    sound = media.read_audio(path, 48000)
    assert abs(np.argmax(np.abs(sound)) / 48000 - 0.8) < 0.02
    muxed = tmp_path / "cam.mp4"  # generated sound under the copied picture: both must start at 0
    media.mux_audio(path, click_track(2.0, SR, 0.8), SR, muxed)
    assert [read_index(f) for f in media.read_video(muxed, short_side=None, crop=None)] == list(range(50))
    assert abs(np.argmax(np.abs(media.read_audio(muxed, SR))) / SR - 0.8) < 0.005


def test_window(tmp_path: Path) -> None:
    path = tmp_path / "w.mp4"
    media.write_video(path, _index_video(50), 25.0, click_track(2.0, SR, at_s=1.0), SR)
    video = media.read_video(path, short_side=None, crop=None, start_sec=0.4, duration=0.8)
    assert [read_index(f) for f in video] == list(range(10, 30))
    sound = media.read_audio(path, 16000, start_sec=0.5, duration=1.0)
    assert len(sound) == 16000
    assert abs(int(np.argmax(np.abs(sound))) - 8000) < 40
    # the tail is zero-padded up to the tolerance, beyond it the window is an error
    assert len(media.read_audio(path, 16000, start_sec=1.5, duration=0.55)) == 8800
    for start, dur in ((1.5, 1.0), (2.5, None), (-0.1, 1.0), (0.0, 0.0)):
        with pytest.raises(media.WindowError, match="w.mp4"):
            media.read_video(path, start_sec=start, duration=dur)
        with pytest.raises(media.WindowError, match="w.mp4"):
            media.read_audio(path, SR, start_sec=start, duration=dur)


def test_late_window_after_seek(tmp_path: Path) -> None:
    frames = np.stack([index_frame(k % 256, 24, 32) for k in range(300)])  # 12 s: windows past 2 s seek
    path = tmp_path / "long.mp4"
    media.write_video(path, frames, 25.0, click_track(12.0, 16000, at_s=9.0), 16000)
    video = media.read_video(path, short_side=None, crop=None, start_sec=8.0, duration=2.0)
    assert [read_index(f) for f in video] == [k % 256 for k in range(200, 250)]
    sound = media.read_audio(path, 16000, start_sec=8.5, duration=1.0)
    assert abs(int(np.argmax(np.abs(sound))) - 8000) < 40


def test_surround_and_stereo_downmix_and_resample(tmp_path: Path) -> None:
    sig = tone(1000.0, 1.0, 48000, amp=0.5)
    silent = np.zeros_like(sig)
    for name, layout, channels in (
        ("c51.m4a", "5.1", [silent, silent, sig, silent, silent, silent]),  # centre only
        ("fl51.m4a", "5.1", [sig, silent, silent, silent, silent, silent]),  # front-left only
        ("st.m4a", "stereo", [sig, sig]),
        ("c71.wav", "7.1", [silent, silent, sig, silent, silent, silent, silent, silent]),
    ):
        if layout == "7.1":
            path = write_wav(tmp_path / name, np.stack(channels), 48000, layout)
        else:
            path = write_av(tmp_path / name, audio=np.stack(channels), sample_rate=48000, layout=layout, fmt="mp4")
        info = media.probe(path)
        assert info.channels == len(channels) and info.sample_rate == 48000 and not info.has_video
        mono = media.read_audio(path, SR, duration=1.0)
        assert mono.shape == (SR,)
        spectrum = np.abs(np.fft.rfft(mono))
        assert abs(np.argmax(spectrum) * SR / len(mono) - 1000.0) < 2.0  # pitch survives resampling
        rms = float(np.sqrt(np.mean(mono[SR // 10 : -SR // 10] ** 2)))
        assert 0.1 < rms < 0.5, f"{name}: rms {rms}"  # audible, not clipped (input rms 0.354)


def test_mux_audio_copies_video_and_replaces_sound(tmp_path: Path) -> None:
    src = tmp_path / "src.mp4"
    media.write_video(src, _index_video(25), 25.0, tone(300.0, 1.0, SR), SR)
    out = tmp_path / "muxed.mp4"
    media.mux_audio(src, tone(2000.0, 0.5, 16000), 16000, out)
    np.testing.assert_array_equal(
        media.read_video(src, short_side=None, crop=None), media.read_video(out, short_side=None, crop=None)
    )
    info = media.probe(out)
    assert info.sample_rate == 16000 and info.channels == 1
    sound = media.read_audio(out, 16000)
    assert len(sound) == pytest.approx(16000, abs=2)  # padded to the video's 1 s
    head, tail = sound[1000:7000], sound[9000:15000]
    assert abs(np.argmax(np.abs(np.fft.rfft(head))) * 16000 / len(head) - 2000) < 5
    assert np.abs(tail).max() < 0.01


def test_writers_accept_odd_sizes_any_rate_and_uncopyable_codecs(tmp_path: Path) -> None:
    frames = _index_video(10, h=47, w=63)
    media.write_video(tmp_path / "odd.mp4", frames, 25.0, tone(500.0, 0.4, 20000), 20000)  # 20 kHz: not an AAC rate
    info = media.probe(tmp_path / "odd.mp4")
    assert (info.width, info.height, info.sample_rate) == (64, 48, 48000)
    video = media.read_video(tmp_path / "odd.mp4", short_side=None, crop=None)
    assert [read_index(f) for f in video] == list(range(10))
    sound = media.read_audio(tmp_path / "odd.mp4", 20000)
    assert abs(np.argmax(np.abs(np.fft.rfft(sound))) * 20000 / len(sound) - 500) < 5

    flash = write_av(tmp_path / "old.flv", _index_video(10), vcodec="flv", fmt="flv")
    media.mux_audio(flash, tone(300.0, 0.4, SR), SR, tmp_path / "muxed.mp4")  # Sorenson H.263 cannot go into MP4
    info = media.probe(tmp_path / "muxed.mp4")
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert [read_index(f) for f in media.read_video(tmp_path / "muxed.mp4", short_side=None, crop=None)] == list(range(10))


def test_bad_inputs_raise_typed_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    write_av(good, _index_video(50), audio=tone(440, 2.0, SR)[None])  # moov atom at the end
    fast = tmp_path / "fast.mp4"
    write_av(fast, np.random.default_rng(0).integers(0, 255, (50, 48, 64, 3), np.uint8), faststart=True)

    cases = {
        "missing.mp4": (media.MediaError, None),
        "empty.mp4": (media.NotMediaError, b""),
        "text.mp4": (media.NotMediaError, b"this is a shopping list, not a video\n" * 20),
        "truncated.mp4": (media.CorruptMediaError, good.read_bytes()[: good.stat().st_size // 2]),
        "cut.mp4": (media.CorruptMediaError, fast.read_bytes()[: fast.stat().st_size // 3]),
    }
    for name, (error, data) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(error, match=name):
            media.read_video(path)
        with pytest.raises(error, match=name):
            media.read_audio(path, SR) if name != "cut.mp4" else media.read_video(path, duration=2.0)

    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(media.NotMediaError, match="folder.mp4"):
        media.probe(tmp_path / "folder.mp4")
    audio_only = write_av(tmp_path / "sound.m4a", audio=tone(440, 1.0, SR)[None], fmt="mp4")
    with pytest.raises(media.NoVideoStreamError, match="sound.m4a"):
        media.read_video(audio_only)
    silent = write_av(tmp_path / "silent.mp4", _index_video(10))
    with pytest.raises(media.NoAudioStreamError, match="silent.mp4"):
        media.read_audio(silent, SR)
    zero = zero_size_mkv(tmp_path / "zero.mkv")
    with pytest.raises(media.ZeroSizeFrameError, match="zero.mkv"):
        media.read_video(zero)
    with pytest.raises(media.ZeroSizeFrameError, match="out.mp4"):
        media.write_video(tmp_path / "out.mp4", np.zeros((2, 0, 4, 3), np.uint8), 25.0)
    assert not (tmp_path / "out.mp4").exists()  # atomic: a failed write leaves nothing behind


def test_decoding_pinned_against_a_stored_reference() -> None:
    """Decoder/scaler upgrades must not silently change model inputs (Synchformer's authors saw sync accuracy
    drop with newer PyAV decoding): a committed 29.97 fps clip must decode to the stored 25 fps frames."""
    ref = np.load(FIXTURES / "media_pin_decoded.npz")
    video = media.read_video(FIXTURES / "media_pin.mp4", fps=25.0, short_side=48, crop=None)
    assert video.shape == ref["frames"].shape
    diff = np.abs(video.astype(int) - ref["frames"].astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.5  # bit-exact here; room for SIMD differences elsewhere
    sound = media.read_audio(FIXTURES / "media_pin.mp4", 16000)
    assert sound.shape == ref["audio"].shape and np.abs(sound - ref["audio"]).max() < 1e-3


def test_unreadable_file_is_a_media_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_av(tmp_path / "locked.mp4", _index_video(5))

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)  # tests run as root here, so chmod cannot make a file unreadable
    with pytest.raises(media.MediaError, match="locked.mp4: unreadable file \\(Permission denied\\)"):
        media.read_video(path)

