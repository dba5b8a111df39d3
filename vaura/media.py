"""Media I/O on PyAV: the one place that turns video files into arrays and arrays into video files.

Every stage that touches pixels or samples goes through here so the paper's input format (25 fps by timestamp,
short side 256, crop 224, mono audio at a fixed rate) is produced by exactly one piece of code, and every bad
file fails with a typed :class:`MediaError` naming the file and the reason instead of a raw FFmpeg error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from vaura.io import atomic_path

# A window may overrun the clip's declared end by this much (container durations are rounded, AAC ends are
# padded); anything longer is a real WindowError, and a decode that stops earlier than this is truncation.
WINDOW_TOLERANCE_S = 0.1
# Containers whose first bytes we recognise: a file that starts like one of these but does not open is
# *corrupt*; a file that starts like none of them is *not media*.
_MAGIC_AT_0 = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"ID3",
               b"fLaC", b"0&\xb2u", b"\xff\xf1", b"\xff\xf9", b"\xff\xfb")
_MAGIC_AT_4 = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
_STILL_IMAGE_FORMATS = ("image2", "tty")
_AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_H264_CRF = "18"  # near-transparent quality: the clips are model inputs, artefacts would be learned
# One encoder thread: x264's automatic thread count follows the CPUs (and CPU affinity) it sees, and the stream
# depends on it, so the same frames would encode to different bytes on another machine or after a library
# changed this process's affinity. Identical params and seeds must give identical data under DVC; stages
# parallelise over clips (worker processes) instead.
# No B-frames: with x264's macroblock-tree rate control propagating through B-frames, small frames (seen at
# 48x48 to 80x80, the micro profile's size) encoded to a different, equally valid stream about one time in 20
# depending on what freed memory in the process held (identical input planes; filling the heap with random
# bytes between frames reproduces it), so that path reads memory x264 has not initialised. Turning off either
# B-frames or mbtree makes the stream depend on the frames only (tests/test_reproducible.py); without B-frames
# files grow ~18% at the same CRF, without mbtree ~90%.
_H264_OPTIONS = {"crf": _H264_CRF, "preset": "veryfast", "threads": "1", "x264-params": "bframes=0"}
# The same for libswscale: with automatic threads it cuts a frame into one slice per CPU, and a resize filter
# rounds differently at slice edges, so resized frames (and all that follows) would depend on the machine.
_SWS_THREADS = 1
_AAC_BITRATE = 128_000


class MediaError(Exception):
    """A media file that cannot be used; the message names the file and the reason."""


class NotMediaError(MediaError):
    """The file is not an audio/video file at all (empty, text, a still image...)."""


class CorruptMediaError(MediaError):
    """The file looks like media but cannot be (fully) decoded: truncated or damaged."""


class NoVideoStreamError(MediaError):
    """Video frames were asked for but the file has no video stream."""


class NoAudioStreamError(MediaError):
    """Audio was asked for but the file has no audio stream."""


class WindowError(MediaError):
    """The requested ``start_sec``/``duration`` window does not fit inside the clip."""


class ZeroSizeFrameError(MediaError):
    """The video stream's frames have zero width or height."""


@dataclass
class MediaInfo:
    """What :func:`probe` learns from the container header (no full decode)."""

    duration_s: float
    fps: float
    width: int
    height: int
    has_video: bool
    has_audio: bool
    sample_rate: int
    channels: int
    video_codec: str
    audio_codec: str


def _looks_like_media(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(512)
    if head[4:8] in _MAGIC_AT_4 or any(head.startswith(m) for m in _MAGIC_AT_0):
        return True
    return len(head) > 188 and head[0] == 0x47 and head[188] == 0x47  # MPEG transport stream sync bytes


def _open(path: str | Path) -> av.container.InputContainer:
    """Open ``path`` for reading, mapping every failure to a typed :class:`MediaError`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file does not exist")
    if not path.is_file():
        raise NotMediaError(f"{path}: not a media file (it is a folder or a special file)")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise MediaError(f"{path}: unreadable file ({exc.strerror or exc})") from exc
    if path.stat().st_size == 0:
        raise NotMediaError(f"{path}: not a media file (the file is empty)")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if _looks_like_media(path):
            raise CorruptMediaError(f"{path}: corrupt or truncated media file, FFmpeg cannot open it ({exc})") from exc
        raise NotMediaError(f"{path}: not a media file (no audio/video container recognised)") from exc
    fmt = container.format.name
    if fmt in _STILL_IMAGE_FORMATS or fmt.endswith("_pipe"):
        container.close()
        raise NotMediaError(f"{path}: not a media file (FFmpeg reads it as a still image/text, format {fmt!r})")
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise NotMediaError(f"{path}: not a media file (no audio or video stream inside)")
    return container


def _duration(container: av.container.InputContainer, stream: av.stream.Stream | None = None) -> float | None:
    """Declared duration in seconds: the stream's own if known, else the container's."""
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def probe(path: str | Path) -> MediaInfo:
    """Read stream facts from the header; raises :class:`MediaError` subclasses for unusable files."""
    with _open(path) as container:
        vs = container.streams.video[0] if container.streams.video else None
        aus = container.streams.audio[0] if container.streams.audio else None
        rate = (vs.average_rate or vs.guessed_rate or vs.base_rate) if vs is not None else None
        return MediaInfo(
            duration_s=_duration(container) or 0.0,
            fps=float(rate) if rate else 0.0,
            width=vs.codec_context.width if vs is not None else 0,
            height=vs.codec_context.height if vs is not None else 0,
            has_video=vs is not None,
            has_audio=aus is not None,
            sample_rate=aus.codec_context.sample_rate if aus is not None else 0,
            channels=aus.codec_context.channels if aus is not None else 0,
            video_codec=vs.codec_context.name if vs is not None else "",
            audio_codec=aus.codec_context.name if aus is not None else "",
        )


def _origin(container: av.container.InputContainer) -> float:
    """Time zero of the clip: the container's start time (MPEG-TS/PS streams start at e.g. 1.4 s), shared by
    audio and video so their sync is kept, as FFmpeg does when it re-encodes."""
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _seek(container: av.container.InputContainer, stream: av.stream.Stream, t_abs: float) -> None:
    """Jump near ``t_abs`` (absolute seconds) before decoding a late window; unseekable inputs decode from 0."""
    if stream.time_base is None:
        return
    try:
        container.seek(int(t_abs / stream.time_base), stream=stream, backward=True)
    except av.error.FFmpegError:
        pass


def _check_window(path: Path, start_sec: float, duration: float | None, clip_s: float | None) -> None:
    if start_sec < 0:
        raise WindowError(f"{path}: start_sec must be >= 0, got {start_sec}")
    if duration is not None and duration <= 0:
        raise WindowError(f"{path}: duration must be > 0, got {duration}")
    if clip_s is None:
        return
    end = start_sec + (duration or 0.0)
    if start_sec >= clip_s or end > clip_s + WINDOW_TOLERANCE_S:
        raise WindowError(
            f"{path}: window {start_sec:.3f}-{end:.3f} s does not fit in the clip ({clip_s:.3f} s long)"
        )


def _even(x: float) -> int:
    return max(2, 2 * round(x / 2))


def _output_size(width: int, height: int, sar: Fraction | None, short_side: int | None, rotation: int) -> tuple[int, int]:
    """Display size after aspect correction, then scaled so the short side is ``short_side`` (long side even)."""
    disp_w = width * float(sar) if sar and sar > 0 else float(width)
    disp_h = float(height)
    if rotation % 180:
        disp_w, disp_h = disp_h, disp_w
    if short_side is None:
        return round(disp_w), round(disp_h)
    scale = short_side / min(disp_w, disp_h)
    if disp_w <= disp_h:
        return short_side, _even(disp_h * scale)
    return _even(disp_w * scale), short_side


def _decode_frames(container: av.container.InputContainer, stream: av.stream.Stream, path: Path) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise CorruptMediaError(f"{path}: corrupt video stream, decoding failed ({exc})") from exc


def iter_video(
    path: str | Path,
    fps: float = 25.0,
    short_side: int | None = 256,
    crop: int | None = 224,
    crop_mode: str = "center",
    start_sec: float = 0.0,
    duration: float | None = None,
    rng: np.random.Generator | None = None,
) -> Iterator[np.ndarray]:
    """Yield uint8 [H, W, 3] frames at a constant ``fps``, one per output timestamp ``start + i / fps``.

    Each output timestamp takes the decoded frame whose presentation time is nearest (ties to the earlier),
    so variable-frame-rate and 29.97 fps sources map onto the 25 fps grid without drift. Frames are
    converted one at a time, so memory stays flat for long inputs (``preprocess`` streams through this).
    """
    path = Path(path)
    if crop_mode not in ("center", "random"):
        raise ValueError(f"crop_mode must be 'center' or 'random', got {crop_mode!r}")
    with _open(path) as container:
        if not container.streams.video:
            raise NoVideoStreamError(f"{path}: no video stream (audio-only file)")
        stream = container.streams.video[0]
        cc = stream.codec_context
        if not cc.width or not cc.height:
            raise ZeroSizeFrameError(f"{path}: the video stream has zero-sized frames ({cc.width}x{cc.height})")
        clip_s = _duration(container, stream) or _duration(container)
        _check_window(path, start_sec, duration, clip_s)
        n_out = round(duration * fps) if duration is not None else None  # else: known at the last frame
        origin = _origin(container)
        if start_sec > 2.0:
            _seek(container, stream, origin + start_sec - 1.0)

        src_rate = float(stream.average_rate or stream.guessed_rate or fps)
        state: dict = {"size": None, "crop": None}

        def convert(frame: av.VideoFrame) -> np.ndarray:
            if frame.width == 0 or frame.height == 0:
                raise ZeroSizeFrameError(f"{path}: decoded a zero-sized frame ({frame.width}x{frame.height})")
            rotation = int(getattr(frame, "rotation", 0) or 0)
            if state["size"] is None:
                state["size"] = _output_size(frame.width, frame.height, stream.sample_aspect_ratio, short_side, rotation)
            w, h = state["size"]
            if rotation % 180:
                w, h = h, w
            arr = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA", threads=_SWS_THREADS).to_ndarray()
            if rotation:
                arr = np.rot90(arr, k=(rotation // 90) % 4)  # FFmpeg rotation is counter-clockwise degrees
            if crop is not None:
                if state["crop"] is None:
                    H, W = arr.shape[:2]
                    if crop > min(H, W):
                        raise ValueError(f"{path}: crop {crop} is larger than the resized frame {W}x{H}")
                    if crop_mode == "center":
                        state["crop"] = ((H - crop) // 2, (W - crop) // 2, False)
                    else:
                        g = rng if rng is not None else np.random.default_rng()
                        state["crop"] = (int(g.integers(0, H - crop + 1)), int(g.integers(0, W - crop + 1)), bool(g.random() < 0.5))
                y0, x0, flip = state["crop"]
                arr = arr[y0 : y0 + crop, x0 : x0 + crop]
                if flip:
                    arr = arr[:, ::-1]
            return np.ascontiguousarray(arr)

        emitted = 0
        prev: tuple[float, av.VideoFrame, int] | None = None
        cached: tuple[int, np.ndarray] | None = None  # (id of source frame, converted) to reuse on repeats

        def pick(frame_key: int, frame: av.VideoFrame) -> np.ndarray:
            nonlocal cached
            if cached is None or cached[0] != frame_key:
                cached = (frame_key, convert(frame))
            return cached[1]

        last_time = None
        for k, frame in enumerate(_decode_frames(container, stream, path)):
            t = frame.time - origin if frame.time is not None else (last_time + 1.0 / src_rate if last_time is not None else 0.0)
            last_time = t
            if prev is None:
                prev = (t, frame, k)
                continue
            p_t, p_frame, p_k = prev
            while n_out is None or emitted < n_out:
                target = start_sec + emitted / fps
                if target >= t:
                    break
                use_prev = target - p_t <= t - target
                yield pick(p_k, p_frame) if use_prev else pick(k, frame)
                emitted += 1
            if n_out is not None and emitted >= n_out:
                return
            prev = (t, frame, k)
        if prev is None:
            raise CorruptMediaError(f"{path}: the video stream holds no decodable frames")
        p_t, p_frame, p_k = prev
        stream_end = p_t + 1.0 / src_rate
        if n_out is None:
            n_out = max(emitted, math.floor((stream_end - start_sec) * fps + 1e-6))
            if clip_s is not None and clip_s - stream_end > 0.5 + WINDOW_TOLERANCE_S:  # headers are approximate
                raise CorruptMediaError(
                    f"{path}: truncated or damaged video: frames stop at {stream_end:.2f} s but the header says "
                    f"the clip is {clip_s:.2f} s"
                )
        elif start_sec + n_out / fps - stream_end > WINDOW_TOLERANCE_S:
            raise CorruptMediaError(
                f"{path}: truncated or damaged video: frames stop at {stream_end:.2f} s, the window needs "
                f"{start_sec + n_out / fps:.2f} s"
            )
        while emitted < n_out:  # the last frame is shown until the end of the window
            yield pick(p_k, p_frame)
            emitted += 1


def read_video(
    path: str | Path,
    fps: float = 25.0,
    short_side: int | None = 256,
    crop: int | None = 224,
    crop_mode: str = "center",
    start_sec: float = 0.0,
    duration: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Decode to uint8 [T, H, W, 3] at constant ``fps`` (T = round(duration * fps) when ``duration`` is given).

    ``crop_mode="random"`` picks one crop offset and a p=0.5 horizontal flip per clip from ``rng`` (the
    training augmentation); ``"center"`` is the test-time crop; ``crop=None`` keeps the resized frame.
    """
    frames = list(iter_video(path, fps, short_side, crop, crop_mode, start_sec, duration, rng))
    if not frames:
        raise WindowError(f"{Path(path)}: the window starting at {start_sec} s holds no frame")
    return np.stack(frames)


def read_audio(path: str | Path, sample_rate: int, start_sec: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode to float32 mono [S] at ``sample_rate`` (any layout, 5.1 included, is downmixed by FFmpeg's matrix).

    With ``duration`` the result has exactly round(duration * sample_rate) samples (zero-padded by at most
    the window tolerance); sample 0 is the audio at ``start_sec`` on the file's presentation timeline.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise NoAudioStreamError(f"{path}: no audio stream (the video is silent)")
        stream = container.streams.audio[0]
        clip_s = _duration(container, stream) or _duration(container)
        _check_window(path, start_sec, duration, clip_s)
        origin = _origin(container)
        if start_sec > 2.0:
            _seek(container, stream, origin + start_sec - 1.0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        n_have = 0
        need = None
        try:
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = float(frame.time) - origin if frame.time is not None else 0.0
                    if duration is not None:
                        need = round((start_sec + duration - first_time) * sample_rate) + sample_rate // 10
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    n_have += out.samples
                if need is not None and n_have >= need:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise CorruptMediaError(f"{path}: corrupt audio stream, decoding failed ({exc})") from exc
    if first_time is None:
        raise CorruptMediaError(f"{path}: the audio stream holds no decodable samples")
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    offset = round((start_sec - first_time) * sample_rate)
    audio = audio[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.float32), audio])
    if duration is None:
        if clip_s is not None and clip_s - start_sec - len(audio) / sample_rate > WINDOW_TOLERANCE_S + 0.5:
            raise CorruptMediaError(
                f"{path}: truncated or damaged audio: {len(audio) / sample_rate:.2f} s decoded after {start_sec} s "
                f"but the header says the clip is {clip_s:.2f} s"
            )
        if clip_s is not None:  # drop the codec's end padding (AAC decodes whole 1024-sample frames)
            audio = audio[: round((clip_s - start_sec) * sample_rate)]
        return audio
    n = round(duration * sample_rate)
    if n - len(audio) > WINDOW_TOLERANCE_S * sample_rate:
        raise CorruptMediaError(
            f"{path}: truncated or damaged audio: only {len(audio) / sample_rate:.2f} s decodable from {start_sec} s, "
            f"{duration} s requested"
        )
    if len(audio) < n:
        audio = np.concatenate([audio, np.zeros(n - len(audio), np.float32)])
    return audio[:n]


def _as_channels(audio: np.ndarray) -> np.ndarray:
    """[S] or [C, S] → float32 [C, S] in [-1, 1] (C ≤ 2)."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] not in (1, 2):
        raise ValueError(f"audio must be [S] or [C<=2, S], got shape {a.shape}")
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0))


def _aac_ready(chans: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """AAC only takes a few sample rates: audio at any other rate (a tiny codec's, say) is resampled to 48 kHz."""
    if sample_rate in _AAC_RATES:
        return chans, sample_rate
    layout = "mono" if chans.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chans), format="fltp", layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=48000)
    parts = [f.to_ndarray() for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(parts, axis=1).astype(np.float32), 48000


def _add_audio_stream(out: av.container.OutputContainer, channels: int, sample_rate: int) -> av.stream.Stream:
    stream = out.add_stream("aac", rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    stream.bit_rate = _AAC_BITRATE
    return stream


def _encode_audio(out: av.container.OutputContainer, stream: av.stream.Stream, audio: np.ndarray, sample_rate: int) -> None:
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    step = stream.codec_context.frame_size or 1024
    for i in range(0, audio.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, i : i + step]), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = i
        frame.time_base = Fraction(1, sample_rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _container_format(path: Path) -> str:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(path.suffix.lower(), "mp4")


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 44100,
) -> int:
    """Write H.264 (yuv420p) + AAC to ``path`` atomically; returns the number of frames written.

    ``frames`` is uint8 [T, H, W, 3] or any iterable of [H, W, 3] frames (so long clips can be streamed).
    yuv420p needs even sizes: an odd height/width gets one replicated edge row/column. ``audio`` ([S] or
    [C<=2, S]) is trimmed or zero-padded to the T / fps seconds of the picture; a sample rate AAC does not
    support is resampled to 48 kHz.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    written = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format=_container_format(path), options={"movflags": "+faststart"}) as out:
            vstream = None
            astream = None
            chans = _as_channels(audio) if audio is not None else None
            if chans is not None:
                chans, sample_rate = _aac_ready(chans, sample_rate)
            for frame in frames:
                frame = np.asarray(frame)
                if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                    raise ValueError(f"{path}: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
                h, w = frame.shape[:2]
                if h == 0 or w == 0:
                    raise ZeroSizeFrameError(f"{path}: cannot write zero-sized frames ({w}x{h})")
                if h % 2 or w % 2:
                    frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                    h, w = frame.shape[:2]
                if vstream is None:
                    vstream = out.add_stream("libx264", rate=rate)
                    vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
                    vstream.options = dict(_H264_OPTIONS)  # veryfast: 4x faster than "fast", same size here
                    if chans is not None:
                        astream = _add_audio_stream(out, chans.shape[0], sample_rate)
                elif (h, w) != (vstream.height, vstream.width):
                    raise ValueError(f"{path}: frame {written} is {w}x{h}, earlier frames {vstream.width}x{vstream.height}")
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(
                    format="yuv420p", threads=_SWS_THREADS)
                vf.pts = written
                out.mux(vstream.encode(vf))
                written += 1
            if vstream is None:
                raise ValueError(f"{path}: no frames to write")
            out.mux(vstream.encode(None))
            if astream is not None:
                n = round(written / float(rate) * sample_rate)  # sound exactly as long as the picture
                chans = np.pad(chans, ((0, 0), (0, max(0, n - chans.shape[1]))))[:, :n]
                _encode_audio(out, astream, chans, sample_rate)
    return written


def mux_audio(video_path: str | Path, audio: np.ndarray, sample_rate: int, out_path: str | Path) -> None:
    """Write ``out_path``: the video stream of ``video_path`` copied bit-exactly, with ``audio`` as its sound.

    Any audio in the input is dropped; ``audio`` is trimmed or zero-padded to the video's duration so the
    player shows the whole clip with the generated sound underneath (how results are watched in MLflow).
    A video codec the output container cannot hold (FFV1 into MP4, say) is re-encoded to H.264 instead.
    """
    video_path, out_path = Path(video_path), Path(out_path)
    chans, sample_rate = _aac_ready(_as_channels(audio), sample_rate)
    with _open(video_path) as src:
        if not src.streams.video:
            raise NoVideoStreamError(f"{video_path}: no video stream to put the audio under")
        vin = src.streams.video[0]
        fps = float(vin.average_rate or vin.guessed_rate or 25.0)
        video_s = _duration(src, vin) or _duration(src) or chans.shape[1] / sample_rate
        n = round(video_s * sample_rate)
        chans = np.pad(chans, ((0, 0), (0, max(0, n - chans.shape[1]))))[:, :n]
        try:
            with atomic_path(out_path) as tmp:
                with av.open(str(tmp), mode="w", format=_container_format(out_path), options={"movflags": "+faststart"}) as out:
                    vout = out.add_stream_from_template(vin)
                    astream = _add_audio_stream(out, chans.shape[0], sample_rate)
                    shift = vin.start_time or 0  # the picture starts at 0 like the new sound (MPEG-TS/PS do not)
                    for packet in src.demux(vin):
                        if packet.dts is None:
                            continue
                        packet.pts = packet.pts - shift if packet.pts is not None else None
                        packet.dts -= shift
                        packet.stream = vout
                        out.mux(packet)
                    _encode_audio(out, astream, chans, sample_rate)
            return
        except (av.error.FFmpegError, ValueError):
            pass  # the stream cannot be copied as is: decode and re-encode it below (damage raises there)
    write_video(out_path, iter_video(video_path, fps=fps, short_side=None, crop=None), fps, chans, sample_rate)
