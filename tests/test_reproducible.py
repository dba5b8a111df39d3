"""Identical params and seeds give identical bytes: the synthetic benchmark (data/raw) and preprocess's tables
(data/clips), rendered in two folders on a different number of CPUs and worker processes.

x264 picks its thread count from the CPUs the process may use and the stream depends on it; before the encoder
was pinned to one thread, the same frames encoded to different bytes depending on the CPU affinity (which other
libraries in the same process, or another machine, change), and the difference flowed into scores, features and
losses.
"""
import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from vaura.data.preprocess import PreprocessConfig, preprocess_folder
from vaura.data.synthetic import SyntheticConfig, generate_benchmark
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


@pytest.mark.skipif(len(ALL_CPUS) < 2, reason="needs two CPUs to differ from one")
def test_benchmark_and_preprocess_tables_are_byte_identical_in_two_folders(tmp_path: Path, monkeypatch) -> None:
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
    assert sorted(a) == sorted(b) and any(k.startswith("clips/") and k.endswith(".mp4") for k in a)
    # Not yet promised: the re-encoded clips' bytes. In about one encode in 20 a clip decoded from data/raw
    # re-encodes to a different (equally valid) stream even within one process; see docs/FAULTS.md.
    promised = [k for k in a if not (k.startswith("clips/") and k.endswith(".mp4"))]
    assert [k for k in promised if a[k] != b[k]] == []
