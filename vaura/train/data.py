"""Training data from the token/feature cache: seeded windows, per-rank batches and a stream that knows its position.

Exact resume rests on two rules kept here: every random window is a pure function of ``(seed, epoch, clip index)``
(:class:`SeededWindows`), and the stream's position is ``(epoch, batches consumed in that epoch)``
(:class:`TrainStream`), which the checkpoint stores and restores.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vaura.cache import CachedClips
from vaura.train.config import TrainConfig, TrainError
from vaura.train.distributed import DistEnv


class SeededWindows(Dataset):
    """Wrap a clip dataset so each item's randomness (the random training window) depends only on
    ``(seed, epoch, index)``: the global torch/numpy/python RNGs are seeded from those around the inner
    ``__getitem__`` and restored afterwards. This makes windows independent of worker count and of where a
    resumed run restarted, and keeps the trainer's own RNG streams untouched.
    """

    def __init__(self, inner: Dataset, seed: int) -> None:
        self.inner = inner
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        item_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            np.random.seed(item_seed)
            random.seed(item_seed)
            try:
                return self.inner[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(codes [K,T], feats [N,D])`` pairs; int16/fp16 cache tensors become int64/fp32."""
    codes = torch.stack([c.long() for c, _ in items])
    feats = torch.stack([f.float() for _, f in items])
    return codes, feats


def epoch_batches(
    dataset: Dataset, env: DistEnv, batch_size: int, seed: int, epoch: int, shuffle: bool
) -> list[list[int]]:
    """This rank's index batches for one epoch (DistributedSampler order; incomplete last batch dropped)."""
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i : i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]


def make_loader(dataset: Dataset, batches: list[list[int]], num_workers: int) -> DataLoader:
    # A private generator keeps DataLoader's base-seed draw off the global torch RNG (exact resume).
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


class TrainStream:
    """Endless training batches that remember their position: (epoch, batches consumed in that epoch)."""

    def __init__(self, dataset: SeededWindows, env: DistEnv, cfg: TrainConfig) -> None:
        self.dataset, self.env, self.cfg = dataset, env, cfg
        self.epoch, self.consumed = 0, 0
        if not epoch_batches(dataset, env, cfg.batch_size, cfg.seed, 0, True):
            raise TrainError(
                f"train split has {len(dataset)} clips: fewer than batch_size ({cfg.batch_size}) per rank "
                f"× world size ({env.world_size}); lower train.batch_size or add data"
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            self.dataset.epoch = self.epoch
            batches = epoch_batches(self.dataset, self.env, self.cfg.batch_size, self.cfg.seed, self.epoch, True)
            for batch in make_loader(self.dataset, batches[self.consumed :], self.cfg.num_workers):
                self.consumed += 1
                yield batch
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


def open_cache(cache_dir: Path, split: str) -> CachedClips:
    """One split of the cache as fixed-length windows (the window length is the one the cache recorded)."""
    return CachedClips(cache_dir, split)


def model_dims(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor sizes of :class:`vaura.model.VAURA` taken from the cache's ``meta.json``."""
    try:
        return {
            "n_codebooks": int(meta["n_codebooks"]),
            "codebook_size": int(meta["codebook_size"]),
            "codebook_dim": int(meta["codebook_dim"]),
            "audio_frame_rate": float(meta["frame_rate"]),
            "visual_dim": int(meta["visual_dim"]),
            "visual_frame_rate": float(meta["feature_rate"]),
        }
    except KeyError as exc:
        raise TrainError(f"cache meta.json lacks key {exc}; found {sorted(meta)}") from exc
