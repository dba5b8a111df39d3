"""The process group of a torchrun job: rank/world from the environment and the collectives the trainer needs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vaura.devices import resolve_device
from vaura.train.config import TrainConfig


@dataclass
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> DistEnv:
    """Read the torchrun environment, pick the device and open the process group (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(cfg.device).type == "cuda"  # the one resolver: auto, cpu, cuda (ConfigError if absent)
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return DistEnv(rank, local_rank, world, device)


def teardown(env: DistEnv) -> None:
    if env.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``x`` over ranks (``x`` itself in a single process)."""
    if env.world_size > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= env.world_size
    return x


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when it is true on one (ranks must agree on when to stop)."""
    t = torch.tensor(float(flag), device=env.device)
    if env.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``obj`` of every rank, in rank order, on every rank."""
    if env.world_size == 1:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
