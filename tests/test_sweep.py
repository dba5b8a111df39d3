"""The CFG sweep: batched generation over (clip × sample) per γ, WAV layout, index, resume, test-set windows."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from vaura.generate.sweep import SweepConfig, SweepError, TestItem, TestSetConfig, gamma_dir, run_sweep, select_windows

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
    return [TestItem(f"clip{i}", 0.08 * i, torch.randint(0, CARD, (K, T)), torch.randn(8, 4), 0.64,
                     f"/videos/clip{i}.mp4") for i in range(n)]


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
    assert list(on_disk.columns) == ["test_set", "cfg_scale", "clip", "sample", "start_sec", "window_s", "path", "video",
                                     "sample_rate"]
    assert len(on_disk) == 15
    # the window and the source video travel forward (video relative to the index, as every clip table)
    assert set(on_disk["window_s"]) == {0.64}
    assert os.path.abspath(tmp_path / on_disk.loc[on_disk["clip"] == "clip1", "video"].iloc[0]) == "/videos/clip1.mp4"
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


def _write_cache(root, clips: dict[str, tuple[str, float]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A tiny cache in the documented on-disk format: 16 kHz / hop 320 (50 Hz codes), 12.5 Hz features, 4 s clips,
    2.56 s windows; each clip's source video is ``<root>/../clips/<clip>.mp4``."""
    import json

    from vaura.cache import FORMAT

    root.mkdir(parents=True, exist_ok=True)
    data = {c: (torch.randint(0, CARD, (K, 200), dtype=torch.int16), torch.randn(50, 4).half()) for c in clips}
    torch.save({"format": FORMAT, "clips": list(clips), "codes": [d[0] for d in data.values()],
                "feats": [d[1] for d in data.values()], "splits": [s for s, _ in clips.values()],
                "start_sec": [st for _, st in clips.values()], "rejected": [], "plan": "x"}, root / "shard-00000.pt")
    pd.DataFrame([{"clip": c, "split": s, "shard": 0, "n_frames": 200, "n_feats": 50,
                   "start_sec": None if st < 0 else st, "path": f"../clips/{c}.mp4"}
                  for c, (s, st) in clips.items()]).to_csv(root / "index.csv", index=False)
    (root / "meta.json").write_text(json.dumps({
        "format": FORMAT, "sample_rate": 16000, "hop_length": 320, "frame_rate": 50.0, "n_codebooks": K,
        "codebook_size": CARD, "codebook_dim": 4, "visual_dim": 4, "feature_rate": 12.5, "window_s": 2.56}))
    return data


def test_load_test_items_takes_fixed_windows_from_the_cache(tmp_path) -> None:
    from vaura.generate.sweep import load_test_items

    data = _write_cache(tmp_path / "cache", {"tr": ("train", -1.0), "a": ("test", 0.0), "b": ("test", 0.8),
                                             "c": ("test", 1.2)})
    items = load_test_items(tmp_path / "cache", TestSetConfig(max_clips=2), "syn")
    assert [it.clip for it in items] == ["a", "b"]
    b = items[1]
    assert b.codes.shape == (K, 128) and b.feats.shape == (32, 4)  # 2.56 s: ceil(40960 / 320) frames, 32 tokens
    # start 0.8 s = visual token 10 → audio frame round(10 · 0.08 · 50) = 40
    assert torch.equal(b.codes, data["b"][0][:, 40:168].long())
    assert torch.allclose(b.feats, data["b"][1][10:42].float())
    assert b.window_s == 2.56 and b.video == os.path.abspath(tmp_path / "clips" / "b.mp4")
    table = tmp_path / "t.csv"
    pd.DataFrame({"file": ["c.mp4"], "start_sec": [1.2]}).to_csv(table, index=False)
    assert [it.clip for it in load_test_items(tmp_path / "cache", TestSetConfig(windows=str(table)), "s")] == ["c"]
    with pytest.raises(SweepError, match="no clips"):
        load_test_items(tmp_path / "cache", TestSetConfig(cache_split="val"), "v")


def _clicks(times, sr=SR, dur=2.56, seed=0):
    rng = np.random.default_rng(seed)
    audio = 0.002 * rng.standard_normal(int(dur * sr))
    for t in times:
        i = int(t * sr)
        n = min(int(0.05 * sr), audio.size - i)
        audio[i : i + n] += 0.8 * np.exp(-np.arange(n) / (0.008 * sr)) * rng.standard_normal(n)
    return audio.astype(np.float32)


def test_evaluate_sweep_scores_groups_against_ground_truth(tmp_path) -> None:
    from vaura.eval.evaluate import EvaluateConfig, Models, evaluate_sweep, flat_metrics, metrics_json

    events = pd.DataFrame({"clip": ["a", "a", "a", "b", "b"], "time_s": [0.5, 1.5, 3.9, 1.3, 2.0],
                           "class": ["x"] * 5})
    starts = {"a": 0.0, "b": 0.8}  # b's window [0.8, 3.36) holds its events at 0.5 s and 1.2 s
    truth = {"a": [0.5, 1.5], "b": [0.5, 1.2]}
    rows = []
    for clip in ("a", "b"):
        for k in range(2):
            good = tmp_path / "sweep" / "syn" / "g3" / f"{clip}__s{k}.wav"
            bad = tmp_path / "sweep" / "syn" / "g0" / f"{clip}__s{k}.wav"
            for p, times in ((good, truth[clip]), (bad, [0.2, 0.9, 2.4])):
                p.parent.mkdir(parents=True, exist_ok=True)
                sf.write(p, _clicks(times, seed=k), SR, subtype="FLOAT")
            rows += [{"test_set": "syn", "cfg_scale": g, "clip": clip, "sample": k, "start_sec": starts[clip],
                      "window_s": 2.56, "path": p.relative_to(tmp_path / "sweep").as_posix(),
                      "video": f"../videos/{clip}.mp4", "sample_rate": SR}
                     for g, p in ((3.0, good), (0.0, bad))]
    pd.DataFrame(rows).to_csv(tmp_path / "sweep" / "index.csv", index=False)

    def read_audio(path, sample_rate, start_sec, duration):
        # the reference comes from the video the sweep index names, over the window it records
        clip = os.path.basename(path).removesuffix(".mp4")
        assert path == os.path.abspath(tmp_path / "videos" / f"{clip}.mp4")
        assert start_sec == starts[clip] and sample_rate == SR and duration == 2.56
        return _clicks(truth[clip], seed=0)

    def read_video(*_a, **_k):
        raise AssertionError("frames must not be decoded when no frame-based metric has a model")

    cfg = EvaluateConfig(fad_backbone="logmel", passt_weights="absent.pt", n_artifact_clips=1)
    groups = evaluate_sweep(tmp_path / "sweep", events, cfg,
                            Models(sync_reason="Synchformer checkpoint not found at s.pt", ib_reason="no IB at i.pt",
                                   passt_reason="PaSST weights not found at absent.pt"),
                            root=tmp_path, read_audio=read_audio, read_video=read_video)
    by = {g.name: g for g in groups}
    assert list(by) == ["reference", "g0", "g3"]
    assert by["g3"].n_clips == 2 and by["g3"].n_samples == 4 and by["g3"].cfg_scale == 3.0
    assert flat_metrics(by["g3"])["onset_f1"] == pytest.approx(1.0)
    assert flat_metrics(by["g0"])["onset_f1"] < 0.5
    assert flat_metrics(by["reference"])["onset_f1"] == pytest.approx(1.0)
    assert flat_metrics(by["g3"])["fad"] < flat_metrics(by["g0"])["fad"]
    doc = metrics_json(groups, {"model.conditioning": "fusion"})
    assert doc["syn"]["reference"]["fad"]["status"] == "skipped"
    assert doc["syn"]["g3"]["sync"] == {"status": "skipped", "backbone": "synchformer",
                                        "reason": "Synchformer checkpoint not found at s.pt"}
    assert doc["syn"]["g3"]["ib"]["reason"] == "no IB at i.pt"
    assert "absent.pt" in doc["syn"]["g0"]["kld"]["reason"]
    # one clip to listen to, the same in every group, each group's own first sample of it
    (clip,) = {c for g in groups for c, _, _ in g.examples}
    assert all(len(g.examples) == 1 for g in groups)
    first = sf.read(tmp_path / "sweep" / "syn" / "g3" / f"{clip}__s0.wav", dtype="float32")[0]
    assert np.allclose(by["g3"].examples[0][2][: len(first)], first[: int(2.56 * SR)], atol=1e-6)


def test_informative_clips_prefer_audible_clips_with_events() -> None:
    from vaura.eval.evaluate import informative_clips

    quiet = 1e-4 * np.ones(SR, np.float32)  # -80 dBFS: near-silent
    ref = {"silent": quiet, "one": _clicks([0.5]), "three": _clicks([0.3, 1.0, 2.0]), "loud_none": 0.3 * np.ones(SR)}
    truth = {"silent": np.array([0.5, 1.0, 1.5, 2.0]), "one": np.array([0.5]), "three": np.array([0.3, 1.0, 2.0]),
             "loud_none": np.array([])}
    assert informative_clips(ref, truth, 2) == ["three", "one"]
    assert informative_clips(ref, truth, 4)[-1] == "silent"  # near-silent last even with the most events
    assert informative_clips(ref, None, 1) == ["loud_none"]  # without ground truth: the loudest


def test_sweep_with_a_real_tiny_decoder_checkpoint(tmp_path) -> None:
    """load_trained_model rebuilds the decoder from the checkpoint's own config; the real KV-cache sampler runs."""
    from vaura.config import to_dict
    from vaura.generate.sweep import load_test_items
    from vaura.model import VAURA
    from vaura.model.config import named_size
    from vaura.train.checkpoint import CheckpointError, load_trained_model, save_checkpoint

    _write_cache(tmp_path / "cache", {"a": ("test", 0.0), "b": ("test", 0.4)})
    dims = {"n_codebooks": K, "codebook_size": CARD, "codebook_dim": 4, "audio_frame_rate": 50.0,
            "visual_dim": 4, "visual_frame_rate": 12.5}
    cfg = named_size("tiny")
    torch.manual_seed(0)
    model = VAURA(cfg, **dims)
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "model_config": to_dict(cfg),
                                           "model_dims": dims, "step": 1})
    loaded = load_trained_model(tmp_path / "best.pt")
    assert not loaded.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    items = load_test_items(tmp_path / "cache", TestSetConfig(), "syn")
    index = run_sweep(loaded, FakeCodec(), {"syn": items}, SweepConfig(cfg_scales=[0.0, 3.0], samples_per_clip=2,
                                                                       batch_size=4, reconstructions=False),
                      {"temperature": 1.0, "top_k": 4, "top_p": 0.0}, tmp_path / "sweep")
    assert len(index) == 2 * 2 * 2
    wav, _ = sf.read(tmp_path / "sweep" / "syn" / "g3" / "b__s1.wav")
    assert wav.shape == (128 * HOP,)
    bad = model.state_dict()
    bad.pop(next(iter(bad)))
    save_checkpoint(tmp_path / "bad.pt", {"model": bad, "model_config": to_dict(cfg), "model_dims": dims})
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_trained_model(tmp_path / "bad.pt")


def test_sweep_stage_refuses_a_compiled_decode_off_cuda(tmp_path, repo_root, capsys) -> None:
    import yaml

    from vaura.cli import main

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["generation"]["decode"] = "compiled"
    params["sweep"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["sweep", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaura sweep: generation.decode=compiled")


def test_sweep_removes_the_temp_file_a_killed_run_left(tmp_path) -> None:
    """A kill inside an atomic write leaves `.NAME.xxxxxxxx.tmp.wav`; the next run deletes it (DVC would cache it)."""
    import tempfile

    folder = tmp_path / "syn" / "g3"
    folder.mkdir(parents=True)
    fd, stale = tempfile.mkstemp(prefix=".clip0__s0.wav.", suffix=".tmp.wav", dir=folder)  # atomic_path's naming
    os.close(fd)
    (folder / ".keep").write_text("not ours")
    _sweep(tmp_path, FakeGenerate())
    assert not os.path.exists(stale) and (folder / ".keep").exists()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [".keep"]
