"""The token/feature cache: DAC codes and visual features of every kept clip, sharded, resumable.

Training never decodes video or runs the frozen encoders: ``cache`` computes, once per clip and for the whole
clip, the codec tokens (``int16 [K, T]``) and visual features (``float16 [N, D]``), and :class:`CachedClips`
cuts fixed-length windows from them (random start for train, the fixed ``start_sec`` of the split list for
val/test). The window length is ``filter.window_s``, recorded once in ``meta.json``; every reader takes it from there.

On disk (``data/cache/``):
- ``shard-NNNNN.pt``: weights_only-loadable dict ``clips, codes, feats`` (+ ``splits``, ``start_sec`` (−1 for
  train), ``rejected`` ``[[clip, split, reason], ...]``, ``plan`` (fingerprint of the shard's clip list and of
  the encoders), ``format``). Written atomically, so a shard on disk is complete or absent.
- ``index.csv``: ``clip,split,shard,n_frames,n_feats,start_sec,path``, rebuilt from the complete shards;
  ``path`` is the clip's source video relative to the cache folder (:mod:`vaura.tables`), so later stages find
  the video without reading the split lists again.
- ``meta.json``: codec ``sample_rate, hop_length, frame_rate, n_codebooks, codebook_size, codebook_dim``,
  ``visual_dim, feature_rate`` and the window length ``window_s``; ``rejected.csv``: ``clip,split,reason`` of
  clips that could not be cached.

Resume: shards are planned up front (fixed clip order and ``shard_size``); a rerun keeps every shard whose
``plan`` fingerprint matches (same clips, source file size/content, windows, encoder weights and read settings)
and recomputes the others, so a killed run finishes without redoing finished work. The fingerprint does not
cover this package's code: after changing how clips are decoded or encoded, delete the cache folder.
Clips shorter than one window (or whose fixed val/test window does not fit) are rejected at cache time, so the
dataset never pads.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vaura.config import bounded
from vaura.io import atomic_torch_save, atomic_write_csv, atomic_write_json
from vaura.tables import TableError, read_table, write_table

FORMAT = "vaura-cache/1"
INDEX_COLUMNS = ["clip", "split", "shard", "n_frames", "n_feats", "start_sec", "path"]


class CacheError(RuntimeError):
    """A cache folder that is missing, incomplete or inconsistent (names the file and the reason)."""


@dataclass
class CacheConfig:
    """params.yaml section ``cache``."""

    shard_size: int = bounded(16, ge=1)
    batch_size: int = bounded(4, ge=1)
    workers: int = bounded(2, ge=0)
    torch_threads: int = bounded(0, ge=0)


class CodecLike(Protocol):
    sample_rate: int
    hop_length: int
    frame_rate: float
    n_codebooks: int
    codebook_size: int
    codebook_dim: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...


class VisualLike(Protocol):
    dim: int
    frame_rate: float

    def n_tokens(self, n_frames: int) -> int: ...

    def encode_many(self, clips: Sequence[np.ndarray]) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class ClipSpec:
    """One clip to cache: ``start_sec`` is the fixed window start of val/test clips, ``None`` for train."""

    clip: str
    path: str
    split: str
    start_sec: float | None = None


def plan_from_splits(splits: dict[str, pd.DataFrame]) -> list[ClipSpec]:
    """Clips in a fixed order (train, val, test; list order within) — the order shards are cut from."""
    plan: list[ClipSpec] = []
    for split in ("train", "val", "test"):
        df = splits.get(split)
        if df is None:
            continue
        for row in df.to_dict("records"):
            start = row.get("start_sec")
            start = None if start is None or (isinstance(start, float) and math.isnan(start)) else float(start)
            if split != "train" and start is None:
                raise CacheError(f"{split} list has no start_sec for clip {row['clip']!r} (fixed windows needed)")
            plan.append(ClipSpec(str(row["clip"]), str(row["path"]), split, start))
    dup = sorted(name for name, n in Counter(c.clip for c in plan).items() if n > 1)
    if dup:
        raise CacheError(f"clip ids appear more than once across the split lists: {dup[:5]}")
    return plan


def window_frames(window_s: float, sample_rate: int, hop_length: int) -> int:
    """Code frames in a window, as ``Codec.n_frames``: the window's samples right-padded to a multiple of hop."""
    return math.ceil(round(window_s * sample_rate) / hop_length)


def audio_frame_of_token(k: int, feature_rate: float, frame_rate: float) -> int:
    """Audio frame at which visual token ``k`` starts: ``round(k / feature_rate · frame_rate)``."""
    return round(k / feature_rate * frame_rate)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.pt"


def _file_stamp(path: str) -> list | None:
    """Size and MD5 of a source file: a re-encoded clip (e.g. after ``preprocess`` reran) is re-cached.

    Content, not mtime: the stamp is stored in the shard, and two clones that made the same clips at different
    times must write identical shards (DVC hashes, bit-for-bit reproducibility).
    """
    try:
        with open(path, "rb") as fh:
            return [os.fstat(fh.fileno()).st_size, hashlib.file_digest(fh, "md5").hexdigest()]
    except OSError:
        return None


def _shard_plan_key(clips: Sequence[ClipSpec], fingerprint: str) -> str:
    """What a shard was computed from: its clips, their files and windows, and the encoders/read settings."""
    text = json.dumps([fingerprint, [[c.clip, c.split, c.start_sec, _file_stamp(c.path)] for c in clips]])
    return hashlib.sha256(text.encode()).hexdigest()


def _load_shard(path: Path, mmap: bool = False) -> dict[str, Any] | None:
    """A shard's dict, or None when it is unreadable (a foreign or damaged file is recomputed, not trusted)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # torch raises many types for damaged zip/pickle data; any of them means "recompute"
        return None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        return None
    return blob


def _fits(n_frames: int, n_feats: int, start_sec: float | None, t_win: int, n_win: int, feature_rate: float,
          frame_rate: float) -> str | None:
    """Why a clip cannot serve a window (None if it can)."""
    if n_feats < n_win or n_frames < t_win:
        return f"shorter than one window: {n_feats} visual tokens (need {n_win}), {n_frames} code frames (need {t_win})"
    if start_sec is not None:
        k = round(start_sec * feature_rate)
        a0 = audio_frame_of_token(k, feature_rate, frame_rate)
        if k + n_win > n_feats or a0 + t_win > n_frames:
            return f"fixed window at {start_sec} s does not fit ({n_feats} tokens, {n_frames} code frames)"
    return None


def _load_clip(spec: ClipSpec, read_audio: Callable[[str], np.ndarray], read_frames: Callable[[str], np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray] | str:
    """``(audio, frames)`` of a clip, or the reason it cannot be decoded."""
    from vaura.media import MediaError

    try:
        return read_audio(spec.path), read_frames(spec.path)
    except MediaError as exc:
        return str(exc)


def _encode_shard(
    clips: Sequence[ClipSpec],
    codec: CodecLike,
    visual: VisualLike,
    read_audio: Callable[[str], np.ndarray],
    read_frames: Callable[[str], np.ndarray],
    batch_size: int,
    window_s: float,
    device: torch.device,
    bar: tqdm,
    pool: ThreadPoolExecutor | None,
) -> dict[str, Any]:
    t_win = window_frames(window_s, codec.sample_rate, codec.hop_length)
    n_win = round(window_s * visual.frame_rate)
    out: dict[str, Any] = {"clips": [], "codes": [], "feats": [], "splits": [], "start_sec": [], "rejected": []}
    batches = [clips[b : b + batch_size] for b in range(0, len(clips), batch_size)]

    def submit(batch: Sequence[ClipSpec]) -> list[Any]:
        if pool is None:
            return [_load_clip(spec, read_audio, read_frames) for spec in batch]
        return [pool.submit(_load_clip, spec, read_audio, read_frames) for spec in batch]

    pending = submit(batches[0]) if batches else []
    for bi, batch in enumerate(batches):
        results = [r.result() if isinstance(r, Future) else r for r in pending]
        # Decode the next batch in the background while this one is encoded (PyAV decodes without the GIL).
        pending = submit(batches[bi + 1]) if bi + 1 < len(batches) else []
        loaded: list[tuple[ClipSpec, np.ndarray, np.ndarray]] = []
        for spec, res in zip(batch, results):
            if isinstance(res, str):
                out["rejected"].append([spec.clip, spec.split, res])
                continue
            audio, frames = res
            n_frames = math.ceil(len(audio) / codec.hop_length)
            why = _fits(n_frames, visual.n_tokens(len(frames)), spec.start_sec, t_win, n_win, visual.frame_rate,
                        codec.frame_rate)
            if why:
                out["rejected"].append([spec.clip, spec.split, f"{spec.path}: {why}"])
                continue
            loaded.append((spec, audio, frames))
        if loaded:
            codes: list[torch.Tensor | None] = [None] * len(loaded)
            by_len: dict[int, list[int]] = {}
            for j, (_, audio, _) in enumerate(loaded):
                by_len.setdefault(len(audio), []).append(j)
            # Equal-length clips share one codec batch; padding would change the convolutional codes at the end.
            for idx in by_len.values():
                wav = torch.from_numpy(np.stack([loaded[j][1] for j in idx])).float().unsqueeze(1).to(device)
                enc = codec.encode(wav).cpu()
                for row, j in enumerate(idx):
                    codes[j] = enc[row]
            feats = visual.encode_many([f for _, _, f in loaded])
            for (spec, _, _), c, f in zip(loaded, codes, feats):
                out["clips"].append(spec.clip)
                out["codes"].append(c.to(torch.int16).contiguous())
                out["feats"].append(f.detach().cpu().to(torch.float16).contiguous())
                out["splits"].append(spec.split)
                out["start_sec"].append(-1.0 if spec.start_sec is None else float(spec.start_sec))
        bar.update(len(batch))
    return out


def build_cache(
    plan: Sequence[ClipSpec],
    out_dir: str | Path,
    codec: CodecLike,
    visual: VisualLike,
    read_audio: Callable[[str], np.ndarray],
    read_frames: Callable[[str], np.ndarray],
    *,
    shard_size: int = 16,
    batch_size: int = 4,
    workers: int = 0,
    window_s: float,
    fingerprint: str = "",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every clip of ``plan`` into shards under ``out_dir`` (resuming), then write index/meta/rejected.

    ``read_audio(path)`` must return mono float32 audio at ``codec.sample_rate``; ``read_frames(path)`` uint8
    frames at 25 fps as the visual encoder expects them. ``fingerprint`` identifies the encoders (a shard made
    with other weights is recomputed). ``workers`` > 0 decodes the next batch in that many threads while the
    current one is encoded. Returns a summary (clip/shard counts, how many shards were reused).
    """
    if codec.codebook_size > torch.iinfo(torch.int16).max:
        raise CacheError(f"codebook_size {codec.codebook_size} does not fit the int16 cache format")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".shard-*.tmp*"):  # temp files of a run killed mid-write
        stale.unlink(missing_ok=True)
    shards = [list(plan[i : i + shard_size]) for i in range(0, len(plan), shard_size)]
    for extra in out_dir.glob("shard-*.pt"):  # shards of an earlier, longer plan
        number = extra.stem.removeprefix("shard-")
        if number.isdigit() and int(number) >= len(shards):
            extra.unlink()
    device = torch.device(device)
    reused = 0
    bar = tqdm(total=len(plan), desc="cache", unit="clip", disable=not progress)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="cache-decode") if workers > 0 else None
    try:
        for i, clips in enumerate(shards):
            key = _shard_plan_key(clips, fingerprint)
            path = out_dir / shard_name(i)
            if path.is_file():
                old = _load_shard(path, mmap=True)
                if old is not None and old.get("plan") == key:
                    reused += 1
                    bar.update(len(clips))
                    continue
            shard = _encode_shard(clips, codec, visual, read_audio, read_frames, batch_size, window_s, device, bar,
                                  pool)
            shard.update(plan=key, format=FORMAT)
            atomic_torch_save(path, shard)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    index, rejected = rebuild_index(out_dir, len(shards), {c.clip: c.path for c in plan})
    meta = {
        "format": FORMAT,
        "sample_rate": int(codec.sample_rate),
        "hop_length": int(codec.hop_length),
        "frame_rate": float(codec.frame_rate),
        "n_codebooks": int(codec.n_codebooks),
        "codebook_size": int(codec.codebook_size),
        "codebook_dim": int(codec.codebook_dim),
        "visual_dim": int(visual.dim),
        "feature_rate": float(visual.frame_rate),
        "window_s": float(window_s),
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return {
        "clips": int(len(index)),
        "rejected": int(len(rejected)),
        "shards": len(shards),
        "shards_reused": reused,
        "by_split": {s: int((index["split"] == s).sum()) for s in ("train", "val", "test")},
    }


def rebuild_index(out_dir: str | Path, n_shards: int, paths: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``index.csv`` and ``rejected.csv`` from the shards on disk (the shards are the source of truth for
    what is cached; ``paths`` maps each planned clip to its source video)."""
    out_dir = Path(out_dir)
    rows, rejected = [], []
    for i in range(n_shards):
        path = out_dir / shard_name(i)
        blob = _load_shard(path, mmap=True)
        if blob is None:
            raise CacheError(f"{path}: missing or unreadable shard after caching")
        for clip, codes, feats, split, start in zip(
            blob["clips"], blob["codes"], blob["feats"], blob["splits"], blob["start_sec"]
        ):
            rows.append({"clip": clip, "split": split, "shard": i, "n_frames": int(codes.shape[1]),
                         "n_feats": int(feats.shape[0]), "start_sec": None if start < 0 else start,
                         "path": paths[clip]})
        rejected.extend({"clip": c, "split": s, "reason": r} for c, s, r in blob["rejected"])
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    rej = pd.DataFrame(rejected, columns=["clip", "split", "reason"])
    write_table(out_dir / "index.csv", index)
    atomic_write_csv(out_dir / "rejected.csv", rej)
    return index, rej


def read_meta(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``meta.json`` (codec/visual sizes and rates, ``window_s``)."""
    path = Path(cache_dir) / "meta.json"
    if not path.is_file():
        raise CacheError(f"{path}: missing (run `vaura cache` first)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: not valid JSON ({exc})") from exc
    if "window_s" not in meta:
        raise CacheError(f"{path}: no window_s (written by an older `vaura cache`; delete the cache folder and rerun)")
    return meta


def read_index(cache_dir: str | Path) -> pd.DataFrame:
    """The cache's ``index.csv``; ``path`` comes back absolute."""
    try:
        return read_table(Path(cache_dir) / "index.csv", INDEX_COLUMNS, hint="run `vaura cache` first")
    except TableError as exc:
        raise CacheError(str(exc)) from exc


class CachedClips(torch.utils.data.Dataset):
    """``window_s`` windows ``(codes LongTensor [K, T_win], feats FloatTensor [N_win, D])`` from a cache folder.

    Train: a uniformly random start on a visual-token boundary (token ``k`` → audio frame
    ``round(k / feature_rate · frame_rate)``), drawn from ``generator`` if ``seed`` is given, else from torch's
    global RNG (which a DataLoader seeds differently per worker). Val/test: the fixed ``start_sec`` from the
    index. ``window_s`` is the cache's own (``meta.json``); ``T_win = ceil(window_s · sample_rate / hop)``
    (``Codec.n_frames``), ``N_win = window_s · feature_rate``. ``index`` holds the split's rows of ``index.csv`` in
    dataset order (``path``: the source video, absolute). Shards are memory-mapped, so a large cache does not have
    to fit in RAM. ``clips`` restricts the split to those clip ids (an ablation variant's split list; clips the
    cache rejected are simply absent).
    """

    def __init__(self, cache_dir: str | Path, split: str, seed: int | None = None,
                 clips: Collection[str] | None = None) -> None:
        cache_dir = Path(cache_dir)
        self.meta = read_meta(cache_dir)
        index = read_index(cache_dir)
        index = index[index["split"] == split].reset_index(drop=True)
        if clips is not None:
            index = index[index["clip"].isin(set(clips))].reset_index(drop=True)
        if index.empty:
            raise CacheError(f"{cache_dir / 'index.csv'}: no clips in split {split!r}"
                             + (f" among the {len(clips)} listed" if clips is not None else ""))
        self.split = split
        self.index = index
        window_s = self.window_s = float(self.meta["window_s"])
        self.frame_rate = float(self.meta["frame_rate"])
        self.feature_rate = float(self.meta["feature_rate"])
        self.t_win = window_frames(window_s, int(self.meta["sample_rate"]), int(self.meta["hop_length"]))
        self.n_win = round(window_s * self.feature_rate)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        shards = {int(s): _load_shard(cache_dir / shard_name(int(s)), mmap=True) for s in index["shard"].unique()}
        self.clips: list[str] = []
        self._codes: list[torch.Tensor] = []
        self._feats: list[torch.Tensor] = []
        self._start: list[int | None] = []  # fixed start token (val/test) or None (train)
        self._k_max: list[int] = []
        for row in index.itertuples():
            blob = shards[int(row.shard)]
            if blob is None:
                raise CacheError(f"{cache_dir / shard_name(int(row.shard))}: missing or unreadable shard")
            pos = blob["clips"].index(row.clip)
            codes, feats = blob["codes"][pos], blob["feats"][pos]
            fixed = None if split == "train" or pd.isna(row.start_sec) else round(float(row.start_sec) * self.feature_rate)
            k_max = feats.shape[0] - self.n_win
            while k_max >= 0 and audio_frame_of_token(k_max, self.feature_rate, self.frame_rate) + self.t_win > codes.shape[1]:
                k_max -= 1
            if k_max < 0 or (fixed is not None and fixed > k_max):
                raise CacheError(f"{cache_dir}: clip {row.clip!r} cannot hold a {window_s} s window at its start")
            self.clips.append(row.clip)
            self._codes.append(codes)
            self._feats.append(feats)
            self._start.append(fixed)
            self._k_max.append(k_max)

    def __len__(self) -> int:
        return len(self.clips)

    def start_token(self, i: int) -> int:
        """The window's first visual token: fixed for val/test, freshly drawn for train."""
        if self._start[i] is not None:
            return self._start[i]
        return int(torch.randint(0, self._k_max[i] + 1, (1,), generator=self.generator))

    def window(self, i: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The window of clip ``i`` starting at visual token ``k``."""
        a0 = audio_frame_of_token(k, self.feature_rate, self.frame_rate)
        codes = self._codes[i][:, a0 : a0 + self.t_win].long()
        feats = self._feats[i][k : k + self.n_win].float()
        return codes, feats

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.window(i, self.start_token(i))
