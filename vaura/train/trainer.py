"""The V-AURA decoder training loop, top to bottom: setup, resume, then one :func:`train_step` per iteration with
validation, checkpoints and logging around it.

Launch with ``torchrun --nproc-per-node N -m vaura.train --params params.yaml`` (or plain
``python -m vaura.train`` for one process). The pieces live beside this file by trade: the data stream
(``data.py``), the process group (``distributed.py``), checkpoints and resume (``checkpoint.py``), sample logging
(``samples.py``), the typed configs (``config.py``).

Exact resume: every source of randomness is either checkpointed (torch/numpy/python RNGs and the CFG-dropout
generator, per rank) or a pure function of ``(seed, epoch, clip index)`` (the shuffle order and the random
training window), and the data position is stored as (epoch, micro-batches consumed). A run killed at any point
and restarted from ``last.pt`` therefore replays exactly the batches, dropout masks and condition drops of an
uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset

from vaura import tracking
from vaura.cache import read_meta
from vaura.config import to_dict
from vaura.io import atomic_write_json, atomic_write_text, write_output_metrics
from vaura.model import VAURA
from vaura.curation.filtering import split_clips
from vaura.model.decoder import cfg_drop_mask
from vaura.train.checkpoint import RankRng, TrainState, resume_target, run_fingerprint, save_state
from vaura.train.checkpoint import resume as resume_from
from vaura.train.config import TrainConfig, TrainError, TrainSetup
from vaura.train.data import SeededWindows, TrainStream, epoch_batches, make_loader, model_dims, open_cache
from vaura.train.distributed import DistEnv, all_mean, any_rank, setup_distributed, teardown
from vaura.train.lr import build_scheduler, follow_params
from vaura.train.samples import SampleLogger, load_codec
from vaura.weights import weights_sha256

log = logging.getLogger("vaura.train")


# ----------------------------------------------------------------------------------------------------------
# model, optimizer and one step


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


def wrap(raw_model: nn.Module, cfg: TrainConfig, env: DistEnv) -> nn.Module:
    """The module the loop calls: the loss (decoder blocks compiled when asked), under DDP on several ranks."""
    if cfg.compile:
        raw_model.compile_blocks()
    model: nn.Module = LossModule(raw_model)
    if env.world_size > 1:
        # find_unused_parameters: conditioning parameters may sit out a batch (a learned null condition when no
        # sample is dropped, the reference alignment's empty-video embedding); costs one extra graph traversal.
        model = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                    find_unused_parameters=True)
    return model


def train_step(
    model: nn.Module,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    cfg: TrainConfig,
    cfg_dropout: float,
    cond_gen: torch.Generator,
    env: DistEnv,
    amp: contextlib.AbstractContextManager,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step: ``cfg.grad_accum`` micro-batches forward and backward (DDP synchronises gradients on
    the last one only), the CFG condition drop drawn from ``cond_gen``, clipping, AdamW, the schedule.

    Returns the loss averaged over micro-batches and ranks and the gradient norm before clipping, both still on
    the device (reading them would wait for the GPU: the loop reads them every ``train.log_every`` steps), and
    the number of code tokens this rank trained on.
    """
    loss_sum = torch.zeros((), device=env.device)
    tokens = 0
    for micro in range(cfg.grad_accum):
        codes, feats = next(batches)
        codes, feats = codes.to(env.device, non_blocking=True), feats.to(env.device, non_blocking=True)
        drop = cfg_drop_mask(codes.shape[0], cfg_dropout, cond_gen).to(env.device)
        last_micro = micro == cfg.grad_accum - 1
        sync = contextlib.nullcontext() if env.world_size == 1 or last_micro else model.no_sync()
        with sync:
            with amp:
                loss, _ = model(codes, feats, drop)
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
        tokens += codes.numel()
    if cfg.clip_mode == "norm":
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grad_value_(params, cfg.clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return all_mean(loss_sum / cfg.grad_accum, env), grad_norm.detach(), tokens


# ----------------------------------------------------------------------------------------------------------
# validation and the per-step log


@torch.no_grad()
def validate(model: nn.Module, val: Dataset, env: DistEnv, cfg: TrainConfig, amp: Any) -> dict[str, float]:
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


# ----------------------------------------------------------------------------------------------------------
# the loop


def train(setup: TrainSetup, resume: str = "auto", checksum_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the decoder on the cache under ``paths.data``; returns the final metrics (also ``metrics.json``).

    ``setup``: the params sections, read once (:func:`vaura.train.config.load_setup`).
    ``resume``: ``auto`` (continue from ``<data>/train/last.pt`` if it exists), ``never`` or a checkpoint path.
    ``checksum_dir``: each rank writes ``rank<R>.sha256`` of its final weights there (DDP consistency check).
    """
    env = setup_distributed(setup.train)
    try:
        return _train(setup, env, resume, checksum_dir)
    finally:
        teardown(env)


def _train(setup: TrainSetup, env: DistEnv, resume: str, checksum_dir: str | Path | None) -> dict[str, Any]:
    t_start = time.monotonic()
    cfg, model_cfg = setup.train, setup.model
    cache_dir, out_dir = setup.data_dir / "cache", setup.out_dir or setup.data_dir / "train"
    tracked = env.is_main and setup.track  # rank 0 logs the MLflow run; the other ranks skip the import
    if tracked:
        import mlflow

    meta = read_meta(cache_dir)
    model_cfg.check_window(float(meta["window_s"]), f"{cache_dir / 'meta.json'}")
    dims = model_dims(meta)
    train_set = SeededWindows(open_cache(cache_dir, "train", split_clips(setup.splits_dir, "train")), cfg.seed)
    val_set = open_cache(cache_dir, "val", split_clips(setup.splits_dir, "val"))

    # Same seed on every rank for the init (DDP also broadcasts rank 0's weights), then per-rank streams.
    torch.manual_seed(cfg.seed)
    raw_model = VAURA(model_cfg, **dims).to(env.device)
    codec = None
    if cfg.init_from_codec or (cfg.log_audio_every > 0 and tracked):
        codec = load_codec(setup.codec, setup.root, setup.data_dir, env.device)
    if cfg.init_from_codec:
        copied = raw_model.init_audio_embeddings(codec)
        log.info("audio embeddings from the codec: codebooks, and %d of %d out-projections (copied where the "
                 "codec's width equals the model's audio width)", copied, raw_model.n_codebooks)
    rng = RankRng(torch.Generator().manual_seed(cfg.seed * 7919 + env.rank))
    torch.manual_seed(cfg.seed + env.rank)
    np.random.seed(cfg.seed + env.rank)
    random.seed(cfg.seed + env.rank)

    optimizer = build_optimizer(raw_model, cfg, env.device)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
    stream = TrainStream(train_set, env, cfg)
    state = TrainState(raw_model, optimizer, scheduler, rng, stream)
    identity = {"model_config": to_dict(model_cfg), "model_dims": dims, "train_config": to_dict(cfg),
                "fingerprint": run_fingerprint(to_dict(cfg), to_dict(model_cfg), dims, env.world_size, cache_dir,
                                               setup.params.get("codec") if cfg.init_from_codec else None)}
    ckpt_path = resume_target(resume, out_dir)
    if ckpt_path is not None and resume_from(ckpt_path, state, env, identity, auto=resume == "auto"):
        follow_params(scheduler, cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
        log.info("resumed from %s at step %d", ckpt_path, state.step)
    elif env.is_main:
        (out_dir / "best.pt").unlink(missing_ok=True)  # a fresh run's best.pt must come from this run

    model = wrap(raw_model, cfg, env)
    amp = autocast_context(cfg, env.device)
    batches = iter(stream)
    params = [p for p in raw_model.parameters() if p.requires_grad]

    out_dir.mkdir(parents=True, exist_ok=True)
    steplog = JsonlLog(out_dir / "train_log.jsonl", keep_until_step=state.step) if env.is_main else None
    samples = (SampleLogger(setup.generation, cfg, val_set, codec, env.device)
               if tracked and cfg.log_audio_every > 0 else None)
    resolved = {"train": to_dict(cfg), "model": to_dict(model_cfg), "model_dims": dims, "world_size": env.world_size,
                "device": str(env.device), "bf16": isinstance(amp, torch.autocast)}
    run_ctx = (
        tracking.stage_run("train", setup.params, tags={"vaura.world_size": str(env.world_size)},
                           variant=setup.variant,
                           params_file=setup.params_file, config=setup.tracking, data_files=[cache_dir / "index.csv"],
                           resume_run_id=state.mlflow_run_id or None)
        if tracked else contextlib.nullcontext()
    )

    metrics: dict[str, Any] = {}
    last_loss = math.nan
    stopped_early = False
    saved_step = state.step if state.step > 0 else -1
    with run_ctx as run:
        if run is not None:
            state.mlflow_run_id = run.info.run_id
            tracking.log_json(resolved, "config/resolved.json")
        raw_model.train()
        pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []  # (step, loss, grad norm, lr) unread
        since, tokens_since = time.perf_counter(), 0  # start and code tokens of the pending steps

        def flush() -> bool:
            """Read the pending steps back (one device sync), log each; True when the wall-clock budget is spent."""
            nonlocal last_loss
            values = torch.stack([torch.stack([loss.float(), norm.float()]) for _, loss, norm, _ in pending]).tolist()
            tok_s = tokens_since * env.world_size / max(time.perf_counter() - since, 1e-9)
            for (step, _, _, lr), (loss, norm) in zip(pending, values):
                if not math.isfinite(loss):
                    raise TrainError(f"non-finite training loss {loss} at step {step}")
                last_loss = loss
                if env.is_main:
                    steplog.write({"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_s": tok_s})
                if tracked:
                    mlflow.log_metrics({"train/loss": loss, "train/lr": lr, "train/grad_norm": norm,
                                        "train/tokens_per_s": tok_s}, step=step)
            pending.clear()
            # The wall-clock budget ends training like the last step does (validation, best.pt, last.pt), so a
            # budget-stopped run still leaves every output; all ranks agree on it through one all-reduce.
            return any_rank(cfg.max_minutes > 0 and time.monotonic() - t_start > 60.0 * cfg.max_minutes, env)

        while state.step < cfg.total_steps and not stopped_early:
            if not pending:  # tokens/s counts training steps only, not the validation or saving before them
                since, tokens_since = time.perf_counter(), 0
            lr = scheduler.get_last_lr()[0]
            loss_t, norm_t, tokens = train_step(
                model, params, optimizer, scheduler, batches, cfg=cfg, cfg_dropout=model_cfg.cfg_dropout,
                cond_gen=rng.cond, env=env, amp=amp,
            )
            state.step += 1
            step = state.step
            pending.append((step, loss_t, norm_t, lr))
            tokens_since += tokens
            # read back at log intervals and before anything that saves, validates or may end the run, so the
            # step log on disk always reaches the checkpoint's step
            # (the same steps on every rank: flush() ends in a collective)
            due = (step % cfg.log_every == 0 or step == cfg.total_steps or step % cfg.ckpt_every == 0
                   or (cfg.eval_every > 0 and step % cfg.eval_every == 0))
            stopped_early = due and flush() and step < cfg.total_steps
            final = step == cfg.total_steps or stopped_early
            if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or final):
                metrics = validate(raw_model, val_set, env, cfg, amp)
                improved = metrics["val/loss"] < state.best_val
                state.best_val = min(state.best_val, metrics["val/loss"])
                if tracked:
                    mlflow.log_metrics({**metrics, "val/best_loss": state.best_val}, step=step)
                if improved:
                    save_state(out_dir / "best.pt", state, env, identity, with_run=False)
            if samples is not None and step % cfg.log_audio_every == 0:
                samples(raw_model, step)
            if step % cfg.ckpt_every == 0 or final:
                save_state(out_dir / "last.pt", state, env, identity)
                saved_step = step
        if saved_step != state.step:  # nothing to do (already at total_steps): keep the resume point current
            save_state(out_dir / "last.pt", state, env, identity)
        if checksum_dir is not None:
            Path(checksum_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(checksum_dir) / f"rank{env.rank}.sha256", weights_sha256(raw_model.state_dict()) + "\n")
        result = {
            "steps": state.step, "final_train_loss": last_loss if math.isfinite(last_loss) else None,
            "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
            "val_loss": metrics.get("val/loss"), "stopped_early": stopped_early,
            "minutes": (time.monotonic() - t_start) / 60.0, "world_size": env.world_size, "device": env.device.type,
        }
        if env.is_main:
            steplog.close()
            # evaluate reads metrics.json (a DVC dependency): the wall time goes to timing.json beside it
            write_output_metrics(out_dir / "metrics.json", result, timings=["minutes"])
            atomic_write_json(out_dir / "timing.json", {"minutes": result["minutes"]})
        if tracked:
            mlflow.log_metrics({"final/steps": state.step, "final/minutes": result["minutes"]})
            for name in ("last.pt", "best.pt"):
                if (out_dir / name).is_file():
                    mlflow.log_artifact(str(out_dir / name), artifact_path="checkpoints")
            tracking.log_params_file(setup.params_file)
    return result
