"""The V-AURA decoder training loop: one file, top to bottom, nanoGPT-style.

Launch with ``torchrun --nproc-per-node N -m vaura.train --params params.yaml`` (or plain
``python -m vaura.train`` for one process). Rank/world come from ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``;
the process group uses NCCL on GPU and gloo on CPU.

Exact resume: every source of randomness is either checkpointed (torch/numpy/python RNGs and the CFG-dropout
generator, per rank) or a pure function of ``(seed, epoch, clip index)`` (the shuffle order and the random
2.56 s training window), and the data position is stored as (epoch, micro-batches consumed). A run killed
at any point and restarted from ``last.pt`` therefore replays exactly the batches, dropout masks and
condition drops of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vaura import tracking
from vaura.config import PathsConfig, load_section, load_yaml, to_dict
from vaura.io import atomic_write_json, atomic_write_text
from vaura.model import VAURA
from vaura.train.checkpoint import (
    CheckpointError, capture_rng, load_checkpoint, restore_rng, run_fingerprint, save_checkpoint,
)
from vaura.train.config import TrainConfig
from vaura.train.lr import WarmupCosine, build_scheduler

log = logging.getLogger("vaura.train")


class TrainError(RuntimeError):
    """A training setup that cannot work (too little data, bad resume target, ...)."""


# ----------------------------------------------------------------------------------------------------------
# distributed setup


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
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TrainError("train.device is 'cuda' but no CUDA device is visible")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return DistEnv(rank, local_rank, world, device)


def _all_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world_size > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= env.world_size
    return x


# ----------------------------------------------------------------------------------------------------------
# data


class SeededWindows(Dataset):
    """Wrap a clip dataset so each item's randomness (the random 2.56 s window) depends only on
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

    def __init__(self, dataset: SeededWindows, env: DistEnv, cfg: TrainConfig, epoch: int = 0, consumed: int = 0):
        self.dataset, self.env, self.cfg = dataset, env, cfg
        self.epoch, self.consumed = epoch, consumed
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

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}


def open_cache(cache_dir: Path, split: str) -> Dataset:
    """The cached-clip dataset of the `cache` stage (codes + visual features, 2.56 s windows)."""
    from vaura.cache import CachedClips

    return CachedClips(cache_dir, split)


def read_meta(cache_dir: Path) -> dict[str, Any]:
    path = cache_dir / "meta.json"
    if not path.is_file():
        raise TrainError(f"{path}: cache metadata not found — run the `cache` stage first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainError(f"{path}: not valid JSON ({exc})") from exc


# ----------------------------------------------------------------------------------------------------------
# model and optimizer


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


class LossModule(nn.Module):
    """``forward`` = ``model.loss``: DDP only synchronises gradients of what runs through ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor, visual: torch.Tensor, drop_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.loss(codes, visual, drop_cond)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on ≥2-D tensors only (matrices, embeddings), not on norms/biases (docs/PAPER.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type == "cuda")


def autocast_context(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU (``auto``) or when asked; fp32 otherwise (CPU default)."""
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Digest of every parameter and buffer, in state-dict order (DDP replicas must agree bit for bit)."""
    h = hashlib.sha256()
    for name, t in state_dict.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# validation and sample logging


@torch.no_grad()
def evaluate(model: nn.Module, val: Dataset, env: DistEnv, cfg: TrainConfig, amp: Any) -> dict[str, float]:
    """Mean validation loss (total and per codebook) over ``n_val_batches`` fixed-window batches per rank."""
    model.eval()
    batches = epoch_batches(val, env, cfg.batch_size, cfg.seed, 0, False)[: cfg.n_val_batches]
    if not batches:  # fewer val clips than a batch: use them all in one batch
        batches = [list(range(env.rank, len(val), env.world_size))] if env.rank < len(val) else [[0]]
    total: torch.Tensor | None = None
    count = torch.zeros((), dtype=torch.float64, device=env.device)
    for codes, feats in make_loader(val, batches, 0):
        codes, feats = codes.to(env.device), feats.to(env.device)
        with amp:
            _, per_cb = model.loss(codes, feats, None)
        per_cb = per_cb.detach().double() * codes.shape[0]
        total = per_cb if total is None else total + per_cb
        count += codes.shape[0]
    assert total is not None
    if env.world_size > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    per_cb_mean = (total / count).tolist()
    model.train()
    out = {"val/loss": float(sum(per_cb_mean) / len(per_cb_mean))}
    out.update({f"val/loss_cb{q}": v for q, v in enumerate(per_cb_mean)})
    return out


def _video_paths(data_dir: Path) -> dict[str, Path]:
    """clip → source video, from ``data/splits/val.csv`` (paths relative to that folder or the repo root)."""
    import pandas as pd

    csv = data_dir / "splits" / "val.csv"
    if not csv.is_file():
        return {}
    out = {}
    for row in pd.read_csv(csv).itertuples():
        p = Path(str(row.path))
        for cand in (p, csv.parent / p, Path.cwd() / p):
            if cand.is_file():
                out[str(row.clip)] = cand
                break
    return out


class SampleLogger:
    """Generates a few validation clips with the sampler, decodes them with the codec and logs wav + PNG + MP4."""

    def __init__(self, params: Mapping[str, Any], cfg: TrainConfig, val: Dataset, cache_dir: Path, data_dir: Path,
                 codec: Any, device: torch.device) -> None:
        import pandas as pd

        from vaura.model import GenerationConfig

        self.gen_cfg = load_section(GenerationConfig, "generation", params)
        self.cfg, self.codec, self.device = cfg, codec, device
        n = min(cfg.n_log_clips, len(val))
        codes, feats = collate([val[i] for i in range(n)])
        self.codes, self.feats = codes, feats
        index = pd.read_csv(cache_dir / "index.csv")
        rows = index[index["split"] == "val"].reset_index(drop=True)
        self.clips = [str(rows.loc[i, "clip"]) for i in range(n)]
        self.starts = [float(rows.loc[i, "start_sec"]) for i in range(n)]
        self.videos = _video_paths(data_dir)
        self.logged_reference = False

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        from vaura.model.sampler import generate

        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            gen = torch.Generator(self.device).manual_seed(self.cfg.seed)
            codes = generate(
                model, self.feats.to(self.device), self.codes.shape[-1], cfg_scale=self.gen_cfg.cfg_scale,
                temperature=self.gen_cfg.temperature, top_k=self.gen_cfg.top_k, top_p=self.gen_cfg.top_p,
                generator=gen,
            )
        model.train(was_training)
        batches = [("generated", f"samples/step{step:06d}", codes)]
        if not self.logged_reference:
            batches.append(("reference", "samples/reference", self.codes))
            self.logged_reference = True
        sr = int(self.codec.sample_rate)
        for kind, folder, c in batches:
            audio = self.codec.decode(c.to(next(self.codec.parameters()).device)).float().cpu()
            for i, clip in enumerate(self.clips):
                wav = audio[i, 0]
                tracking.log_audio(wav, sr, f"{folder}/{clip}.wav")
                tracking.log_spectrogram(wav, sr, f"{folder}/{clip}.png", title=f"{clip} {kind} step {step}")
                if clip in self.videos:
                    tracking.log_muxed_video(self.videos[clip], wav, sr, f"{folder}/{clip}.mp4", self.starts[i])


def load_codec_from_params(params: Mapping[str, Any], data_dir: Path, device: torch.device) -> Any:
    """The frozen codec of section ``codec`` (embedding init + decoding logged samples)."""
    from vaura.codec import CodecConfig, load_codec

    return load_codec(load_section(CodecConfig, "codec", params), data_dir=str(data_dir)).to(device).eval()


# ----------------------------------------------------------------------------------------------------------
# the loop


class JsonlLog:
    """Per-step training log, one JSON object per line, flushed + fsynced so a SIGKILL loses at most a line."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        kept = []
        if keep_until_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line torn by a kill ends the trustworthy part
                if rec["step"] <= keep_until_step:
                    kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        self.fh = path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def train(params_path: str | Path = "params.yaml", resume: str = "auto", checksum_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the decoder on the cache under ``paths.data``; returns the final metrics (also ``metrics.json``).

    ``resume``: ``auto`` (continue from ``<data>/train/last.pt`` if it exists; a changed schedule extends it, a
    changed model is refused), ``matching`` (continue it only when it was made with the same params and data, else
    start over: what ``dvc repro`` runs, so outputs always belong to the current params), ``never`` or a
    checkpoint path.
    ``checksum_dir``: each rank writes ``rank<R>.sha256`` of its final weights there (DDP consistency check).
    """
    from vaura.model import ModelConfig

    params = load_yaml(params_path)
    cfg: TrainConfig = load_section(TrainConfig, "train", params)
    model_cfg = load_section(ModelConfig, "model", params)
    paths: PathsConfig = load_section(PathsConfig, "paths", params)
    data_dir = Path(paths.data)
    cache_dir, out_dir = data_dir / "cache", data_dir / "train"
    env = setup_distributed(cfg)
    try:
        return _train(params, params_path, cfg, model_cfg, env, data_dir, cache_dir, out_dir, resume, checksum_dir)
    finally:
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(params: dict, params_path: str | Path, cfg: TrainConfig, model_cfg: Any, env: DistEnv, data_dir: Path,
           cache_dir: Path, out_dir: Path, resume: str, checksum_dir: str | Path | None) -> dict[str, Any]:
    t_start = time.monotonic()
    mlflow = importlib.import_module("mlflow") if env.is_main else None  # rank 0 logs; others skip the import
    dims = model_dims(read_meta(cache_dir))
    train_set = SeededWindows(open_cache(cache_dir, "train"), cfg.seed)
    val_set = open_cache(cache_dir, "val")
    if len(val_set) == 0:
        raise TrainError(f"{cache_dir / 'index.csv'}: no val clips; validation and best.pt need some")

    # Same seed on every rank for the init (DDP also broadcasts rank 0's weights), then per-rank streams.
    torch.manual_seed(cfg.seed)
    raw_model = VAURA(model_cfg, **dims).to(env.device)
    codec = None
    if cfg.init_from_codec or (cfg.log_audio_every > 0 and env.is_main):
        codec = load_codec_from_params(params, data_dir, env.device)
    if cfg.init_from_codec:
        copied = raw_model.init_audio_embeddings(codec)
        log.info("audio embeddings from the codec: codebooks, and %d of %d out-projections (copied where the "
                 "codec's width equals the model's audio width)", copied, raw_model.n_codebooks)
    cond_gen = torch.Generator().manual_seed(cfg.seed * 7919 + env.rank)
    torch.manual_seed(cfg.seed + env.rank)
    np.random.seed(cfg.seed + env.rank)
    random.seed(cfg.seed + env.rank)

    optimizer = build_optimizer(raw_model, cfg, env.device)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
    step, best_val, data_pos, mlflow_run_id = 0, math.inf, {"epoch": 0, "consumed": 0}, None

    fingerprint = run_fingerprint(to_dict(cfg), to_dict(model_cfg), dims, env.world_size, cache_dir,
                                  params.get("codec") if cfg.init_from_codec else None)
    own_last = resume in ("auto", "matching")
    ckpt_path = None if resume == "never" else (out_dir / "last.pt" if own_last else Path(resume))
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None and (not own_last or ckpt_path.is_file()) else None
    if ckpt is not None and resume == "matching" and ckpt.get("fingerprint") != fingerprint:
        # last.pt survives `dvc repro` (persisted) but belongs to other params/data: a fresh start, not a resume
        log.warning("%s was trained with other params or data; starting from step 0", ckpt_path)
        ckpt = ckpt_path = None
    if ckpt is None and env.is_main:
        (out_dir / "best.pt").unlink(missing_ok=True)  # a fresh run's best.pt must come from this run
    if ckpt is not None:
        if ckpt["model_config"] != to_dict(model_cfg) or ckpt["model_dims"] != dims:
            raise CheckpointError(f"{ckpt_path}: model config/sizes differ from params; use --resume never")
        if ckpt["world_size"] != env.world_size:
            raise CheckpointError(
                f"{ckpt_path}: saved with world size {ckpt['world_size']}, now {env.world_size}; "
                "exact resume needs the same number of processes"
            )
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # The schedule comes from the current params (an unchanged config resumes exactly; a longer
        # total_steps extends the cosine instead of being silently replaced by the checkpoint's).
        scheduler.lr_lambdas[0] = WarmupCosine(cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
        scheduler.base_lrs = [cfg.lr for _ in scheduler.base_lrs]
        restore_rng(ckpt["rng"][env.rank], cond_gen)
        step, best_val, data_pos = ckpt["step"], ckpt["best_val"], ckpt["data"]
        mlflow_run_id = ckpt.get("mlflow_run_id") or None
        log.info("resumed from %s at step %d", ckpt_path, step)

    model: nn.Module = LossModule(raw_model)
    if env.world_size > 1:
        # find_unused_parameters: conditioning parameters may sit out a batch (a learned null condition when no
        # sample is dropped, the reference alignment's empty-video embedding); costs one extra graph traversal.
        model = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                    find_unused_parameters=True)
    if cfg.compile:
        model = torch.compile(model)
    amp = autocast_context(cfg, env.device)
    stream = TrainStream(train_set, env, cfg, data_pos["epoch"], data_pos["consumed"])
    batches = iter(stream)
    cfg_dropout = float(model_cfg.cfg_dropout)
    params_list = [p for p in raw_model.parameters() if p.requires_grad]

    out_dir.mkdir(parents=True, exist_ok=True)
    steplog = JsonlLog(out_dir / "train_log.jsonl", keep_until_step=step) if env.is_main else None
    sampler_log = (
        SampleLogger(params, cfg, val_set, cache_dir, data_dir, codec, env.device)
        if env.is_main and cfg.log_audio_every > 0 else None
    )
    resolved = {"train": to_dict(cfg), "model": to_dict(model_cfg), "model_dims": dims, "world_size": env.world_size,
                "device": str(env.device), "bf16": isinstance(amp, torch.autocast)}
    run_ctx = (
        tracking.stage_run("train", params, tags={"vaura.world_size": str(env.world_size)},
                           params_file=params_path, data_files=[cache_dir / "index.csv"], resume_run_id=mlflow_run_id)
        if env.is_main else contextlib.nullcontext()
    )

    def checkpoint_state() -> dict[str, Any]:
        rngs: list[Any] = [None] * env.world_size
        mine = capture_rng(cond_gen)
        if env.world_size > 1:
            dist.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        return {
            "step": step, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rngs, "data": stream.state(), "best_val": best_val,
            "world_size": env.world_size, "model_config": to_dict(model_cfg), "model_dims": dims,
            "train_config": to_dict(cfg), "mlflow_run_id": mlflow_run_id or "", "fingerprint": fingerprint,
        }

    metrics: dict[str, Any] = {}
    last_loss = math.nan
    stopped_early = False
    saved_step = step if ckpt_path is not None and step > 0 else -1
    with run_ctx as run:
        if run is not None:
            mlflow_run_id = run.info.run_id
            tracking.log_json(resolved, "config/resolved.json")
        raw_model.train()
        while step < cfg.total_steps and not stopped_early:
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            loss_sum = torch.zeros((), device=env.device)
            tokens = 0
            for micro in range(cfg.grad_accum):
                codes, feats = next(batches)
                codes, feats = codes.to(env.device, non_blocking=True), feats.to(env.device, non_blocking=True)
                drop = (torch.rand(codes.shape[0], generator=cond_gen) < cfg_dropout).to(env.device)
                last_micro = micro == cfg.grad_accum - 1
                sync = contextlib.nullcontext() if env.world_size == 1 or last_micro else model.no_sync()
                with sync:
                    with amp:
                        loss, _ = model(codes, feats, drop)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach().float()
                tokens += codes.numel()
            if cfg.clip_mode == "norm":
                grad_norm = torch.nn.utils.clip_grad_norm_(params_list, cfg.clip)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params_list if p.grad is not None])
                torch.nn.utils.clip_grad_value_(params_list, cfg.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_avg = _all_mean(loss_sum / cfg.grad_accum, env)
            last_loss = float(loss_avg.item())
            if not math.isfinite(last_loss):
                raise TrainError(f"non-finite training loss {last_loss} at step {step}")
            tok_s = tokens * env.world_size / max(time.perf_counter() - t0, 1e-9)
            if env.is_main:
                rec = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tok_s}
                steplog.write(rec)
                mlflow.log_metrics({"train/loss": last_loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                                    "train/tokens_per_s": tok_s}, step=step)
            # The wall-clock budget ends training like the last step does (validation, best.pt, last.pt), so a
            # budget-stopped run still leaves every output; all ranks agree on it through one all-reduce.
            over_budget = torch.tensor(
                float(cfg.max_minutes > 0 and time.monotonic() - t_start > 60.0 * cfg.max_minutes), device=env.device
            )
            if env.world_size > 1:
                dist.all_reduce(over_budget, op=dist.ReduceOp.MAX)
            stopped_early = bool(over_budget.item()) and step < cfg.total_steps
            final = step == cfg.total_steps or stopped_early
            if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or final):
                metrics = evaluate(raw_model, val_set, env, cfg, amp)
                improved = metrics["val/loss"] < best_val
                best_val = min(best_val, metrics["val/loss"])
                if env.is_main:
                    mlflow.log_metrics({**metrics, "val/best_loss": best_val}, step=step)
                if improved:
                    state = checkpoint_state()
                    if env.is_main:
                        save_checkpoint(out_dir / "best.pt", state)
            if sampler_log is not None and step % cfg.log_audio_every == 0:
                sampler_log(raw_model, step)
            if step % cfg.ckpt_every == 0 or final:
                state = checkpoint_state()
                if env.is_main:
                    save_checkpoint(out_dir / "last.pt", state)
                saved_step = step
        if saved_step != step:  # nothing to do (already at total_steps): keep the resume point current
            state = checkpoint_state()
            if env.is_main:
                save_checkpoint(out_dir / "last.pt", state)
        if checksum_dir is not None:
            Path(checksum_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(checksum_dir) / f"rank{env.rank}.sha256", weights_sha256(raw_model.state_dict()) + "\n")
        result = {
            "steps": step, "final_train_loss": last_loss if math.isfinite(last_loss) else None,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "val_loss": metrics.get("val/loss"), "stopped_early": stopped_early,
            "minutes": (time.monotonic() - t_start) / 60.0, "world_size": env.world_size,
        }
        if env.is_main:
            steplog.close()
            atomic_write_json(out_dir / "metrics.json", result)
            mlflow.log_metrics({"final/steps": step, "final/minutes": result["minutes"]})
            for name in ("last.pt", "best.pt"):
                if (out_dir / name).is_file():
                    mlflow.log_artifact(str(out_dir / name), artifact_path="checkpoints")
            tracking.log_params_file(params_path)
    return result
