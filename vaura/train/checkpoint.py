"""Training checkpoints that load with ``torch.load(weights_only=True)`` and allow exact resume.

A checkpoint holds only tensors and plain Python types: model, optimizer and scheduler state, the step, the
data position (epoch, batches consumed in it) and every random state that influences training — torch
(CPU and CUDA), numpy, Python ``random`` and the CFG-dropout generator — for *each* rank, because under DDP
the ranks draw different dropout masks and condition drops.

Each part of a run owns its state (``state_dict`` / ``load_state_dict``: the model, optimizer, scheduler, the
data stream's position and :class:`RankRng`); :func:`save_state` and :func:`resume` only gather and place them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch

from vaura.config import from_dict
from vaura.io import atomic_torch_save
from vaura.model import VAURA, ModelConfig
from vaura.train.distributed import DistEnv, gather_objects

FORMAT = "vaura-train-v1"
log = logging.getLogger("vaura.train")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable, of another format or incompatible with the run."""


def capture_rng(cond_generator: torch.Generator) -> dict[str, Any]:
    """This process's random states as tensors / plain types (numpy's key array becomes a tensor)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "cond": cond_generator.get_state(),
    }


def restore_rng(state: dict[str, Any], cond_generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    cond_generator.set_state(state["cond"])


def run_fingerprint(train_config: dict[str, Any], model_config: dict[str, Any], dims: Any, world_size: int,
                    cache_dir: str | Path, codec_section: Any = None) -> str:
    """What a training trajectory depends on, hashed: a checkpoint is only resumed automatically into the same one.

    ``dvc repro`` keeps ``last.pt`` across runs (a persisted output, so a crash does not lose the run); after
    params or data changed, the old checkpoint must not be continued as if it belonged to the new run. The cache
    enters through its index, meta and shard sizes (hashing every shard would read the whole dataset).
    """
    cache_dir = Path(cache_dir)
    cache = {p.name: (hashlib.md5(p.read_bytes()).hexdigest() if p.suffix in (".csv", ".json") else p.stat().st_size)
             for p in sorted(cache_dir.iterdir()) if p.is_file()} if cache_dir.is_dir() else {}
    blob = json.dumps({"train": train_config, "model": model_config, "dims": dims, "world_size": world_size,
                       "cache": cache, "codec": codec_section}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (plus the format tag); a kill mid-write leaves the previous file intact."""
    atomic_torch_save(path, {"format": FORMAT, **state})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / unsafe pickles
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vaura training checkpoint (format {FORMAT!r} expected)")
    return ckpt


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class RankRng:
    """This process's random streams as one stateful part: torch, CUDA, numpy, Python and the CFG-dropout generator."""

    def __init__(self, cond: torch.Generator) -> None:
        self.cond = cond

    def state_dict(self) -> dict[str, Any]:
        return capture_rng(self.cond)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state, self.cond)


@dataclass
class TrainState:
    """Everything exact resume restores: the stateful parts plus the step, the best validation loss and the
    MLflow run (a resumed run keeps logging into the same one)."""

    model: Stateful
    optimizer: Stateful
    scheduler: Stateful
    rng: RankRng
    data: Stateful
    step: int = 0
    best_val: float = math.inf
    mlflow_run_id: str = ""


def resume_target(resume: str, out_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` → ``out_dir/last.pt`` if it exists, ``never`` → none, else a path."""
    if resume == "never":
        return None
    if resume == "auto":
        last = out_dir / "last.pt"
        return last if last.is_file() else None
    return Path(resume)


def save_state(path: Path, state: TrainState, env: DistEnv, identity: Mapping[str, Any], *,
               with_run: bool = True) -> None:
    """Write ``state`` with every rank's RNGs (a collective: all ranks call it, rank 0 writes).

    ``identity`` (``model_config``, ``model_dims``, ``train_config``) is what :func:`resume` checks against.
    ``with_run=False`` leaves out the MLflow run id (new in every run): for best.pt, which the sweep stage depends
    on through DVC, so identical runs give identical bytes; last.pt keeps it to resume into the same run.
    """
    rngs = gather_objects(state.rng.state_dict(), env)
    if env.is_main:
        save_checkpoint(path, {
            "step": state.step, "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(), "rng": rngs, "data": state.data.state_dict(),
            "best_val": state.best_val, "world_size": env.world_size, **identity,
            "mlflow_run_id": state.mlflow_run_id if with_run else "",
        })


def resume(path: Path, state: TrainState, env: DistEnv, identity: Mapping[str, Any], auto: bool = False) -> bool:
    """Load a checkpoint written by :func:`save_state` into ``state``; refuse one of another model or world size.

    ``auto`` (``--resume auto``): a checkpoint of another run (its ``fingerprint``, see :func:`run_fingerprint`,
    differs) is left alone and False returned, so training starts from step 0; True when ``state`` was restored.
    """
    ckpt = load_checkpoint(path)
    if auto and ckpt.get("fingerprint") != identity["fingerprint"]:
        # last.pt survives `dvc repro` (persisted) but belongs to other params/data: a fresh start, not a resume
        log.warning("%s was trained with other params or data; starting from step 0", path)
        return False
    if ckpt["model_config"] != identity["model_config"] or ckpt["model_dims"] != identity["model_dims"]:
        raise CheckpointError(f"{path}: model config/sizes differ from params; use --resume never")
    if ckpt["world_size"] != env.world_size:
        raise CheckpointError(
            f"{path}: saved with world size {ckpt['world_size']}, now {env.world_size}; "
            "exact resume needs the same number of processes"
        )
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.rng.load_state_dict(ckpt["rng"][env.rank])
    state.data.load_state_dict(ckpt["data"])
    state.step, state.best_val = ckpt["step"], ckpt["best_val"]
    state.mlflow_run_id = ckpt.get("mlflow_run_id") or ""
    return True


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> VAURA:
    """The decoder of a training checkpoint (``<data>/train/best.pt``), in eval mode.

    Built from the checkpoint's own ``model_config`` and ``model_dims`` (not from the current params), so a sweep
    always samples the model that was trained, whatever params.yaml says now; weights load strictly.
    """
    ckpt = load_checkpoint(path)
    for key in ("model", "model_config", "model_dims"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: training checkpoint lacks '{key}'")
    model = VAURA(from_dict(ModelConfig, ckpt["model_config"], f"{path}:model_config"), **ckpt["model_dims"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the checkpoint's own model config: {exc}") from exc
    return model.to(device).eval()
