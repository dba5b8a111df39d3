"""Test media made with PyAV itself (no ffmpeg CLI on these machines): real files in many codecs and layouts.

Frames carry their source index as 8 black/white vertical stripes (bit 7 leftmost) so a test can tell which
source frame a decoded frame came from, robustly to lossy compression.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np


def index_frame(k: int, height: int, width: int) -> np.ndarray:
    """A frame whose 8 vertical stripes spell ``k`` in binary."""
    frame = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, 9).round().astype(int)
    for bit in range(8):
        if (k >> (7 - bit)) & 1:
            frame[:, edges[bit] : edges[bit + 1]] = 255
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_frame` (reads the centre of each stripe)."""
    h, w = frame.shape[:2]
    centres = ((np.arange(8) + 0.5) * w / 8).astype(int)
    bits = frame[h // 4 : 3 * h // 4, centres].mean(axis=(0, 2)) > 128
    return int(sum(int(b) << (7 - i) for i, b in enumerate(bits)))


def write_av(
    path: Path,
    frames: np.ndarray | None = None,
    fps: Fraction | int = 25,
    *,
    vcodec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts_ms: Sequence[int] | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = 44100,
    acodec: str = "aac",
    layout: str = "mono",
    fmt: str | None = None,
    faststart: bool = False,
) -> Path:
    """Write any codec/container combination av can encode. ``audio`` is float32 [C, S].

    ``pts_ms`` gives each frame its own presentation time in milliseconds (variable frame rate).
    """
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as out:
        vs = as_ = None
        if frames is not None:
            vs = out.add_stream(vcodec, rate=fps)
            vs.height, vs.width = frames.shape[1:3]
            vs.pix_fmt = pix_fmt
            if pts_ms is not None:
                vs.codec_context.time_base = Fraction(1, 1000)
                vs.time_base = Fraction(1, 1000)
        if audio is not None:
            as_ = out.add_stream(acodec, rate=sample_rate)
            as_.layout = layout
        if vs is not None:
            for k, arr in enumerate(frames):
                f = av.VideoFrame.from_ndarray(arr, format="rgb24")
                if pts_ms is not None:
                    f.pts, f.time_base = int(pts_ms[k]), Fraction(1, 1000)
                else:
                    f.pts = k
                out.mux(vs.encode(f))
            out.mux(vs.encode(None))
        if as_ is not None:
            fmt_name = as_.codec_context.format.name if as_.codec_context.format else "fltp"
            convert = av.AudioResampler(format=fmt_name, layout=layout, rate=sample_rate)
            step = as_.codec_context.frame_size or 1024
            for i in range(0, audio.shape[1], step):
                chunk = np.ascontiguousarray(audio[:, i : i + step].astype(np.float32))
                f = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                f.sample_rate, f.pts, f.time_base = sample_rate, i, Fraction(1, sample_rate)
                for g in convert.resample(f) if fmt_name != "fltp" else [f]:
                    out.mux(as_.encode(g))
            out.mux(as_.encode(None))
    return path


def tone(freq: float, seconds: float, sample_rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def click_track(seconds: float, sample_rate: int, at_s: float, amp: float = 0.9) -> np.ndarray:
    """Silence with one short decaying burst starting exactly at ``at_s``."""
    x = np.zeros(round(seconds * sample_rate), np.float32)
    i = round(at_s * sample_rate)
    n = 400
    x[i : i + n] = amp * np.exp(-np.arange(n) / 60.0) * np.sign(np.sin(np.arange(n) * 0.7) + 1e-9)
    return x


def zero_size_mkv(path: Path) -> Path:
    """A Matroska file whose video track declares 0x0 frames (an FFV1 stream with its size fields zeroed)."""
    frames = np.zeros((3, 4, 6, 3), np.uint8)
    write_av(path, frames, vcodec="ffv1", pix_fmt="yuv420p", fmt="matroska")
    data = bytearray(path.read_bytes())
    for element_id, size in ((b"\xb0", 6), (b"\xba", 4)):  # PixelWidth / PixelHeight elements, 1-byte values
        at = data.find(element_id + b"\x81" + bytes([size]))
        assert at >= 0, "Matroska size element not found"
        data[at + 2] = 0
    path.write_bytes(bytes(data))
    return path


def rotate_mp4_90_clockwise(path: Path) -> Path:
    """Mark an MP4's video track as 'display rotated 90 degrees clockwise' (how phones store portrait video):
    the track header's identity matrix becomes (0, 1, -1, 0)."""
    import struct

    data = bytearray(path.read_bytes())
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.rfind(identity)  # movie header first, track header last
    assert at >= 0, "track matrix not found"
    data[at : at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    return path


def write_wav(path: Path, audio: np.ndarray, sample_rate: int, layout: str) -> Path:
    """Float WAV with any channel layout (packed samples: PyAV's planar path stops at 8 planes, 7.1 needs 8)."""
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_f32le", rate=sample_rate)
        stream.layout = layout
        for i in range(0, audio.shape[1], 1024):
            chunk = np.ascontiguousarray(audio[:, i : i + 1024].T.astype(np.float32)).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, i, Fraction(1, sample_rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
