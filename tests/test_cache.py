"""The token/feature cache: shard contents, rejection of bad clips, resume (a real SIGKILL), windows."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from curate_helpers import FakeCodec, FakeVisual, write_clip
from vaura import media
from vaura.cache import CacheError, CachedClips, ClipSpec, build_cache, plan_from_splits, shard_name

REPO = Path(__file__).resolve().parents[1]


def read_audio_800(path: str) -> np.ndarray:
    from vaura.media import read_audio

    return read_audio(path, FakeCodec.sample_rate)


def read_frames_64(path: str) -> np.ndarray:
    from vaura.media import read_video

    return read_video(path, fps=25.0, short_side=64, crop=None)


def micro_clips(root: Path, n: int = 4, duration_s: float = 3.2) -> list[ClipSpec]:
    plan = []
    for i in range(n):
        path = root / f"c{i}.mp4"
        write_clip(path, seed=i, duration_s=duration_s)
        split = "train" if i < n - 1 else "val"
        plan.append(ClipSpec(f"c{i}", str(path), split, None if split == "train" else 0.32))
    return plan


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_cache_holds_whole_clip_codes_and_fp16_features_and_records_bad_clips(tmp_path):
    plan = micro_clips(tmp_path, n=3)
    (tmp_path / "bad.mp4").write_bytes(b"\x00not a video")
    write_clip(tmp_path / "short.mp4", seed=9, duration_s=1.6)
    plan.insert(1, ClipSpec("bad", str(tmp_path / "bad.mp4"), "train"))
    plan.insert(2, ClipSpec("short", str(tmp_path / "short.mp4"), "train"))
    out = tmp_path / "cache"
    summary = build_cache(plan, out, FakeCodec(), FakeVisual(), read_audio_800, read_frames_64, shard_size=2,
                          batch_size=2, workers=2, window_s=2.56, progress=False)
    assert summary["clips"] == 3 and summary["rejected"] == 2 and summary["shards"] == 3
    rejected = pd.read_csv(out / "rejected.csv").set_index("clip")
    assert "bad.mp4" in rejected.loc["bad", "reason"] and "shorter than one window" in rejected.loc["short", "reason"]
    index = pd.read_csv(out / "index.csv")
    assert list(index.columns) == ["clip", "split", "shard", "n_frames", "n_feats", "start_sec", "path"]
    # the source video travels forward, relative to the cache folder (a moved data folder stays valid)
    assert list(index["path"]) == ["../c0.mp4", "../c1.mp4", "../c2.mp4"]
    assert list(index["clip"]) == ["c0", "c1", "c2"] and list(index["shard"]) == [0, 1, 2]
    assert index["start_sec"].isna().tolist() == [True, True, False] and index["start_sec"].iloc[2] == 0.32
    for row in index.itertuples():
        blob = load(out / shard_name(row.shard))
        pos = blob["clips"].index(row.clip)
        codes, feats = blob["codes"][pos], blob["feats"][pos]
        assert codes.dtype == torch.int16 and feats.dtype == torch.float16
        audio = torch.from_numpy(read_audio_800(plan[[c.clip for c in plan].index(row.clip)].path))
        expected = FakeCodec().encode(audio[None, None])[0]
        assert torch.equal(codes.long(), expected)  # whole clip: 3.2 s at 25 frames/s
        assert codes.shape == (2, 80) and feats.shape == (40, FakeVisual.dim)  # 80 frames -> 5 segments -> 40
        assert (row.n_frames, row.n_feats) == (80, 40)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["frame_rate"] == 25.0 and meta["feature_rate"] == 12.5 and meta["visual_dim"] == FakeVisual.dim
    assert (meta["n_codebooks"], meta["codebook_size"], meta["hop_length"]) == (2, 16, 32)
    assert meta["window_s"] == 2.56


def test_rerun_reuses_complete_shards_and_recomputes_missing_or_foreign_ones(tmp_path):
    plan = micro_clips(tmp_path, n=3)
    out = tmp_path / "cache"
    args = (plan, out, FakeCodec(), FakeVisual(), read_audio_800, read_frames_64)
    build_cache(*args, shard_size=1, window_s=2.56, progress=False, fingerprint="enc-A")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.pt")}
    reference = load(out / shard_name(1))
    (out / shard_name(1)).unlink()
    (out / shard_name(2)).write_bytes(b"half-written garbage")
    summary = build_cache(*args, shard_size=1, window_s=2.56, progress=False, fingerprint="enc-A")
    assert summary["shards_reused"] == 1
    p0 = out / shard_name(0)
    assert (p0.stat().st_ino, p0.stat().st_mtime_ns) == before[shard_name(0)]
    again = load(out / shard_name(1))
    assert all(torch.equal(a, b) for a, b in zip(again["codes"], reference["codes"]))
    summary = build_cache(*args, shard_size=1, window_s=2.56, progress=False, fingerprint="enc-B")  # other encoder weights
    assert summary["shards_reused"] == 0


def test_a_re_encoded_source_file_invalidates_only_its_shard(tmp_path):
    plan = micro_clips(tmp_path, n=2)
    out = tmp_path / "cache"
    args = (plan, out, FakeCodec(), FakeVisual(), read_audio_800, read_frames_64)
    build_cache(*args, shard_size=1, window_s=2.56, progress=False)
    st = os.stat(plan[0].path)
    os.utime(plan[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new time (a fresh clone)
    with open(plan[1].path, "ab") as fh:  # as if preprocess rewrote it differently
        fh.write(b"\0")
    summary = build_cache(*args, shard_size=1, window_s=2.56, progress=False)
    assert summary["shards_reused"] == 1 and load(out / shard_name(1))["clips"] == ["c1"]


def test_a_shorter_plan_drops_the_shards_it_no_longer_has(tmp_path):
    plan = micro_clips(tmp_path, n=3)
    out = tmp_path / "cache"
    build_cache(plan, out, FakeCodec(), FakeVisual(), read_audio_800, read_frames_64, shard_size=1, window_s=2.56, progress=False)
    build_cache(plan[:2], out, FakeCodec(), FakeVisual(), read_audio_800, read_frames_64, shard_size=1,
                window_s=2.56, progress=False)
    assert sorted(p.name for p in out.glob("shard-*.pt")) == [shard_name(0), shard_name(1)]
    assert list(pd.read_csv(out / "index.csv")["clip"]) == ["c0", "c1"]


def test_plan_rejects_duplicate_clips_and_eval_rows_without_a_window():
    train = pd.DataFrame({"clip": ["a", "b"], "path": ["/x/a.mp4", "/x/b.mp4"]})
    with pytest.raises(CacheError, match="more than once"):
        plan_from_splits({"train": train, "val": train.assign(start_sec=0.0)})
    with pytest.raises(CacheError, match="start_sec"):
        plan_from_splits({"val": train})
    test = pd.DataFrame({"clip": ["c"], "path": ["/x/c.mp4"], "start_sec": [0.64]})
    plan = plan_from_splits({"test": test, "train": train})
    assert [(c.clip, c.split, c.start_sec) for c in plan] == [("a", "train", None), ("b", "train", None),
                                                              ("c", "test", 0.64)]


class IndexCodec:
    """Codes spell the frame index (t = c0 + 16·c1) at a non-integer frame rate (1000 / 37 ≈ 27.03 Hz)."""

    sample_rate, hop_length = 1000, 37
    frame_rate = sample_rate / hop_length
    n_codebooks, codebook_size, codebook_dim = 2, 16, 4

    def encode(self, wav):
        t = torch.arange(math.ceil(wav.shape[-1] / self.hop_length))
        return torch.stack([t % 16, t // 16])[None].repeat(wav.shape[0], 1, 1)


class IndexVisual:
    """Feature 0 of token k is k."""

    dim, frame_rate = 3, 12.5

    def n_tokens(self, n_frames):
        return 8 * (n_frames // 16)

    def encode_many(self, clips):
        return [torch.arange(self.n_tokens(len(c)), dtype=torch.float32)[:, None].repeat(1, self.dim) for c in clips]


@pytest.fixture
def index_cache(tmp_path) -> Path:
    plan = [ClipSpec("tr", "tr", "train"), ClipSpec("va", "va", "val", 0.96)]
    out = tmp_path / "cache"
    build_cache(plan, out, IndexCodec(), IndexVisual(), lambda p: np.zeros(5000, np.float32),
                lambda p: np.zeros((125, 8, 8, 3), np.uint8), window_s=2.56, progress=False)
    return out


def test_train_windows_start_on_token_boundaries_with_aligned_audio(index_cache):
    ds = CachedClips(index_cache, "train", seed=0)
    fr = IndexCodec.frame_rate
    t_win = math.ceil(2560 / 37)
    starts = set()
    for _ in range(300):
        codes, feats = ds[0]
        assert codes.dtype == torch.int64 and feats.dtype == torch.float32
        assert codes.shape == (2, t_win) and feats.shape == (32, 3)
        k = int(feats[0, 0])
        frames = codes[0] + 16 * codes[1]
        assert int(frames[0]) == round(k * 0.08 * fr)
        assert torch.equal(frames, torch.arange(frames[0], frames[0] + t_win))
        starts.add(k)
    # 5 s clip: 125 frames -> 56 tokens; last start 24 (audio 136 frames holds round(24·0.08·fr) + 70 = 122)
    assert min(starts) == 0 and max(starts) == 24


def test_the_window_length_is_the_one_the_cache_recorded(tmp_path):
    """One window key: build_cache records window_s in meta.json and every reader takes it from there."""
    out = tmp_path / "cache"
    build_cache([ClipSpec("va", "va", "val", 0.96)], out, IndexCodec(), IndexVisual(),
                lambda p: np.zeros(5000, np.float32), lambda p: np.zeros((125, 8, 8, 3), np.uint8), window_s=1.28,
                progress=False)
    assert json.loads((out / "meta.json").read_text())["window_s"] == 1.28
    codes, feats = CachedClips(out, "val")[0]
    assert feats.shape == (16, 3) and codes.shape == (2, math.ceil(1280 / 37))  # 1.28 s, not 2.56 s
    meta = json.loads((out / "meta.json").read_text())
    del meta["window_s"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="no window_s"):
        CachedClips(out, "val")


def test_val_windows_use_the_fixed_start_and_seeded_train_windows_repeat(index_cache):
    val = CachedClips(index_cache, "val")
    codes, feats = val[0]
    assert int(feats[0, 0]) == 12 and int(codes[0, 0] + 16 * codes[1, 0]) == round(0.96 * IndexCodec.frame_rate)
    assert torch.equal(val[0][0], codes)
    a = [int(CachedClips(index_cache, "train", seed=3)[0][1][0, 0]) for _ in range(2)]
    assert a[0] == a[1]
    with pytest.raises(CacheError, match="no clips in split 'test'"):
        CachedClips(index_cache, "test")


# --- the stage, through the real codec / visual loaders -------------------------------------------------------

def write_stage_inputs(root: Path, clips: list[Path], shard_size: int, tracking_db: Path) -> None:
    """A scores table over copies of ``clips``, a tiny offline DAC and Motionformer stand-in, and params.yaml.

    The clips are copied, not re-rendered: both runs read the very same files.
    """
    from vaura.codec.codec import _new_dac, offline_checkpoint
    from vaura.tables import write_table
    from vaura.visual import MotionFormer, MotionFormerSize
    from vaura.visual.encoder import standin_payload

    data = root / "data"
    (data / "clips").mkdir(parents=True)
    rows = []
    for k, src in enumerate(clips):
        shutil.copy2(src, data / "clips" / src.name)
        split = "train" if k < len(clips) - 2 else "val" if k == len(clips) - 2 else "test"
        rows.append({"clip": src.stem, "path": str(data / "clips" / src.name), "split": split, "score": 0.5,
                     "duration_s": media.probe(src).duration_s})
    write_table(data / "scores" / "scores.csv", pd.DataFrame(rows))  # the cache stage reads every scored clip
    torch.manual_seed(0)
    kwargs = dict(encoder_dim=4, encoder_rates=[2, 4, 8], decoder_dim=8, decoder_rates=[8, 4, 2], n_codebooks=2,
                  codebook_size=16, codebook_dim=4, sample_rate=8000)
    torch.save(offline_checkpoint(_new_dac(kwargs), kwargs, 2), _mkdir(data / "codec") / "codec.pt")
    size = MotionFormerSize(dim=16, depth=1, heads=2, mlp_ratio=2, img_size=32, patch=16, tubelet=2, frames=16)
    torch.save(standin_payload(MotionFormer(size)), _mkdir(data / "avclip") / "visual.pt")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cache"].update(shard_size=shard_size, batch_size=1, torch_threads=0)
    params["filter"].update(window_s=2.56)
    params["codec"].update(kind="offline", n_quantizers=2)
    params["visual"].update(kind="offline", dim=16, depth=1, heads=2, mlp_ratio=2, crop=32, short_side=32, patch=16,
                            tubelet=2, frames_per_segment=16, batch_size=8, device="cpu")
    params["tracking"].update(uri=f"sqlite:///{tracking_db}", artifact_root=str(root / "art"), experiment="t",
                              system_metrics=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def shards_of(cache: Path) -> list[dict]:
    return [load(p) for p in sorted(cache.glob("shard-*.pt"))]


def assert_same_shards(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["clips"] == y["clips"] and x["plan"] == y["plan"]
        assert all(torch.equal(c, d) for c, d in zip(x["codes"], y["codes"]))
        assert all(torch.equal(c, d) for c, d in zip(x["feats"], y["feats"]))


@pytest.mark.slow
def test_cache_stage_resumes_after_sigkill_without_recomputing_finished_shards(tmp_path, monkeypatch):
    from vaura.cli import main

    n = 6
    ref_root, run_root = tmp_path / "ref", tmp_path / "run"
    clips = []
    for i in range(n):
        write_clip(tmp_path / f"c{i}.mp4", seed=i, duration_s=2.8)
        clips.append(tmp_path / f"c{i}.mp4")
    for root in (ref_root, run_root):
        write_stage_inputs(root, clips, shard_size=1, tracking_db=tmp_path / "mlruns.db")
    monkeypatch.chdir(ref_root)
    assert main(["cache", "--params", "params.yaml", "--no-progress"]) == 0  # the uninterrupted reference
    reference = shards_of(ref_root / "data" / "cache")
    assert len(reference) == n and sum(len(s["clips"]) for s in reference) == n

    cache = run_root / "data" / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vaura.cli", "cache", "--params", "params.yaml", "--no-progress"],
                            cwd=run_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (cache / shard_name(0)).exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard written within 120 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(cache.glob("shard-*.pt"))
    assert 1 <= len(done) < n and not (cache / "index.csv").exists(), "the kill came after the run finished"
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}

    monkeypatch.chdir(run_root)
    assert main(["cache", "--params", "params.yaml", "--no-progress"]) == 0
    for name, stamp in stamps.items():
        p = cache / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, f"{name} was recomputed"
    assert_same_shards(shards_of(cache), reference)
    assert not list(cache.glob(".*tmp*"))
    pd.testing.assert_frame_equal(pd.read_csv(cache / "index.csv"), pd.read_csv(ref_root / "data/cache/index.csv"))
    meta = json.loads((cache / "meta.json").read_text())
    assert (meta["sample_rate"], meta["hop_length"], meta["visual_dim"], meta["feature_rate"]) == (8000, 64, 16, 12.5)
    val = CachedClips(cache, "val")
    codes, feats = val[0]
    assert codes.shape == (2, math.ceil(2.56 * 8000 / 64)) and feats.shape == (32, 16)
