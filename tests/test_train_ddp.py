"""Two-process CPU DDP (gloo) under the real torchrun launcher: replicas must end bit-identical."""
import json
import os
import subprocess
import sys

import pytest
import torch

from train_helpers import write_micro_cache, write_params
from vaura.weights import weights_sha256


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_weights(tmp_path):
    data = tmp_path / "data"
    write_micro_cache(data)
    params = write_params(tmp_path / "params.yaml", data, f"sqlite:///{tmp_path / 'ml.db'}", total_steps=6,
                          eval_every=3, ckpt_every=3, grad_accum=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "vaura.cli", "train", "--params", str(params), "--checksum-dir", str(tmp_path / "sums")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sums = [(tmp_path / "sums" / f"rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert sums[0] == sums[1]
    ckpt = torch.load(data / "train" / "last.pt", weights_only=True)
    assert weights_sha256(ckpt["model"]) == sums[0]
    # the checkpoint keeps each rank's own RNG streams (their dropout / CFG-drop draws differ)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["cond"], ckpt["rng"][1]["cond"])
    assert ckpt["step"] == 6 and ckpt["world_size"] == 2
    # 8 train clips / 2 ranks / batch 2 = 2 batches per epoch; 6 steps × 2 micro-batches = 12 batches:
    # the position is "both batches of epoch 5 consumed"
    assert ckpt["data"] == {"epoch": 5, "consumed": 2}
    log = [json.loads(line) for line in (data / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert json.loads((data / "train" / "metrics.json").read_text())["world_size"] == 2
