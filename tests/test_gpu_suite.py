"""The GPU benchmark suite runs end to end on CPU with ``--tiny`` and writes one sane JSON (speed is not checked:
targets are read from the JSON a GPU run commits under benchmarks/results/)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_cpu_run_writes_every_figure_with_its_reference(tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(SUITE), "--tiny", "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == {} and r["skipped"] == {}
    for key in load_suite().REQUIRED_KEYS:
        assert r[key] is not None, key
    assert r["device"].startswith("cpu") and r["torch"]
    s = r["settings"]
    assert (s["size"], s["dtype"], s["cfg_scale"], s["top_k"]) == ("tiny", "fp32", 6.0, 128)
    assert not s["compiled_decode"]
    for key in ("decoder_b1_s", "e2e_b1_s", "reference_b1_s", "kv_eager_b1_s", "reference_b1_fp32_s",
                "batched_clips_per_s", "reference_batched_clips_per_s", "cache_clips_per_s", "cache_floor_clips_per_s"):
        assert 0 < r[key] < math.inf, key
    assert r["speedup_vs_reference_b1"] == pytest.approx(r["reference_b1_s"] / r["decoder_b1_s"], rel=0.01)
    parts = r["e2e_parts_s"]
    assert r["e2e_b1_s"] >= 0.95 * sum(parts.values())  # the total includes its parts
    assert r["e2e_reference_b1_s"] == pytest.approx(parts["visual"] + r["reference_b1_s"] + parts["codec_decode"],
                                                    abs=2e-3)
    # fp32 on CPU: the static-cache fast path decodes exactly what eager and the reference decode
    assert r["greedy_agreement_vs_eager_fp32"] == 1.0 and r["greedy_fast_fp32_agreement"] == 1.0
    assert r["greedy_first_differing_frame"] == [None] * 2
    assert r["sampled_eager_fp32_equals_reference_fp32"] and r["draw_equals_multinomial"]
    assert 0 < r["train_mfu"] < 1 and 0 < r["train_reference_mfu"] < 1
    assert (r["train_loss"], r["train_reference_loss"]) == ("ignore_index", "boolean_mask")
    assert r["train_tokens_per_s"] > 0 and r["train_batch"] == s["train_batch"]
    assert r["cache_fraction_of_floor"] == pytest.approx(r["cache_clips_per_s"] / r["cache_floor_clips_per_s"],
                                                         rel=0.02)
    # a cached clip holds at least its int16 codes (9 codebooks x 3 s at 86 Hz) and fp16 features (37 x 32-d)
    assert r["cache_bytes_per_clip"] > 9 * 258 * 2 + 37 * 32 * 2
    assert set(r["meets"]) == set(r["targets"]) and all(isinstance(v, bool) for v in r["meets"].values())


def test_a_failing_section_is_recorded_and_the_json_keeps_the_others(tmp_path):
    gs = load_suite()
    out = tmp_path / "r.json"
    suite = gs.Suite(gs.TINY, gs.torch.device("cpu"), out)

    def broken() -> None:
        raise RuntimeError("no such kernel")

    def works() -> None:
        suite.r["decoder_b1_s"] = 0.5

    suite.section("first", 0, broken)
    assert json.loads(out.read_text())["errors"] == {"first": "RuntimeError: no such kernel"}
    suite.section("second", 0, works)
    suite.section("third", 10_000, works)  # more than the budget left: skipped, said why
    r = json.loads(out.read_text())
    assert r["decoder_b1_s"] == 0.5 and "first" in r["errors"] and "time budget" in r["skipped"]["third"]
    assert r["meets"]["decoder_b1_s"] is False and r["meets"]["train_mfu"] is None


def test_result_file_is_named_by_date_and_device():
    gs = load_suite()
    name = gs.default_out(gs.torch.device("cpu"), tiny=True).name
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-cpu-tiny\.json", name)


def test_every_carried_wheel_is_pinned_and_the_scripts_parse():
    script = (REPO / "benchmarks" / "gpu_wheels.sh").read_text()
    names = re.findall(r"^(?:BINARY|PURE)=\(([^)]*)\)", script, flags=re.M | re.S)
    packages = " ".join(names).split()
    assert {"av", "descript-audio-codec", "soundfile"} <= set(packages)
    pins = {line.split("==")[0].lower().replace("_", "-")
            for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    assert set(packages) <= pins, set(packages) - pins
    for sh in ("gpu_wheels.sh", "gpu_suite.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / sh)]).returncode == 0, sh
