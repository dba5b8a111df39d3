"""Trainer pieces in-process: deterministic windows, rank sharding, wall-clock budget stop + resume, typed errors."""
import json
import random

import numpy as np
import pytest
import torch
import yaml

from train_helpers import write_micro_cache, write_params
from vaura.train.checkpoint import CheckpointError
from vaura.train.config import TrainError, load_setup
from vaura.train.data import SeededWindows, epoch_batches, open_cache
from vaura.train.distributed import DistEnv
from vaura.train.trainer import train


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_micro_cache(tmp_path_factory.mktemp("unit") / "data")


def test_seeded_windows_depend_only_on_seed_epoch_and_index(cache):
    ds = SeededWindows(open_cache(cache, "train"), seed=3)
    first = ds[2][0]
    torch.manual_seed(123), np.random.seed(5), random.seed(7)  # global state must not matter ...
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    assert torch.equal(ds[2][0], first)
    # ... nor be changed by drawing a window
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
    starts = set()
    for epoch in range(8):
        ds.epoch = epoch
        starts.add(tuple(ds[2][0][0, :4].tolist()))
    assert len(starts) > 1  # a new epoch draws new windows


def test_epoch_batches_shard_disjointly_and_reshuffle_per_epoch(cache):
    ds = open_cache(cache, "train")
    env = [DistEnv(r, r, 2, torch.device("cpu")) for r in (0, 1)]
    e0 = [sum(epoch_batches(ds, e, 2, seed=1, epoch=0, shuffle=True), []) for e in env]
    assert sorted(e0[0] + e0[1]) == list(range(8)) and not set(e0[0]) & set(e0[1])
    e1 = sum(epoch_batches(ds, env[0], 2, seed=1, epoch=1, shuffle=True), [])
    assert e1 != e0[0] or sum(epoch_batches(ds, env[0], 2, seed=1, epoch=2, shuffle=True), []) != e0[0]


def test_budget_stop_saves_a_resumable_checkpoint_and_mismatches_are_refused(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = cache.parent
    params = write_params(tmp_path / "p.yaml", data, f"sqlite:///{tmp_path / 'ml.db'}", total_steps=4,
                          max_minutes=1e-9, eval_every=2, ckpt_every=2)
    stopped = train(load_setup(params), resume="never")
    # The budget ends training after the step in flight, which is then treated as the last one: validated,
    # best.pt and last.pt written, so a budget-stopped DVC stage still produces all of its outputs.
    assert stopped["stopped_early"] and stopped["steps"] == 1
    assert torch.load(data / "train" / "last.pt", weights_only=True)["step"] == 1
    assert torch.load(data / "train" / "best.pt", weights_only=True)["step"] == 1
    assert stopped["val_loss"] is not None
    p = yaml.safe_load(params.read_text())
    p["train"].update(max_minutes=0.0, total_steps=6)  # resumed with a longer schedule
    params.write_text(yaml.safe_dump(p))
    # an explicit resume (auto would start afresh: the params changed, see the run fingerprint)
    done = train(load_setup(params), resume=str(data / "train" / "last.pt"))
    assert done["steps"] == 6 and not done["stopped_early"]
    written = json.loads((data / "train" / "metrics.json").read_text())
    assert written["steps"] == 6 and "minutes" not in written  # what evaluate depends on holds no wall time
    assert json.loads((data / "train" / "timing.json").read_text())["minutes"] == pytest.approx(done["minutes"])
    lrs = [json.loads(line)["lr"] for line in (data / "train" / "train_log.jsonl").read_text().splitlines()]
    # the current params' cosine (6 steps, warm-up 2): step 6 uses multiplier 0.1 + 0.45 (1 + cos(0.75 pi))
    assert lrs[-1] == pytest.approx(3e-3 * (0.1 + 0.45 * (1 + np.cos(0.75 * np.pi))))
    p["model"]["d_model"] = 64
    params.write_text(yaml.safe_dump(p))
    with pytest.raises(CheckpointError, match="model config"):
        train(load_setup(params), resume=str(data / "train" / "last.pt"))


def test_too_little_data_is_a_clear_error(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "p.yaml", cache.parent, f"sqlite:///{tmp_path / 'ml.db'}", batch_size=64)
    with pytest.raises(TrainError, match="fewer than batch_size"):
        train(load_setup(params), resume="never")


def test_a_cache_window_longer_than_the_model_covers_is_refused_before_training(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "p.yaml", cache.parent, f"sqlite:///{tmp_path / 'ml.db'}")
    p = yaml.safe_load(params.read_text())
    p["model"]["max_seconds"] = 2.0
    params.write_text(yaml.safe_dump(p))
    with pytest.raises(ValueError, match=r"meta\.json: window_s=2.56 exceeds model.max_seconds=2"):
        train(load_setup(params), resume="never")


def test_reading_losses_back_every_few_steps_still_logs_every_step_identically(cache, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logs = {}
    for every in (1, 4):
        data = tmp_path / f"every{every}"
        shutil.copytree(cache, data / "cache")
        params = write_params(tmp_path / f"p{every}.yaml", data, f"sqlite:///{tmp_path / 'ml.db'}", total_steps=7,
                              log_every=every, eval_every=0, ckpt_every=5)
        train(load_setup(params), resume="never")
        logs[every] = [json.loads(line) for line in (data / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs[4]] == list(range(1, 8))
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in logs[4]] == [r[key] for r in logs[1]], key
    # read back at step 4 (log_every), 5 (checkpoint) and 7 (end): one tokens/s figure per read-back
    tps = [r["tokens_per_s"] for r in logs[4]]
    assert len(set(tps[:4])) == 1 and tps[4] != tps[3] and tps[5] == tps[6] != tps[4]
    assert len(set(r["tokens_per_s"] for r in logs[1])) == 7  # every step read back on its own
