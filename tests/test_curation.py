"""Relevance scorers: motion-onset envelopes and score, ImageBind loading/preprocessing, scoring loop, AUC."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from curate_helpers import write_clip
from vaura.curation.motion_onset import MotionOnsetScorer, audio_onset_envelope, motion_envelope, lagged_correlation
from vaura.curation.scorer import ScoringError
from vaura.curation.scoring import ScoreConfig, build_scorer, relevance_auc, score_clips
from vaura.weights import WeightsError


def test_motion_envelope_is_mean_abs_grey_change_from_previous_frame():
    frames = np.zeros((5, 4, 4, 3), np.uint8)
    frames[3:, :2] = 90  # half the pixels brighten by 90 at frame 3 and stay
    env = motion_envelope(frames)
    np.testing.assert_allclose(env, [0, 0, 0, 45.0, 0])


def test_audio_onset_envelope_peaks_at_the_video_frame_of_each_hit():
    sr = 16000
    audio = np.zeros(sr * 2, np.float32)
    for t in (0.4, 1.2):
        i = int(t * sr)
        audio[i : i + 800] = np.sin(np.arange(800) * 0.3) * np.exp(-np.arange(800) / 200)
    env = audio_onset_envelope(audio, sr, n_frames=50)
    assert env.shape == (50,)
    top = sorted(np.argsort(env)[-2:])
    assert abs(top[0] - 10) <= 1 and abs(top[1] - 30) <= 1  # 0.4 s and 1.2 s at 25 fps
    assert env[:8].max() < 0.1 * env.max()


def test_sync_score_finds_small_lags_but_not_large_shifts():
    rng = np.random.default_rng(0)
    m = np.zeros(100)
    m[rng.choice(100, 8, replace=False)] = 1.0
    assert lagged_correlation(m, m, max_lag=2) == pytest.approx(1.0)
    assert lagged_correlation(m, np.roll(m, 2), max_lag=2) > 0.9  # audio 80 ms late: inside the lag window
    assert lagged_correlation(m, np.roll(m, 12), max_lag=2) < 0.5  # 0.48 s shift: outside it
    assert lagged_correlation(m, np.zeros(100), max_lag=2) == 0.0  # no onsets: no evidence


def test_motion_onset_ranks_synchronous_clips_above_shifted_ones(tmp_path):
    scorer = MotionOnsetScorer(short_side=64, max_lag_frames=2)
    sync, shifted = [], []
    for seed in range(3):
        write_clip(tmp_path / f"ok{seed}.mp4", seed)
        write_clip(tmp_path / f"sh{seed}.mp4", seed, audio_shift_s=0.5)
        sync.append(scorer.score_clip(tmp_path / f"ok{seed}.mp4"))
        shifted.append(scorer.score_clip(tmp_path / f"sh{seed}.mp4"))
    assert min(sync) > max(shifted), (sync, shifted)
    assert min(sync) > 0.6


def test_score_clips_records_bad_files_and_keeps_going(tmp_path):
    write_clip(tmp_path / "good.mp4", 1)
    (tmp_path / "bad.mp4").write_bytes(b"this is not a video")
    manifest = pd.DataFrame(
        {"clip": ["good", "bad"], "path": [str(tmp_path / "good.mp4"), str(tmp_path / "bad.mp4")],
         "split": ["train", "val"], "duration_s": [2.56, 2.56]}
    )
    scorer = build_scorer(ScoreConfig(scorer="motion-onset"))
    scores, rejected = score_clips(manifest, scorer, batch_size=2, progress=False)
    assert list(scores["clip"]) == ["good"] and scores["scorer"].iloc[0] == "motion-onset"
    assert scores["score"].iloc[0] == pytest.approx(scorer.score_clip(tmp_path / "good.mp4"))
    assert list(rejected["clip"]) == ["bad"] and "bad.mp4" in rejected["reason"].iloc[0]


def test_relevance_auc_overall_and_per_kind():
    scores = pd.DataFrame({"clip": list("abcdef"), "score": [0.9, 0.8, 0.1, 0.85, 0.2, 0.5]})
    truth = pd.DataFrame({"clip": list("abcdefg"), "relevant": [1, 1, 0, 0, 0, 1, 0],
                          "kind": ["ok", "ok", "shifted", "music", "shifted", "ok", "music"]})
    out = relevance_auc(scores, truth)
    # relevant {0.9, 0.8, 0.5} vs irrelevant {0.1, 0.85, 0.2}: 7 of 9 pairs ordered correctly
    assert out["auc"] == pytest.approx(7 / 9)
    assert out["auc_by_kind"]["shifted"] == pytest.approx(1.0)
    assert out["auc_by_kind"]["music"] == pytest.approx(1 / 3)
    assert (out["n_relevant"], out["n_irrelevant"]) == (3, 3)
    assert relevance_auc(scores, truth.assign(relevant=1))["auc"] is None  # one class: AUC undefined


# --- ImageBind ---------------------------------------------------------------------------------------------

def tiny_imagebind() -> torch.nn.Module:
    from imagebind.models.imagebind_model import ImageBindModel

    dims = {}
    for m in ("vision", "audio", "text", "depth", "thermal", "imu"):
        dims.update({f"{m}_embed_dim": 32, f"{m}_num_blocks": 1, f"{m}_num_heads": 2})
    return ImageBindModel(out_embed_dim=16, **dims)


def test_imagebind_missing_weights_say_what_to_download_and_where(tmp_path):

    cfg = ScoreConfig(scorer="imagebind", imagebind_weights="weights/imagebind_huge.pth")
    with pytest.raises(WeightsError, match=r"imagebind_huge\.pth.*weights/imagebind_huge\.pth"):
        build_scorer(cfg, root=tmp_path)
    assert not (tmp_path / ".checkpoints").exists()


def test_imagebind_weights_load_strictly(tmp_path):
    from vaura.curation.imagebind_score import load_imagebind

    torch.manual_seed(0)
    src = tiny_imagebind()
    torch.save(src.state_dict(), tmp_path / "ib.pth")
    model = load_imagebind(tmp_path / "ib.pth", build=tiny_imagebind)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    broken = dict(src.state_dict())
    broken.pop(next(iter(broken)))
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="broken.pth"):
        load_imagebind(tmp_path / "broken.pth", build=tiny_imagebind)


def test_imagebind_vision_input_samples_first_and_last_frame_of_five_2s_clips():
    from vaura.curation.imagebind_score import CLIP_MEAN, CLIP_STD, vision_input

    frames = np.zeros((64, 224, 224, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(64, dtype=np.uint8)[:, None, None] * 3  # red channel encodes the frame index
    x = vision_input(frames)
    assert x.shape == (15, 3, 2, 224, 224)
    idx = torch.round((x[:, 0, :, 112, 112] * CLIP_STD[0] + CLIP_MEAN[0]) * 255 / 3).long()
    # 2.56 s clip: 2 s windows start at 0, 0.14, 0.28, 0.42, 0.56 s -> frames [0,49], [4,53], [7,56], [11,60], [14,63]
    expected = torch.tensor([[0, 49], [4, 53], [7, 56], [11, 60], [14, 63]]).repeat_interleave(3, 0)
    assert torch.equal(idx, expected)
    with pytest.raises(ScoringError, match="frames"):
        vision_input(np.zeros((0, 224, 224, 3), np.uint8))


def test_imagebind_audio_input_is_three_normalised_fbank_clips():
    from vaura.curation.imagebind_score import audio_input

    rng = np.random.default_rng(0)
    x = audio_input((rng.standard_normal(40960) * 0.1).astype(np.float32), 16000)
    assert x.shape == (3, 1, 128, 204)
    silent = audio_input(np.zeros(40960, np.float32), 16000)
    assert not torch.allclose(x, silent)
    with pytest.raises(ValueError, match="16000"):
        audio_input(np.zeros(100, np.float32), 44100)


def test_imagebind_scorer_scores_files_in_batches_consistently(tmp_path):
    from vaura.curation.imagebind_score import ImageBindScorer

    torch.manual_seed(0)
    scorer = ImageBindScorer(tiny_imagebind().eval(), workers=2)
    write_clip(tmp_path / "a.mp4", 1)
    write_clip(tmp_path / "b.mp4", 2, audio_shift_s=0.5)
    batch = scorer.score_batch([tmp_path / "a.mp4", tmp_path / "b.mp4"])
    single = [scorer.score_clip(tmp_path / "a.mp4"), scorer.score_clip(tmp_path / "b.mp4")]
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert all(-1.0 <= s <= 1.0 for s in batch) and batch[0] != batch[1]


def test_score_stage_writes_scores_and_the_ground_truth_auc(tmp_path, monkeypatch):
    import json

    import yaml

    from vaura.cli import main
    from vaura.tables import read_table

    clips = tmp_path / "data" / "clips"
    rows, truth = [], []
    for seed in range(2):
        for kind, shift in (("ok", 0.0), ("shifted", 0.6)):
            name = f"{kind}{seed}"
            write_clip(clips / f"{name}.mp4", seed, audio_shift_s=shift)
            rows.append({"clip": name, "path": f"{name}.mp4", "split": "train", "label": "x"})
            truth.append({"clip": name, "relevant": int(kind == "ok"), "kind": kind})
    pd.DataFrame(rows).to_csv(clips / "manifest.csv", index=False)
    (tmp_path / "data" / "raw").mkdir()
    pd.DataFrame(truth).to_csv(tmp_path / "data" / "raw" / "relevance.csv", index=False)
    params = {
        "paths": {"data": "data", "reports": "reports"},
        "score": {"scorer": "motion-onset", "imagebind_weights": "weights/imagebind_huge.pth", "batch_size": 2,
                  "workers": 2, "motion_short_side": 64, "motion_max_lag_frames": 2, "motion_audio_rate": 16000},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db", "artifact_root": str(tmp_path / "art"),
                     "experiment": "test", "system_metrics": False, "system_metrics_interval_s": 1.0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["score", "--params", "params.yaml", "--no-progress"]) == 0
    assert pd.read_csv(tmp_path / "data" / "scores" / "scores.csv")["path"].iloc[0] == "../clips/ok0.mp4"
    scores = read_table(tmp_path / "data" / "scores" / "scores.csv", {"clip", "score", "duration_s"})
    assert scores["duration_s"].to_numpy() == pytest.approx([2.56] * 4, abs=0.05)  # probed: not in the manifest
    metrics = json.loads((tmp_path / "data" / "scores" / "metrics.json").read_text())
    assert metrics["auc"] == 1.0 and metrics["auc_by_kind"] == {"shifted": 1.0}
    assert (metrics["n_scored"], metrics["n_rejected"], metrics["n_relevant"]) == (4, 0, 2)
    first = {p.name: p.read_bytes() for p in (tmp_path / "data" / "scores").iterdir()}
    assert main(["score", "--params", "params.yaml", "--no-progress"]) == 0  # a re-run writes the same bytes
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "scores").iterdir()} == first


def test_motion_onset_separates_the_synthetic_benchmarks_irrelevant_clips(tmp_path):
    """On the project's own benchmark generator (swapped / shifted / music clips injected): AUC >= 0.9."""
    from vaura.data.synthetic import SyntheticConfig, generate_benchmark

    cfg = SyntheticConfig(n_train=12, n_val=0, n_test=0, duration_s=2.56, size=64, max_events=4,
                          irrelevant_fraction=0.5, workers=1)
    manifest = generate_benchmark(tmp_path, cfg, seed=7)
    manifest["path"] = [str(tmp_path / p) for p in manifest["path"]]
    scores, rejected = score_clips(manifest, build_scorer(ScoreConfig()), batch_size=4, progress=False)
    assert rejected.empty
    out = relevance_auc(scores, pd.read_csv(tmp_path / "relevance.csv", dtype={"clip": str}))
    assert out["n_irrelevant"] >= 5 and set(out["auc_by_kind"]) == {"swapped", "shifted", "music"}
    assert out["auc"] >= 0.9, out
