"""Re-encode a folder of videos to the paper's format; every bad file is named with a reason, none stops the run.

Paper format (docs/PAPER.md, VGGSound as V-AURA uses it): 25 fps, short side 256, H.264, AAC 44.1 kHz mono. The
output clip keeps its input's file stem (the clip id everywhere downstream).
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from vaura import media
from vaura.config import bounded
from vaura.data.manifest import read_manifest
from vaura.io import atomic_write_csv

# Files in an input folder that are bookkeeping, not candidate videos.
SIDECAR_SUFFIXES = (".csv", ".json", ".part", ".md5", ".sha256")
FACT_COLUMNS = ("clip", "path", "split", "label", "duration_s", "fps", "sample_rate", "width", "height", "source")


@dataclass
class PreprocessConfig:
    """Params section ``preprocess``: the output format and how the stage runs."""

    input: str = "raw"
    output: str = "clips"
    fps: float = bounded(25.0, gt=0)
    short_side: int = bounded(256, ge=1)
    sample_rate: int = bounded(44100, ge=1)
    require_audio: bool = True
    strict: bool = False
    workers: int = bounded(2, ge=1)


def list_inputs(input_dir: Path) -> list[Path]:
    """Every regular, non-hidden file that is not a sidecar: a stray non-video is reported, not ignored."""
    return sorted(
        p for p in input_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in SIDECAR_SUFFIXES
    )


def _reason(exc: BaseException, path: Path) -> str:
    """The error as a sentence for ``rejected.csv`` (the path is its own column)."""
    text = str(exc)
    prefix = f"{path}: "
    text = text[len(prefix):] if text.startswith(prefix) else text
    if not isinstance(exc, media.MediaError):
        text = f"unexpected error while re-encoding ({type(exc).__name__}: {text})"
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def convert_clip(src: Path, dst: Path, cfg: PreprocessConfig) -> dict:
    """Re-encode ``src`` to ``dst`` (atomically); returns the clip's facts. Raises :class:`media.MediaError`."""
    info = media.probe(src)
    if not info.has_video:
        raise media.NoVideoStreamError(f"{src}: no video stream (audio-only file)")
    if not info.width or not info.height:
        raise media.ZeroSizeFrameError(f"{src}: the video stream has zero-sized frames ({info.width}x{info.height})")
    if cfg.require_audio and not info.has_audio:
        raise media.NoAudioStreamError(f"{src}: no audio stream; training needs each video's own sound")
    audio = media.read_audio(src, cfg.sample_rate) if info.has_audio else None
    frames = media.iter_video(src, fps=cfg.fps, short_side=cfg.short_side, crop=None)
    first: dict = {}

    def remember_size(it):
        for frame in it:
            first.setdefault("shape", frame.shape)
            yield frame

    n = media.write_video(dst, remember_size(frames), cfg.fps, audio, cfg.sample_rate)
    height, width = first["shape"][:2]
    return {"duration_s": round(n / cfg.fps, 4), "fps": cfg.fps, "sample_rate": cfg.sample_rate if audio is not None else 0,
            "width": width, "height": height}


def _facts_of_existing(dst: Path, cfg: PreprocessConfig) -> dict | None:
    """Facts of an earlier output, or None when it is not in the current format (settings changed: redo)."""
    info = media.probe(dst)
    audio_ok = info.audio_codec == "aac" and info.sample_rate == cfg.sample_rate and info.channels == 1
    if (info.video_codec != "h264" or abs(info.fps - cfg.fps) > 1e-6 or min(info.width, info.height) != cfg.short_side
            or not (audio_ok or (not info.has_audio and not cfg.require_audio))):
        return None
    n = round(info.duration_s * cfg.fps)
    return {"duration_s": round(n / cfg.fps, 4), "fps": cfg.fps, "sample_rate": info.sample_rate,
            "width": info.width, "height": info.height}


def _work(src: Path, dst: Path, cfg: PreprocessConfig) -> tuple[dict | None, str | None, bool]:
    """(facts, reason, skipped): never raises, so one bad file cannot stop the pool."""
    try:
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
            try:
                facts = _facts_of_existing(dst, cfg)
            except media.MediaError:
                facts = None  # an unreadable earlier output is simply redone
            if facts is not None:
                return facts, None, True
        return convert_clip(src, dst, cfg), None, False
    except Exception as exc:  # noqa: BLE001 - every failure becomes a rejected row with its reason
        return None, _reason(exc, src), False


def _input_manifest(input_dir: Path) -> dict[str, dict]:
    """Columns to carry through (split, label, ...) by file stem, when the input folder has a manifest."""
    path = input_dir / "manifest.csv"
    if not path.exists():
        return {}
    df = read_manifest(path)
    extra = [c for c in df.columns if c not in FACT_COLUMNS or c in ("split", "label")]
    return {Path(p).stem: row for p, row in zip(df["path"], df[extra].to_dict("records"))}


def _rejected_upstream(input_dir: Path) -> list[dict]:
    """Rows ``acquire`` already rejected (``<input>/rejected.csv``): one list of every bad file, in one place."""
    path = input_dir / "rejected.csv"
    if not path.is_file():
        return []
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return df[["path", "reason"]].to_dict("records") if {"path", "reason"} <= set(df.columns) else []


def preprocess_folder(input_dir: str | Path, output_dir: str | Path, cfg: PreprocessConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convert every input; write ``manifest.csv`` and ``rejected.csv`` in ``output_dir``; return both tables.

    Inputs are only read. Outputs newer than their input and in the current format are kept (a re-run only
    does what is missing).
    Without an input manifest every clip gets ``split=train`` and an empty label.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    if input_dir.resolve() == output_dir.resolve():
        raise ValueError(f"{output_dir}: output folder must differ from the input folder (inputs are never overwritten)")
    output_dir.mkdir(parents=True, exist_ok=True)
    carried = _input_manifest(input_dir)
    rejected: list[dict] = _rejected_upstream(input_dir)
    jobs: dict[str, Path] = {}
    for src in list_inputs(input_dir):
        if src.stem in jobs:
            rejected.append({"path": str(src), "reason": f"Another input ({jobs[src.stem].name}) has the same name stem "
                             f"'{src.stem}'; clip ids must be unique, so this one is skipped."})
            continue
        jobs[src.stem] = src
    rows: list[dict] = []
    n_skipped = 0
    bar = tqdm(total=len(jobs), desc="preprocess", unit="clip", disable=not jobs)

    def collect(stem: str, result: tuple[dict | None, str | None, bool]) -> None:
        nonlocal n_skipped
        facts, reason, skipped = result
        src = jobs[stem]
        if facts is None:
            rejected.append({"path": str(src), "reason": reason})
        else:
            base = {"split": "train", "label": ""} | carried.get(stem, {})
            rows.append({"clip": stem, "path": f"{stem}.mp4", **base, **facts, "source": str(src)})
            n_skipped += skipped
        bar.update()

    if cfg.workers > 1 and len(jobs) > 1:
        # spawn, not fork: stages run inside MLflow runs whose monitor threads may hold locks at fork time
        with ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_work, src, output_dir / f"{stem}.mp4", cfg): stem for stem, src in jobs.items()}
            for fut in as_completed(futures):
                collect(futures[fut], fut.result())
    else:
        for stem, src in jobs.items():
            collect(stem, _work(src, output_dir / f"{stem}.mp4", cfg))
    bar.close()
    if n_skipped:
        print(f"preprocess: {n_skipped} clip(s) already done, kept")
    columns = list(FACT_COLUMNS) + sorted({k for r in rows for k in r} - set(FACT_COLUMNS))
    manifest = pd.DataFrame(rows, columns=columns).sort_values("clip", kind="stable").reset_index(drop=True)
    rejected_df = pd.DataFrame(rejected, columns=["path", "reason"]).sort_values("path", kind="stable").reset_index(drop=True)
    atomic_write_csv(output_dir / "manifest.csv", manifest)
    atomic_write_csv(output_dir / "rejected.csv", rejected_df)
    return manifest, rejected_df

