"""vaura.io: atomic writes give files the mode a plain open() would; outputs never destroy inputs."""
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from vaura.io import OutputPathError, atomic_write_text, check_output_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int, expected: int) -> None:
    from vaura.media import write_video

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_video(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8), 25.0)  # a user's video, same rule
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == expected and _mode(tmp_path / "v.mp4") == expected


def test_atomic_rewrite_keeps_an_existing_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    path.write_text("{}")
    path.chmod(0o640)
    atomic_write_text(path, '{"a": 1}')
    assert _mode(path) == 0o640 and path.read_text() == '{"a": 1}'


def test_output_may_not_be_an_input_or_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    src.write_bytes(b"video")
    (tmp_path / "link.mp4").symlink_to(src)
    os.link(src, tmp_path / "hard.mp4")
    for out in (src, tmp_path / "link.mp4", tmp_path / "hard.mp4"):
        with pytest.raises(OutputPathError, match="is the input"):
            check_output_file(out, src)
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path, src)
    check_output_file(tmp_path / "new.mp4", src)  # a new file is fine
    other = tmp_path / "other.mp4"
    other.write_bytes(b"video")  # same bytes, different file: overwriting it is the user's call
    check_output_file(other, src)


def test_atomic_torch_save_gives_the_same_bytes_for_the_same_object(tmp_path: Path) -> None:
    """Given a path, torch.save names the zip's root folder after the file, and atomic writes go through a random
    temp name: checkpoints, cache shards and stand-ins then differed byte-wise between two identical runs."""
    import torch

    from vaura.io import atomic_torch_save

    obj = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    atomic_torch_save(tmp_path / "a.pt", obj)
    atomic_torch_save(tmp_path / "b.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], obj["w"])
