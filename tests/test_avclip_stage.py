"""avclip stand-in training: segment/audio alignment, labels, learning signal, and the stage end to end."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vaura.cli import main
from vaura.visual import VisualConfig, load_visual_encoder
from vaura.visual.config import AVClipConfig
from vaura.visual.probes import retrieval_metrics, token_labels
from vaura.visual.standin import ClipArrays, log_mel, sample_batch, train_avclip

VCFG = VisualConfig(dim=16, depth=1, heads=2, mlp_ratio=2, crop=32, short_side=32, batch_size=8, device="cpu")


def test_log_mel_frame_k_starts_at_k_times_10_ms():
    cfg = AVClipConfig(n_mels=16)
    audio = np.zeros(16000, np.float32)
    audio[5230] = 1.0  # 326.9 ms
    mel = log_mel(audio, cfg)
    assert mel.shape == (16, 100)
    loud = torch.nonzero(mel.amax(0) > mel.amax(0).min() + 5).flatten().tolist()
    # a frame covers [10 k, 10 k + 40) ms, so exactly the frames starting 0-30 ms before the click see it
    assert loud == [29, 30, 31, 32]


def test_sample_batch_pairs_each_video_segment_with_its_own_audio():
    n_clips, n_frames = 5, 48
    frames = np.zeros((n_clips, n_frames, 32, 32, 3), np.uint8)
    frames[:, :, 0, 0, 0] = np.arange(n_frames)  # frame index in one pixel
    frames[:, :, 0, 0, 1] = np.arange(n_clips)[:, None]  # clip index in another
    mels = torch.zeros(n_clips, 4, 4 * n_frames)
    mels[:, 0] = torch.arange(4 * n_frames) / 4.0  # mel frame k -> video time k / 4 frames
    mels[:, 1] = torch.arange(n_clips)[:, None].float()
    data = ClipArrays([f"c{i}" for i in range(n_clips)], frames, mels)
    cfg = AVClipConfig(batch_clips=3, segments_per_clip=4)
    segs, mel = sample_batch(data, VCFG, cfg, (0.0, 1.0), np.random.default_rng(0))
    assert segs.shape == (12, 3, 16, 32, 32) and mel.shape == (12, 4, 64)
    pix = ((segs + 1) * 127.5).round()
    # the marker pixel is in the top-left corner, or top-right when the segment was flipped
    start_frame = (pix[:, 0, :, 0, 0] + pix[:, 0, :, 0, -1])[:, 0]
    clip_of = (pix[:, 1, 0, 0, 0] + pix[:, 1, 0, 0, -1])
    assert torch.equal(mel[:, 0, 0], start_frame)  # audio starts where the video segment starts
    assert torch.equal(mel[:, 1, 0], clip_of)  # ...of the same clip
    assert torch.all(start_frame % 2 == 0)  # starts on token boundaries
    for c in clip_of.unique():
        starts = start_frame[clip_of == c]
        assert len(starts) == 4 and len(starts.unique()) == 4  # distinct in-clip negatives


def test_token_labels_bin_events_into_80_ms_tokens():
    events = pd.DataFrame({"clip": ["a", "a", "b", "b"], "time_s": [0.30, 0.32, 0.0, 2.59],
                           "class": ["drum", "bell", "bell", "drum"]})
    hit, cls = token_labels(events, ["a", "b", "c"], n_tokens=32, token_s=0.08)
    assert np.flatnonzero(hit[0]).tolist() == [3, 4]
    assert cls[0, 3] == 1 and cls[0, 4] == 0  # classes sorted by name: bell=0, drum=1
    assert np.flatnonzero(hit[1]).tolist() == [0]  # 2.59 s is past the last token (2.56 s)
    assert not hit[2].any() and (cls[2] == -1).all()


def _toy_clips(n_clips: int, n_frames: int, seed: int) -> ClipArrays:
    """Random impact times: a bright block appears in the video and a broadband burst in the mel at each."""
    rng = np.random.default_rng(seed)
    frames = np.full((n_clips, n_frames, 32, 32, 3), 40, np.uint8)
    mels = torch.full((n_clips, 8, 4 * n_frames), -5.0)
    for c in range(n_clips):
        for f in rng.choice(np.arange(2, n_frames - 4), size=6, replace=False):
            frames[c, f:f + 3, 8:24, 8:24] = 220
            mels[c, :, 4 * f:4 * f + 6] = 3.0
    return ClipArrays([f"t{c}" for c in range(n_clips)], frames, mels)


def test_contrastive_training_learns_segment_timing():
    """On clips whose only content is *when* impacts happen, retrieval among token-shifted segments of the same
    held-out clip must beat chance by far after a short training."""
    torch.manual_seed(0)
    cfg = AVClipConfig(n_mels=8, audio_channels=16, embed_dim=16, segments_per_clip=6, batch_clips=4, steps=60,
                       lr=3e-3)
    model, facts = train_avclip(_toy_clips(12, 64, seed=1), VCFG, cfg, seed=0, progress=False)
    assert facts["steps_done"] == 60
    metrics = retrieval_metrics(model, _toy_clips(4, 64, seed=2), VCFG, (facts["mel_mean"], facts["mel_std"]))
    assert metrics["candidates_per_clip"] == 25 and math.isclose(metrics["chance_top1"], 1 / 25)
    assert metrics["within_clip_top1"] > 5 * metrics["chance_top1"]


@pytest.fixture(scope="module")
def micro_project(tmp_path_factory) -> Path:
    """A micro synthetic benchmark laid out as acquire/preprocess leave it, plus a params file."""
    from vaura.data.synthetic import SyntheticConfig, generate_benchmark

    root = tmp_path_factory.mktemp("avclip")
    cfg = SyntheticConfig(n_train=6, n_val=3, n_test=0, duration_s=2.56, size=64, max_events=4, workers=1)
    generate_benchmark(root / "data" / "raw", cfg, seed=7)
    (root / "data" / "clips").symlink_to(root / "data" / "raw", target_is_directory=True)
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["visual"].update(dim=16, depth=1, heads=2, mlp_ratio=2, crop=32, short_side=32, device="cpu")
    params["avclip"].update(source="train", max_train_clips=6, max_val_clips=3, probe_clips=6, n_mels=16, audio_channels=16,
                            embed_dim=16, segments_per_clip=3, batch_clips=4, steps=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_stage_writes_frozen_encoder_metrics_and_cache_can_load_it(micro_project):
    root = micro_project
    assert main(["avclip", "--params", str(root / "params.yaml"), "--no-track", "--no-progress"]) == 0
    out = root / "data" / "avclip"
    payload = torch.load(out / "visual.pt", weights_only=True)
    assert payload["size"]["dim"] == 16 and payload["avclip"]["steps"] == 4
    assert payload["train_facts"]["train_clips"] == 6 and payload["train_facts"]["steps_done"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_clips"] == 6 and metrics["val_clips"] == 3 and metrics["steps_done"] == 4
    assert metrics["retrieval"]["candidates_per_clip"] == 25  # 64 frames: starts 0, 2, ..., 48
    for group in ("probe", "probe_random_init"):
        assert 0.0 <= metrics[group]["event_ap"] <= 1.0 and 0.0 < metrics[group]["event_chance_ap"] < 1.0
    assert pd.read_csv(out / "rejected.csv").empty
    params = yaml.safe_load((root / "params.yaml").read_text())
    from vaura.config import from_dict

    enc = load_visual_encoder(from_dict(VisualConfig, params["visual"]), root=root, data_dir=params["paths"]["data"])
    from vaura.media import read_video

    clip = sorted((root / "data" / "raw").glob("syn-val-*.mp4"))[0]
    feats = enc.encode(read_video(clip, fps=25, short_side=32, crop=32))
    assert feats.shape == (32, 16)  # 2.56 s -> 32 tokens at 12.5 Hz
    assert torch.allclose(enc.model.state_dict()["norm.weight"], payload["state_dict"]["norm.weight"])


def test_stage_records_undecodable_clips_and_strict_fails(micro_project, tmp_path):
    root = micro_project
    bad = root / "data" / "raw" / "syn-train-00000x.mp4"
    bad.write_bytes(b"not a video")
    manifest = pd.read_csv(root / "data" / "raw" / "manifest.csv")
    row = manifest.iloc[0].copy()
    row["clip"], row["path"] = "syn-train-00000x", bad.name
    broken = pd.concat([manifest, row.to_frame().T])
    broken.to_csv(root / "data" / "raw" / "manifest.csv", index=False)
    try:
        code = main(["avclip", "--params", str(root / "params.yaml"), "--no-track", "--no-progress", "--strict"])
        rejected = pd.read_csv(root / "data" / "avclip" / "rejected.csv")
    finally:
        manifest.to_csv(root / "data" / "raw" / "manifest.csv", index=False)
        bad.unlink()
    assert code == 1
    assert rejected["clip"].tolist() == ["syn-train-00000x"] and "syn-train-00000x.mp4" in rejected["reason"][0]


def test_stage_logs_training_curve_and_metrics_to_mlflow(micro_project, tmp_path):
    from mlflow.tracking import MlflowClient

    root = micro_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlruns.db'}", artifact_root=str(tmp_path / "art"),
                              system_metrics=False)
    params_file = root / "params_tracked.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert main(["avclip", "--params", str(params_file), "--no-progress"]) == 0
    metrics = json.loads((root / "data" / "avclip" / "metrics.json").read_text())
    client = MlflowClient(params["tracking"]["uri"])
    exp = client.get_experiment_by_name(params["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`vaura.stage` = 'avclip'")
    assert len(runs) == 1
    run = runs[0]
    logged = run.data.metrics
    assert logged["avclip/retrieval/within_clip_top1"] == pytest.approx(metrics["retrieval"]["within_clip_top1"])
    assert logged["avclip/probe/event_ap"] == pytest.approx(metrics["probe"]["event_ap"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "avclip/train_loss")] == [0]  # every 10 steps
    assert logged["avclip/stage_seconds"] >= 0 and "stage_seconds" not in metrics  # wall times: MLflow only
    assert run.data.params["avclip.steps"] == "4" and run.data.params["visual.dim"] == "16"
    assert "metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_training_in_two_folders_writes_the_same_output_bytes(micro_project, tmp_path):
    """data/avclip feeds the cache through DVC: the same params and data give the same visual.pt and metrics.json
    bytes in any folder (no wall times, no absolute paths), so nothing downstream re-runs for nothing."""
    outs = []
    for name in ("a", "b"):
        root = tmp_path / name
        shutil.copytree(micro_project / "data" / "raw", root / "data" / "raw")
        (root / "data" / "clips").symlink_to(root / "data" / "raw", target_is_directory=True)
        shutil.copy(micro_project / "params.yaml", root / "params.yaml")
        assert main(["avclip", "--params", str(root / "params.yaml"), "--no-track", "--no-progress"]) == 0
        outs.append({p.name: p.read_bytes() for p in sorted((root / "data" / "avclip").iterdir())})
    assert set(outs[0]) == {"visual.pt", "metrics.json", "rejected.csv"} and outs[0] == outs[1]


def test_ship_then_reuse_shipped_stand_in_with_provenance_checks(micro_project, tmp_path, stage_error):
    root = micro_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["avclip"]["shipped"] = str(tmp_path / "shipped.pt")
    ship_file = root / "params_ship.yaml"
    ship_file.write_text(yaml.safe_dump(params))
    assert main(["avclip", "--params", str(ship_file), "--no-track", "--no-progress", "--ship"]) == 0
    shipped = torch.load(tmp_path / "shipped.pt", weights_only=True)
    assert shipped["train_facts"]["steps_done"] == 4 and "audio.net.0.weight" in shipped["towers"]

    params["avclip"].update(source="shipped", max_val_clips=2)  # measuring differently keeps the file valid
    ship_file.write_text(yaml.safe_dump(params))
    assert main(["avclip", "--params", str(ship_file), "--no-track", "--no-progress"]) == 0
    metrics = json.loads((root / "data" / "avclip" / "metrics.json").read_text())
    assert metrics["source"] == "shipped" and metrics["val_clips"] == 2 and metrics["steps_done"] == 4
    used = torch.load(root / "data" / "avclip" / "visual.pt", weights_only=True)
    assert all(torch.equal(used["state_dict"][k], v) for k, v in shipped["state_dict"].items())

    params["avclip"]["steps"] = 5  # a training knob: the shipped weights no longer match the params
    ship_file.write_text(yaml.safe_dump(params))
    assert main(["avclip", "--params", str(ship_file), "--no-track", "--no-progress"]) == 1
    assert re.search(r"other avclip params.*'steps': \(4, 5\)", stage_error("avclip"))
    params["avclip"]["steps"], params["visual"]["depth"] = 4, 2
    ship_file.write_text(yaml.safe_dump(params))
    assert main(["avclip", "--params", str(ship_file), "--no-track", "--no-progress"]) == 1
    assert re.search(r"another visual architecture.*'depth': \(1, 2\)", stage_error("avclip"))


def test_a_corrupt_shipped_file_is_one_line_naming_it(micro_project, tmp_path, stage_error):
    root = micro_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    (tmp_path / "shipped.pt").write_bytes(b"PK\x03\x04 not a torch file")
    params["avclip"].update(source="shipped", shipped=str(tmp_path / "shipped.pt"))
    (root / "params_corrupt.yaml").write_text(yaml.safe_dump(params))
    assert main(["avclip", "--params", str(root / "params_corrupt.yaml"), "--no-track", "--no-progress"]) == 1
    assert str(tmp_path / "shipped.pt") in stage_error("avclip")


def test_repo_shipped_stand_in_matches_repo_params(repo_root):
    """The committed stand-in must be loadable with the committed offline params (else `make demo` fails)."""
    from vaura.config import load_section
    from vaura.visual.standin import load_shipped

    vcfg = load_section(VisualConfig, "visual", repo_root / "params.yaml")
    cfg = load_section(AVClipConfig, "avclip", repo_root / "params.yaml")
    assert cfg.source == "shipped"
    vcfg.device = "cpu"
    model, facts = load_shipped(repo_root / cfg.shipped, vcfg, cfg)
    assert facts["steps_done"] == cfg.steps and facts["train_clips"] == cfg.max_train_clips
    assert model.visual.size.dim == vcfg.dim and not model.training


def test_training_is_reproducible_from_the_seed():
    """DVC caches the stage output by its inputs: the same data, params and seed must give the same weights."""
    cfg = AVClipConfig(n_mels=8, audio_channels=16, embed_dim=16, segments_per_clip=3, batch_clips=2, steps=3)
    data = _toy_clips(3, 48, seed=4)
    a, _ = train_avclip(data, VCFG, cfg, seed=11, progress=False)
    b, _ = train_avclip(data, VCFG, cfg, seed=11, progress=False)
    c, _ = train_avclip(data, VCFG, cfg, seed=12, progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["visual.blocks.0.attn.qkv.weight"], sc["visual.blocks.0.attn.qkv.weight"])
