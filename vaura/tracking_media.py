"""Media artifacts of MLflow runs: audio a user can play, its spectrogram, and the video muxed with it.

Split from :mod:`vaura.tracking` (run lifecycle, params, tags) because these helpers pull in audio, plotting and
video code that the run bookkeeping does not need. Like :mod:`vaura.tracking`, nothing here changes a pipeline
output, so it is not a code dep of any DVC stage.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_AAC_RATES = {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000}


def _mono(audio: Any) -> np.ndarray:
    arr = audio.detach().float().cpu().numpy() if hasattr(audio, "detach") else audio
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(f"expected mono audio [S] or [1, S], got shape {arr.shape}")
    return arr


def _log_file(write: Any, artifact_file: str) -> None:
    import mlflow

    artifact = Path(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / artifact.name
        write(local)
        mlflow.log_artifact(str(local), artifact_path=artifact.parent.as_posix() if artifact.parent != Path(".") else None)


def log_audio(audio: Any, sample_rate: int, artifact_file: str) -> None:
    """Log mono audio as a 16-bit WAV artifact (the MLflow UI plays it)."""
    import soundfile as sf

    wav = np.clip(_mono(audio), -1.0, 1.0)
    _log_file(lambda p: sf.write(str(p), wav, sample_rate, subtype="PCM_16"), artifact_file)


def spectrogram_png(audio: Any, sample_rate: int, path: str | Path, title: str = "") -> None:
    """Write a log-magnitude spectrogram PNG (matplotlib, Agg backend — no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wav = _mono(audio)
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    try:
        nfft = 512 if len(wav) >= 512 else max(16, len(wav))
        ax.specgram(wav + 1e-9, NFFT=nfft, Fs=sample_rate, noverlap=nfft // 2, cmap="magma")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("Hz")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(str(path), format="png")
    finally:
        plt.close(fig)


def log_spectrogram(audio: Any, sample_rate: int, artifact_file: str, title: str = "") -> None:
    """Log a spectrogram PNG of mono audio."""
    _log_file(lambda p: spectrogram_png(audio, sample_rate, p, title), artifact_file)


def log_muxed_video(
    video_path: str | Path, audio: Any, sample_rate: int, artifact_file: str, start_sec: float = 0.0
) -> None:
    """Log an MP4 of ``video_path`` from ``start_sec`` for the audio's duration, with ``audio`` as its soundtrack.

    The window is cut with :func:`vaura.media.read_video` and muxed by :func:`vaura.media.write_video`
    (H.264 + AAC), so a generated 2.56 s clip is watched against exactly the frames that conditioned it.
    """
    from vaura.media import read_video, write_video

    wav = _mono(audio)
    frames = read_video(video_path, fps=25.0, crop=None, start_sec=start_sec, duration=len(wav) / sample_rate)
    if sample_rate not in _AAC_RATES:  # e.g. a tiny test codec's rate: AAC would refuse to open
        from scipy.signal import resample_poly

        wav = resample_poly(wav, 16000, sample_rate).astype(np.float32)
        sample_rate = 16000
    _log_file(lambda p: write_video(p, frames, 25.0, audio=wav, sample_rate=sample_rate), artifact_file)
