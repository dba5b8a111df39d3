import random

import numpy as np
import pytest
import torch

from vaura.train.checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint


def _draws(gen: torch.Generator) -> list:
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            torch.rand(3, generator=gen).tolist(), np.random.randn(1).tolist()]


def test_rng_round_trip_through_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(1)  # leaves a cached gaussian in numpy's legacy state
    save_checkpoint(tmp_path / "c.pt", {"rng": [capture_rng(gen)]})
    expected = _draws(gen)
    torch.manual_seed(99), np.random.seed(99), random.seed(99), gen.manual_seed(99)
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"][0], gen)
    assert _draws(gen) == expected


def test_missing_corrupt_and_foreign_files_raise_typed_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a vaura training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


class Thing:
    """Any non-tensor object: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": "vaura-train-v1", "x": Thing()}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(tmp_path / "obj.pt")
