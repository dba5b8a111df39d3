"""Identical params and seeds give identical bytes: the synthetic benchmark (data/raw) and preprocess's outputs
(data/clips: the re-encoded clips and the tables), rendered in two folders on a different number of CPUs and
worker processes.

x264 picks its thread count from the CPUs the process may use and the stream depends on it; before the encoder
was pinned to one thread, the same frames encoded to different bytes depending on the CPU affinity (which other
libraries in the same process, or another machine, change), and the difference flowed into scores, features and
losses. Its macroblock-tree rate control through B-frames also read memory it had not initialised on small
frames, so about one encode in 20 of a micro-profile clip differed even in one process; vaura encodes without
B-frames (vaura/media.py).
"""
import contextlib
import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from vaura.data.preprocess import PreprocessConfig, preprocess_folder
from vaura.data.synthetic import SyntheticConfig, generate_benchmark
from vaura import media
from vaura.media import write_video

MICRO = SyntheticConfig(n_train=4, n_val=1, n_test=1, size=128, duration_s=2.56, max_events=4, workers=2)
ALL_CPUS = os.sched_getaffinity(0)


@contextlib.contextmanager
def one_cpu():
    """Run (this process and the workers it spawns) on a single CPU, as a smaller machine would."""
    os.sched_setaffinity(0, {min(ALL_CPUS)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, ALL_CPUS)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_encoding_does_not_depend_on_the_cpus(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (48, 256, 256, 3), dtype=np.uint8)
    write_video(tmp_path / "all.mp4", frames, 25.0)
    with one_cpu():
        write_video(tmp_path / "one.mp4", frames, 25.0)
    assert (tmp_path / "all.mp4").read_bytes() == (tmp_path / "one.mp4").read_bytes()


def _encodes_with_dirty_memory(frames: np.ndarray, path: Path, n: int) -> set[str]:
    """MD5s of ``n`` encodes of ``frames``, the heap refilled with other random bytes before each frame."""
    digests = set()
    for i in range(n):
        rng = np.random.default_rng(i)

        def dirty(frames=frames, rng=rng):
            for frame in frames:
                garbage = [rng.bytes(int(k)) for k in rng.integers(1_000, 20_000, 50)]  # freed again at once
                del garbage
                yield frame

        write_video(path, dirty(), 25.0)
        digests.add(hashlib.md5(path.read_bytes()).hexdigest())
    return digests


def test_the_stream_depends_on_the_frames_only_not_on_what_memory_held_before(tmp_path: Path, monkeypatch) -> None:
    """A micro-profile clip (64 px, decoded from data/raw as preprocess does) re-encoded twelve times."""
    generate_benchmark(tmp_path / "raw", dataclasses.replace(MICRO, n_train=1, n_val=0, n_test=0, size=64, workers=1),
                       seed=2)
    frames = media.read_video(next((tmp_path / "raw").glob("*.mp4")), short_side=64, crop=None)
    assert len(_encodes_with_dirty_memory(frames, tmp_path / "a.mp4", 12)) == 1
    # Control: the probe does reach x264's B-frame macroblock tree, which is why vaura encodes without B-frames.
    monkeypatch.setitem(media._H264_OPTIONS, "x264-params", "bframes=3")
    assert len(_encodes_with_dirty_memory(frames, tmp_path / "b.mp4", 12)) > 1


@pytest.mark.skipif(len(ALL_CPUS) < 2, reason="needs two CPUs to differ from one")
def test_benchmark_and_preprocess_outputs_are_byte_identical_in_two_folders(tmp_path: Path, monkeypatch) -> None:
    trees = []
    for name, workers, pinned in (("clone_a", 2, False), ("clone_b", 1, True)):
        root = tmp_path / name
        root.mkdir()
        monkeypatch.chdir(root)  # pipeline paths are relative, as in dvc.yaml
        with one_cpu() if pinned else contextlib.nullcontext():
            generate_benchmark(Path("data/raw"), dataclasses.replace(MICRO, workers=workers), seed=5)
            preprocess_folder(Path("data/raw"), Path("data/clips"),
                              PreprocessConfig(short_side=64, sample_rate=16000, workers=workers))
        trees.append(_tree(root / "data"))
    a, b = trees
    assert sorted(a) == sorted(b) and sum(k.startswith("clips/") and k.endswith(".mp4") for k in a) == 6
    assert [k for k in a if a[k] != b[k]] == []
