"""The CFG sweep: batched generation over (clip × sample) per γ, WAV layout, index, resume, test-set windows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from vaura.eval.sweep import SweepConfig, SweepError, TestItem, TestSetConfig, gamma_dir, run_sweep, select_windows

K, T, CARD, HOP, SR = 2, 20, 16, 40, 8000


class FakeCodec:
    """Decodes codes to a ramp whose level is the mean code / CARD (so files reveal what was generated)."""

    sample_rate = SR

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        level = codes.float().mean(dim=(1, 2), keepdim=True) / CARD
        return level.expand(-1, 1, codes.shape[-1] * HOP).clone()


class FakeGenerate:
    """Follows vaura.model.sampler.generate's signature; codes depend on the generator and on γ."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def __call__(self, model, visual, n_frames, cfg_scale, generator, temperature, top_k, top_p):
        assert visual.ndim == 3 and top_k == 4
        self.calls.append((visual.shape[0], cfg_scale))
        return torch.randint(0, CARD, (visual.shape[0], K, n_frames), generator=generator)


def _items(n: int) -> list[TestItem]:
    return [TestItem(f"clip{i}", 0.08 * i, torch.randint(0, CARD, (K, T)), torch.randn(8, 4)) for i in range(n)]


def _sweep(tmp_path, gen, **kw):
    cfg = SweepConfig(cfg_scales=[0.0, 3.0], samples_per_clip=2, batch_size=4, seed=7, **kw)
    return run_sweep(torch.nn.Identity(), FakeCodec(), {"syn": _items(3)}, cfg,
                     {"temperature": 1.0, "top_k": 4, "top_p": 0.0}, tmp_path, generate=gen)


def test_sweep_writes_every_sample_once_and_indexes_it(tmp_path) -> None:
    gen = FakeGenerate()
    index = _sweep(tmp_path, gen)
    # 3 clips × 2 samples = 6 pairs → batches of 4 + 2, for each of the 2 γ
    assert gen.calls == [(4, 0.0), (2, 0.0), (4, 3.0), (2, 3.0)]
    gens = index[index["sample"] >= 0]
    assert len(gens) == 12 and len(index) == 12 + 3  # + 3 reconstructions
    assert set(gens["path"]) == {f"syn/{gamma_dir(g)}/clip{i}__s{k}.wav" for g in (0.0, 3.0) for i in range(3)
                                 for k in range(2)}
    assert gamma_dir(3.0) == "g3" and gamma_dir(0.5) == "g0.5"
    on_disk = pd.read_csv(tmp_path / "index.csv")
    assert list(on_disk.columns) == ["test_set", "cfg_scale", "clip", "sample", "start_sec", "path", "sample_rate"]
    assert len(on_disk) == 15
    wav, sr = sf.read(tmp_path / "syn" / "g3" / "clip1__s0.wav")
    assert sr == SR and wav.shape == (T * HOP,)
    assert on_disk.loc[on_disk["clip"] == "clip2", "start_sec"].iloc[0] == pytest.approx(0.16)


def test_reconstructions_decode_the_reference_codes(tmp_path) -> None:
    items = _items(2)
    cfg = SweepConfig(cfg_scales=[1.0], samples_per_clip=1, batch_size=2)
    run_sweep(torch.nn.Identity(), FakeCodec(), {"syn": items}, cfg, {"temperature": 1.0, "top_k": 4, "top_p": 0.0},
              tmp_path, generate=FakeGenerate())
    wav, _ = sf.read(tmp_path / "syn" / "recon" / "clip1.wav")
    expected = items[1].codes.float().mean().item() / CARD
    assert wav.mean() == pytest.approx(expected, abs=1e-3)  # PCM_16 quantisation


def test_sweep_resumes_and_regenerates_a_missing_batch_identically(tmp_path) -> None:
    _sweep(tmp_path, FakeGenerate())
    before = sf.read(tmp_path / "syn" / "g3" / "clip2__s1.wav")[0]
    gen = FakeGenerate()
    _sweep(tmp_path, gen)
    assert gen.calls == []  # everything exists: nothing regenerated
    (tmp_path / "syn" / "g3" / "clip2__s1.wav").unlink()
    gen = FakeGenerate()
    index = _sweep(tmp_path, gen)
    assert gen.calls == [(2, 3.0)]  # only the batch that held the missing file
    np.testing.assert_array_equal(sf.read(tmp_path / "syn" / "g3" / "clip2__s1.wav")[0], before)
    assert len(index) == 15


def test_different_gammas_get_different_samples(tmp_path) -> None:
    _sweep(tmp_path, FakeGenerate())
    a = sf.read(tmp_path / "syn" / "g0" / "clip0__s0.wav")[0]
    b = sf.read(tmp_path / "syn" / "g3" / "clip0__s0.wav")[0]
    assert not np.array_equal(a, b)


def test_select_windows_checks_the_fixed_table(tmp_path) -> None:
    index = pd.DataFrame({"clip": ["a", "b", "c"], "start_sec": [0.0, 0.4, 0.8]})
    table = tmp_path / "sparse.csv"
    pd.DataFrame({"file": ["a.mp4", "c.mp4"], "start_sec": [0.0, 0.8]}).to_csv(table, index=False)
    assert list(select_windows(index, table, "t")["clip"]) == ["a", "c"]
    pd.DataFrame({"file": ["b.mp4"], "start_sec": [1.2]}).to_csv(table, index=False)
    with pytest.raises(SweepError, match="sparse.csv"):
        select_windows(index, table, "t")
    pd.DataFrame({"file": ["zz.mp4"], "start_sec": [0.0]}).to_csv(table, index=False)
    with pytest.raises(SweepError, match="not in the cache"):
        select_windows(index, table, "t")
    with pytest.raises(SweepError, match="not found"):
        select_windows(index, tmp_path / "nope.csv", "t")


def test_test_set_config_defaults_to_the_test_split() -> None:
    assert TestSetConfig().cache_split == "test"
    assert SweepConfig().cfg_scales == [1.0, 3.0, 5.0, 6.0, 7.0, 9.0]  # paper Table IV
