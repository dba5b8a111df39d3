"""CFG sweep: generate N samples per test clip at every guidance scale γ, write WAVs once, index them.

Layout (DATA_LAYOUT.md): ``<data>/sweep/<test_set>/g<γ>/<clip>__s<k>.wav`` and ``<data>/sweep/index.csv``
with columns ``test_set, cfg_scale, clip, sample, start_sec, window_s, path, video, sample_rate`` (``path`` the
WAV and ``video`` the clip's source video, both relative to ``<data>/sweep`` by the :mod:`vaura.tables` rule;
``window_s`` the cache's window, so ``evaluate`` reads nothing but the sweep). With ``reconstructions`` on, the codec's reconstruction of each clip's reference codes is
written to ``<test_set>/recon/<clip>.wav`` (``cfg_scale`` empty, ``sample`` −1): the ceiling a generator can reach
through this codec, which the science check needs.

Generation is batched over (clip × sample) pairs and uses the KV-cache sampler with CFG batch doubling.
Batches are fixed by the clip order and ``batch_size``, and each batch's random generator is seeded from
(seed, test set, γ, batch index), so a resumed sweep regenerates a missing batch exactly; a batch whose WAVs
all exist is skipped.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vaura.config import bounded
from vaura.io import atomic_path, atomic_write_csv, remove_stale_temps
from vaura.tables import relative_to_table

INDEX_COLUMNS = ["test_set", "cfg_scale", "clip", "sample", "start_sec", "window_s", "path", "video", "sample_rate"]


@dataclass
class TestSetConfig:
    """One named test set: clips of a cache split, optionally restricted to a fixed ``file,start_sec`` table.

    The paper's sets (VGGSound test, VGGSound-Sparse, VisualSound test, VAS without fireworks) are each a
    ``file,start_sec`` CSV whose clips the ``cache`` stage encoded into ``cache_split``; offline: the synthetic
    test split with its fixed windows.
    """

    __test__ = False  # not a pytest class despite the name

    cache_split: str = "test"
    windows: str = ""
    max_clips: int = 0


@dataclass
class SweepConfig:
    """params.yaml section ``sweep``."""

    cfg_scales: list[float] = bounded([1.0, 3.0, 5.0, 6.0, 7.0, 9.0], ge=0)
    samples_per_clip: int = bounded(10, ge=1)
    batch_size: int = bounded(16, ge=1)
    reconstructions: bool = True
    device: str = "auto"
    seed: int = bounded(0, ge=0)
    test_sets: dict[str, TestSetConfig] = field(default_factory=lambda: {"test": TestSetConfig()})


@dataclass
class TestItem:
    """One test clip's fixed evaluation window: reference codes ``[K, T]``, visual features ``[N, D]``, and where
    the window lies in which source video."""

    __test__ = False

    clip: str
    start_sec: float
    codes: torch.Tensor
    feats: torch.Tensor
    window_s: float
    video: str


class SweepError(ValueError):
    """Bad sweep input (names the file and the reason)."""


def gamma_dir(gamma: float) -> str:
    """Folder name of a guidance scale: ``g6``, ``g0.5`` (no trailing zeros, stable across runs)."""
    return f"g{gamma:g}"


def select_windows(index: pd.DataFrame, windows_csv: str | Path | None, source: str) -> pd.DataFrame:
    """Restrict a cache split's rows to a ``file,start_sec`` table; every listed clip must be cached at that start.

    ``file`` may be a file name or a clip id (the stem is compared with the cache's ``clip`` column).
    """
    if not windows_csv:
        return index
    path = Path(windows_csv)
    if not path.is_file():
        raise SweepError(f"{path}: test-set window table not found ({source})")
    table = pd.read_csv(path)
    missing = {"file", "start_sec"} - set(table.columns)
    if missing:
        raise SweepError(f"{path}: missing column(s) {sorted(missing)}; expected file,start_sec")
    wanted = {Path(str(f)).stem: float(s) for f, s in zip(table["file"], table["start_sec"])}
    by_clip = index.set_index("clip")
    absent = sorted(set(wanted) - set(by_clip.index))
    if absent:
        raise SweepError(f"{path}: {len(absent)} clip(s) not in the cache split, e.g. {absent[:3]}")
    moved = [c for c, s in wanted.items() if abs(float(by_clip.loc[c, "start_sec"]) - s) > 1e-3]
    if moved:
        raise SweepError(f"{path}: cached window start differs from the table for {moved[:3]}")
    return index[index["clip"].isin(wanted)]


def load_test_items(cache_dir: str | Path, ts: TestSetConfig, name: str) -> list[TestItem]:
    """Fixed-window test items of one test set from the feature/token cache (``vaura.cache.CachedClips``)."""
    from vaura.cache import CacheError, CachedClips

    try:
        dataset = CachedClips(cache_dir, ts.cache_split)
    except CacheError as exc:
        raise SweepError(f"test set '{name}': {exc}") from exc
    rows = dataset.index.copy()
    rows["pos"] = np.arange(len(rows))
    rows = select_windows(rows, ts.windows or None, f"sweep.test_sets.{name}")
    if ts.max_clips:
        rows = rows.iloc[: ts.max_clips]
    items = []
    for row in rows.itertuples():
        codes, feats = dataset[int(row.pos)]
        items.append(TestItem(str(row.clip), float(row.start_sec), codes.long(), feats.float(), dataset.window_s,
                              str(row.path)))
    return items


def _batch_seed(seed: int, test_set: str, gamma: float, batch: int) -> int:
    key = f"{seed}|{test_set}|{gamma:g}|{batch}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


Generate = Callable[..., torch.Tensor]


def run_sweep(
    model: torch.nn.Module,
    codec: Any,
    test_sets: dict[str, list[TestItem]],
    cfg: SweepConfig,
    gen_kwargs: dict[str, Any],
    out_dir: str | Path,
    generate: Generate | None = None,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Generate every (test set, γ, clip, sample) once; returns (and writes) the index.

    ``generate`` defaults to :func:`vaura.model.sampler.generate`; ``gen_kwargs`` carries temperature, top_k and
    top_p from the ``generation`` section.
    """
    if generate is None:
        from vaura.model.sampler import generate
    out_dir = Path(out_dir)
    remove_stale_temps(out_dir)  # a killed earlier run's half-written WAVs
    rows: list[dict[str, Any]] = []
    sr = int(codec.sample_rate)
    model.eval()
    for name, items in test_sets.items():
        if cfg.reconstructions:
            rows += _reconstruct(codec, items, name, out_dir, sr, cfg.batch_size, device)
        pairs = [(it, k) for it in items for k in range(cfg.samples_per_clip)]
        for gamma in cfg.cfg_scales:
            batches = [pairs[i : i + cfg.batch_size] for i in range(0, len(pairs), cfg.batch_size)]
            for b, batch in enumerate(tqdm(batches, desc=f"sweep {name} γ={gamma:g}", unit="batch")):
                paths = [out_dir / name / gamma_dir(gamma) / f"{it.clip}__s{k}.wav" for it, k in batch]
                rows += [_index_row(name, gamma, it, k, p, out_dir, sr) for (it, k), p in zip(batch, paths)]
                if all(p.is_file() for p in paths):
                    continue
                n_frames = {it.codes.shape[-1] for it, _ in batch}
                if len(n_frames) != 1:
                    raise SweepError(f"test set '{name}': clips of different lengths {sorted(n_frames)} in one batch")
                visual = torch.stack([it.feats for it, _ in batch]).to(device)
                gen = torch.Generator(device=device).manual_seed(_batch_seed(cfg.seed, name, gamma, b))
                with torch.inference_mode():
                    codes = generate(model, visual, n_frames.pop(), cfg_scale=gamma, generator=gen, **gen_kwargs)
                    audio = codec.decode(codes.to(device)).float().cpu().numpy()[:, 0]
                for wav, p in zip(audio, paths):
                    _write_wav(p, wav, sr)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    atomic_write_csv(out_dir / "index.csv", index)
    return index


def _index_row(name: str, gamma: float, it: TestItem, sample: int, wav: Path, out_dir: Path, sr: int) -> dict[str, Any]:
    """One ``index.csv`` row; ``path`` and ``video`` relative to the index's folder (:mod:`vaura.tables`)."""
    wav_rel, video_rel = relative_to_table(out_dir / "index.csv", [wav, it.video])
    return {"test_set": name, "cfg_scale": gamma, "clip": it.clip, "sample": sample, "start_sec": it.start_sec,
            "window_s": it.window_s, "path": wav_rel, "video": video_rel, "sample_rate": sr}


def _reconstruct(
    codec: Any, items: Sequence[TestItem], name: str, out_dir: Path, sr: int, batch_size: int,
    device: str | torch.device,
) -> list[dict[str, Any]]:
    rows = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        paths = [out_dir / name / "recon" / f"{it.clip}.wav" for it in chunk]
        rows += [_index_row(name, np.nan, it, -1, p, out_dir, sr) for it, p in zip(chunk, paths)]
        if all(p.is_file() for p in paths):
            continue
        with torch.inference_mode():
            audio = codec.decode(torch.stack([it.codes for it in chunk]).to(device)).float().cpu().numpy()[:, 0]
        for wav, p in zip(audio, paths):
            _write_wav(p, wav, sr)
    return rows
