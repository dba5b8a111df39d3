"""Stage ``codec`` end to end on a micro synthetic benchmark: train + ship, reuse of the shipped weights with
provenance checks, the quality-gate metrics, --strict, and MLflow logging."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from vaura.cli import main
from vaura.codec import CodecConfig, load_codec
from vaura.config import load_section
from vaura.data.synthetic import SyntheticConfig, generate_benchmark

REPO = Path(__file__).resolve().parents[1]
TINY_CODEC = {
    "sample_rate": 8000, "encoder_dim": 4, "encoder_rates": [2, 4], "decoder_dim": 16, "decoder_rates": [4, 2],
    "n_codebooks": 3, "codebook_size": 16, "codebook_dim": 4,
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Micro benchmark: raw clips + ground truth, and a clips manifest pointing at them (as preprocess would)."""
    root = tmp_path_factory.mktemp("bench")
    cfg = SyntheticConfig(n_train=3, n_val=3, n_test=0, duration_s=2.56, size=64, max_events=4, workers=1)
    generate_benchmark(root / "data" / "raw", cfg, seed=7)
    (root / "data" / "clips").symlink_to(root / "data" / "raw", target_is_directory=True)  # manifest paths stay inside
    return root


def _project(bench: Path, dest: Path, **train_overrides) -> Path:
    """A project folder (params.yaml + data) whose codec section is tiny; returns its params.yaml."""
    shutil.copytree(bench / "data", dest / "data")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["seed"] = 7
    params["tracking"].update(uri=f"sqlite:///{dest / 'mlruns.db'}", artifact_root=str(dest / "mlartifacts"),
                              system_metrics=False)
    codec = params["codec"]
    codec["n_quantizers"] = 2
    codec["offline"] = dict(TINY_CODEC)
    codec["train"].update(steps=6, batch_size=2, segment_s=0.5, lr=3e-3, **train_overrides)
    codec["gate"]["max_clips"] = 8
    path = dest / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _edit(params_path: Path, section: str, **values) -> None:
    params = yaml.safe_load(params_path.read_text())
    params["codec"][section].update(values)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def _run(params_path: Path, *extra: str) -> int:
    return main(["codec", "--params", str(params_path), "--no-progress", *extra])


@pytest.fixture(scope="module")
def shipped(bench, tmp_path_factory) -> Path:
    """A project where `vaura codec --train --ship` has run once."""
    dest = tmp_path_factory.mktemp("shipped")
    params = _project(bench, dest)
    assert _run(params, "--train", "--ship", "--no-track") == 0
    return params


def test_train_and_ship_writes_weights_and_gate_metrics(shipped, bench):
    root = shipped.parent
    metrics = json.loads((root / "data" / "codec" / "metrics.json").read_text())
    assert metrics["source"] == "trained" and metrics["train_steps"] == 6 and metrics["n_train_clips"] == 3
    assert metrics["train_device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # device: auto
    assert (metrics["sample_rate"], metrics["hop_length"], metrics["n_codebooks"], metrics["codebook_size"]) == (
        8000, 8, 2, 16)
    # the gate scores the relevant VAL clips against every ground-truth event of those clips
    events = pd.read_csv(bench / "data" / "raw" / "events.csv")
    assert metrics["n_clips"] == 3
    assert metrics["n_events"] == int(events["clip"].str.startswith("syn-val-").sum())
    for key in ("f1_original", "f1_reconstructed", "precision_reconstructed", "recall_original"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["f1_gap"] == pytest.approx(metrics["f1_original"] - metrics["f1_reconstructed"])
    assert metrics["gate_pass"] == (metrics["f1_gap"] <= 0.05)
    stage_out = torch.load(root / "data" / "codec" / "codec.pt", weights_only=True)
    shipped_file = torch.load(root / "assets" / "codec_offline.pt", weights_only=True)
    assert stage_out["state_dict"].keys() == shipped_file["state_dict"].keys()
    assert all(torch.equal(stage_out["state_dict"][k], shipped_file["state_dict"][k]) for k in stage_out["state_dict"])
    codec = load_codec(load_section(CodecConfig, "codec", shipped), root=root)
    assert codec.encode(torch.zeros(1, 1, 8000)).shape == (1, 2, 1000)


def test_shipped_weights_are_reused_and_give_the_same_gate(shipped, tmp_path):
    root = shipped.parent
    trained = json.loads((root / "data" / "codec" / "metrics.json").read_text())
    assert _run(shipped, "--no-track") == 0
    again = json.loads((root / "data" / "codec" / "metrics.json").read_text())
    assert again["source"] == "shipped" and again["train_steps"] == 6
    for key in ("f1_original", "f1_reconstructed", "n_events", "log_mel_distance"):
        assert again[key] == pytest.approx(trained[key])


def test_training_in_two_folders_writes_the_same_output_bytes(shipped, tmp_path):
    """data/codec feeds cache, train and sweep through DVC: the same params and data give the same codec.pt and
    metrics.json bytes in any folder (no wall times, no absolute paths), so nothing downstream re-runs for nothing."""
    outs = []
    for name in ("a", "b"):
        params = _copy_project(shipped, tmp_path / name)
        assert _run(params, "--train", "--no-track") == 0
        outs.append({p.name: p.read_bytes() for p in sorted((params.parent / "data" / "codec").iterdir())})
    assert set(outs[0]) == {"codec.pt", "metrics.json"} and outs[0] == outs[1]


def test_training_device_is_not_provenance(shipped, tmp_path):
    """Weights trained on a GPU ship to CPU users: changing codec.train.device (or the time cap) keeps them valid."""
    params = _copy_project(shipped, tmp_path / "p")
    _edit(params, "train", device="cpu", max_minutes=1.0)
    assert _run(params, "--no-track") == 0
    metrics = json.loads((params.parent / "data" / "codec" / "metrics.json").read_text())
    assert metrics["source"] == "shipped"


def test_training_on_a_missing_gpu_is_a_config_error(shipped, tmp_path, stage_error):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: asking for it is not an error here")
    params = _copy_project(shipped, tmp_path / "p")
    _edit(params, "train", device="cuda")
    assert _run(params, "--train", "--no-track") == 1
    assert "no CUDA device" in stage_error("codec")


def _copy_project(shipped: Path, dest: Path) -> Path:
    shutil.copytree(shipped.parent, dest, ignore=shutil.ignore_patterns("mlruns.db", "mlartifacts"))
    return dest / "params.yaml"


@pytest.mark.parametrize(
    "section, values, named",
    [
        ("train", {"lr": 1e-3}, r"train\.lr: shipped 0\.003, params 0\.001"),
        ("train", {"steps": 7}, r"train\.steps"),
        ("offline", {"codebook_size": 32}, r"kwargs\.codebook_size"),
    ],
)
def test_shipped_weights_trained_with_other_params_are_refused(shipped, tmp_path, section, values, named, stage_error):
    params = _copy_project(shipped, tmp_path / "p")
    _edit(params, section, **values)
    assert _run(params, "--no-track") == 1
    line = stage_error("codec")
    assert re.search(named, line) and "vaura codec --params params.yaml --train --ship" in line


def test_shipped_weights_trained_on_other_data_are_refused(shipped, tmp_path, stage_error):
    params = _copy_project(shipped, tmp_path / "p")
    events_path = params.parent / "data" / "raw" / "events.csv"
    events = pd.read_csv(events_path)
    events.loc[events["clip"] == "syn-train-00000", "time_s"] += 0.5
    events.to_csv(events_path, index=False)
    assert _run(params, "--no-track") == 1
    assert "data_fingerprint" in stage_error("codec")


def test_missing_shipped_file_says_how_to_make_it(bench, tmp_path, stage_error):
    params = _project(bench, tmp_path)
    assert _run(params, "--no-track") == 1
    assert re.search(r"codec_offline\.pt.*--train --ship", stage_error("codec"))


def test_a_corrupt_shipped_file_is_one_line_naming_it(shipped, tmp_path, stage_error):
    """Not three chained tracebacks: the file, why it is unusable, and how to make a good one."""
    params = _copy_project(shipped, tmp_path / "p")
    (params.parent / "assets" / "codec_offline.pt").write_bytes(b"PK\x03\x04 not a torch file")
    assert _run(params, "--no-track") == 1
    line = stage_error("codec")
    assert line.startswith(str(params.parent / "assets" / "codec_offline.pt")) and "--train --ship" in line


def test_missing_ground_truth_is_one_line_naming_the_file(shipped, tmp_path, stage_error):
    params = _copy_project(shipped, tmp_path / "p")
    (params.parent / "data" / "raw" / "events.csv").unlink()
    assert _run(params, "--no-track") == 1
    assert re.search(r"events\.csv: not found", stage_error("codec"))


@pytest.mark.parametrize("max_gap", [0.0, 1.0])
def test_strict_fails_exactly_when_the_gate_fails(shipped, tmp_path, max_gap):
    params = _copy_project(shipped, tmp_path / "p")
    _edit(params, "gate", max_gap=max_gap)
    strict = _run(params, "--no-track", "--strict")
    metrics = json.loads((params.parent / "data" / "codec" / "metrics.json").read_text())
    assert metrics["gate_pass"] == (metrics["f1_gap"] <= max_gap)
    assert strict == (0 if metrics["gate_pass"] else 1)
    if max_gap == 0.0:
        assert not metrics["gate_pass"]  # the 6-step codec loses onsets: the failing case is really exercised
    assert _run(params, "--no-track") == 0


def test_stage_logs_the_gate_to_mlflow(shipped, tmp_path):
    from mlflow.tracking import MlflowClient

    params = _copy_project(shipped, tmp_path / "p")
    p = yaml.safe_load(params.read_text())
    p["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlruns.db'}", artifact_root=str(tmp_path / "art"))
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    assert _run(params) == 0
    metrics = json.loads((params.parent / "data" / "codec" / "metrics.json").read_text())
    client = MlflowClient(p["tracking"]["uri"])
    exp = client.get_experiment_by_name(p["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`vaura.stage` = 'codec'")
    assert len(runs) == 1
    logged = runs[0].data.metrics
    assert logged["f1_reconstructed"] == pytest.approx(metrics["f1_reconstructed"])
    assert logged["f1_original"] == pytest.approx(metrics["f1_original"])
    assert logged["gate_pass"] == float(metrics["gate_pass"])
    assert logged["stage_wall_s"] > 0 and "stage_wall_s" not in metrics  # wall times: MLflow, not the DVC output
    assert runs[0].data.tags["codec.source"] == "shipped"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert "metrics.json" in artifacts
    examples = {a.path for a in client.list_artifacts(runs[0].info.run_id, "examples/syn-val-00000")}
    assert {"examples/syn-val-00000/original.wav", "examples/syn-val-00000/reconstructed.wav"} <= examples


def test_pretrained_kind_measures_the_gate_without_training(bench, tmp_path, stage_error):
    import dac

    params = _project(bench, tmp_path)
    torch.manual_seed(0)
    model = dac.DAC(**TINY_CODEC)
    torch.save({"state_dict": model.state_dict(), "metadata": {"kwargs": TINY_CODEC}}, tmp_path / "dac.pth")
    p = yaml.safe_load(params.read_text())
    p["codec"].update(kind="dac44", weights="dac.pth", n_quantizers=3)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    assert _run(params, "--no-track") == 0
    metrics = json.loads((tmp_path / "data" / "codec" / "metrics.json").read_text())
    assert metrics["source"] == "pretrained" and metrics["n_codebooks"] == 3 and metrics["n_clips"] == 3
    assert not (tmp_path / "data" / "codec" / "codec.pt").exists()
    assert _run(params, "--no-track", "--train") == 1
    assert "offline stand-in only" in stage_error("codec")


def test_more_quantizers_than_trained_codebooks_fails_before_training(bench, tmp_path, stage_error):
    params = _project(bench, tmp_path)
    p = yaml.safe_load(params.read_text())
    p["codec"]["n_quantizers"] = 4
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    assert _run(params, "--no-track", "--train") == 1
    assert "n_quantizers=4" in stage_error("codec")
    assert not (tmp_path / "data" / "codec").exists()


def test_committed_stand_in_matches_the_default_params():
    """`make demo` uses assets/codec_offline.pt: editing params.yaml's codec section without re-shipping must fail
    here, not minutes into the demo. (The data fingerprint needs the generated benchmark; the demo checks it.)"""
    from vaura.codec.codec import read_offline_checkpoint
    from vaura.codec.standin import provenance, provenance_mismatches

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = load_section(CodecConfig, "codec", params)
    blob = read_offline_checkpoint(REPO / cfg.train.shipped_path)
    recorded = blob["provenance"]["data_fingerprint"]
    assert provenance_mismatches(blob, provenance(cfg, int(params["seed"]), recorded)) == []
    assert blob["n_quantizers"] >= cfg.n_quantizers


def test_a_time_capped_codec_training_is_an_error_not_an_output(shipped, tmp_path, stage_error):
    params = _copy_project(shipped, tmp_path / "p")
    _edit(params, "train", max_minutes=1e-9)
    out = params.parent / "data" / "codec"
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert _run(params, "--train", "--no-track") == 1
    assert re.search(r"max_minutes=1e-09 stopped training at step \d+ of codec.train.steps=6", stage_error("codec"))
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # nothing of the cut run was written
