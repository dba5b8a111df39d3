"""Shared helpers of the training tests: a micro token/feature cache written by the real cache writer
(``vaura.cache.build_cache``) from small deterministic stand-in encoders, and a tiny params file."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import yaml

SBATCH = Path(__file__).resolve().parents[1] / "infra" / "slurm" / "train.sbatch"
SAMPLE_RATE, HOP = 800, 32  # 25 code frames/s: 2.56 s → 64 frames
N_CODEBOOKS, CARD, CDIM, VDIM = 2, 16, 4, 8


class MicroCodec:
    """Codec-protocol stand-in: code = quantised local energy, so codes depend on the audio deterministically."""

    sample_rate, hop_length, frame_rate = SAMPLE_RATE, HOP, SAMPLE_RATE / HOP
    n_codebooks, codebook_size, codebook_dim = N_CODEBOOKS, CARD, CDIM

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        b, _, s = wav.shape
        t = math.ceil(s / HOP)
        x = torch.nn.functional.pad(wav[:, 0], (0, t * HOP - s)).reshape(b, t, HOP)
        c0 = (x.abs().mean(-1) * 40).long().clamp(0, CARD - 1)
        c1 = (x[..., 0] * 8 + 8).long().clamp(0, CARD - 1)
        return torch.stack([c0, c1], 1)


class MicroVisual:
    """Visual-protocol stand-in: one token per 2 frames (12.5 Hz), 8-d features from the frame means."""

    dim, frame_rate = VDIM, 12.5

    def n_tokens(self, n_frames: int) -> int:
        return 8 * (n_frames // 16)

    def encode_many(self, clips):
        out = []
        for frames in clips:
            n = self.n_tokens(len(frames))
            m = torch.from_numpy(frames[: 2 * n].reshape(n, 2, -1).mean((1, 2)).astype(np.float32)) / 255.0
            out.append(torch.stack([torch.sin(m * (i + 1) * 3) for i in range(VDIM)], 1))
        return out


def write_micro_cache(data_dir: Path, n_train: int = 8, n_val: int = 4, seconds: float = 3.2, seed: int = 0) -> Path:
    """``data_dir/cache`` with ``n_train`` + ``n_val`` clips of ``seconds`` (val windows start at 0.32 s, 2.56 s long).

    Each clip's source is named ``data_dir/clips/<clip>.mp4`` (the files themselves exist only where
    :func:`write_val_videos` writes them)."""
    from vaura.cache import ClipSpec, build_cache

    rng = np.random.default_rng(seed)
    audio, frames = {}, {}
    plan = []
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        name = f"c{i:03d}"
        source = str(data_dir / "clips" / f"{name}.mp4")
        audio[source] = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * rng.uniform(0.05, 0.4)).astype(np.float32)
        frames[source] = rng.integers(0, 255, (int(seconds * 25), 4, 4, 3), dtype=np.uint8)
        plan.append(ClipSpec(name, source, split, None if split == "train" else 0.32))
    out = data_dir / "cache"
    build_cache(plan, out, MicroCodec(), MicroVisual(), audio.__getitem__, frames.__getitem__, shard_size=5,
                window_s=2.56, progress=False)
    return out


def write_params(path: Path, data_dir: Path, tracking_uri: str, **train_overrides) -> Path:
    """A params file with a tiny decoder and a few-step schedule."""
    train = dict(
        lr=3e-3, betas=[0.9, 0.95], weight_decay=0.01, warmup_steps=2, total_steps=8, min_lr_ratio=0.1,
        batch_size=2, grad_accum=1, clip_mode="value", clip=1.0, eval_every=4, ckpt_every=4, n_val_batches=2,
        log_every=1,
        log_audio_every=0, n_log_clips=1, compile=False, precision="auto", device="cpu", num_workers=0, seed=7,
        max_minutes=0.0, nproc=1, init_from_codec=False,
    )
    train.update(train_overrides)
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["paths"] = {"data": str(data_dir), "reports": str(data_dir / "reports")}
    params["train"] = train
    params["model"].update(n_layer=1, d_model=32, n_head=2, ffn_multiple_of=16, cond_channels=8, dropout=0.1,
                           cfg_dropout=0.3)
    params["tracking"] = dict(uri=tracking_uri, artifact_root=str(data_dir / "mlartifacts"), experiment="test",
                              system_metrics=False, system_metrics_interval_s=1.0)
    path.write_text(yaml.safe_dump(params))
    return path


MICRO_DAC = dict(encoder_dim=4, encoder_rates=[2, 4, 4], decoder_dim=8, decoder_rates=[4, 4, 2], n_codebooks=N_CODEBOOKS,
                 codebook_size=CARD, codebook_dim=CDIM, sample_rate=SAMPLE_RATE)


def write_micro_codec(data_dir: Path) -> Path:
    """An untrained DAC with the micro cache's rate/hop/codebooks, saved where ``load_codec`` (offline) reads it."""
    import dac

    from vaura.codec.codec import offline_checkpoint
    from vaura.io import atomic_torch_save

    torch.manual_seed(0)
    model = dac.DAC(**MICRO_DAC)
    path = data_dir / "codec" / "codec.pt"
    atomic_torch_save(path, offline_checkpoint(model, MICRO_DAC, N_CODEBOOKS))
    return path


def write_val_videos(data_dir: Path, clips: list[str], seconds: float = 3.2) -> None:
    """The source videos the micro cache's index names for ``clips``, so logged samples are muxed onto them."""
    from vaura.media import write_video

    rng = np.random.default_rng(1)
    for clip in clips:
        write_video(data_dir / "clips" / f"{clip}.mp4", rng.integers(0, 255, (int(seconds * 25), 32, 32, 3),
                                                                     dtype=np.uint8), 25.0)


def resume_jobs(tmp: Path, total_steps: int) -> tuple[dict, dict[str, tuple[Path, Path]], str]:
    """Two identical micro training jobs ("ref", "killed") sharing one MLflow store, for the kill-and-resume tests.

    Returns the subprocess environment, ``{name: (data_dir, params_path)}`` and the tracking URI; checkpoints
    every 3 steps.
    """
    import os
    import shutil

    import mlflow

    uri = f"sqlite:///{tmp / 'ml.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # create the store's tables once, before two writers race
    cache = write_micro_cache(tmp / "cache_src")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    jobs = {}
    for name in ("ref", "killed"):
        data = tmp / name / "data"
        shutil.copytree(cache, data / "cache")
        jobs[name] = (data, write_params(tmp / name / "params.yaml", data, uri, total_steps=total_steps,
                                         eval_every=3, ckpt_every=3, grad_accum=2))
    return env, jobs, uri


def read_losses(data_dir: Path, variant: str | None = None) -> dict[int, float]:
    """Per-step training loss from ``train_log.jsonl`` (of ablation variant ``variant``'s run when given)."""
    import json

    from vaura.variants import output_dir

    lines = (output_dir(data_dir, "train", variant) / "train_log.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def assert_same_training(ref_dir: Path, got_dir: Path, total_steps: int, variant: str | None = None) -> tuple[dict, dict]:
    """Per-step losses (rel 1e-6) and final weights of ``got_dir``'s run equal ``ref_dir``'s; returns both last.pt."""
    import pytest

    from vaura.variants import output_dir

    ref, got = read_losses(ref_dir, variant), read_losses(got_dir, variant)
    assert sorted(ref) == sorted(got) == list(range(1, total_steps + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=0), step
    a = torch.load(output_dir(ref_dir, "train", variant) / "last.pt", weights_only=True)
    b = torch.load(output_dir(got_dir, "train", variant) / "last.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-6, atol=0)
    return a, b


def wait_for_file(proc, path: Path, timeout_s: float, what: str) -> None:
    """Poll until ``path`` exists; fail with the process's stderr if it exits first, or after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"{what} exited before writing {path.name}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path.name} appeared within {timeout_s:.0f} s"
        time.sleep(0.01)


def sbatch_torchrun() -> list[str]:
    """The torchrun command line of the SLURM script (``$PYTHON -m torch.distributed.run ... --resume auto``)."""
    import shlex

    text = SBATCH.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("srun ") and "torch.distributed.run" in ln)
    tokens = shlex.split(line)
    return tokens[tokens.index("$PYTHON"):]


def sbatch_exports() -> dict[str, str]:
    """Literal ``export NAME=value`` lines of the SLURM script (its environment for torchrun)."""
    import re

    return dict(re.findall(r"^export (\w+)=([\w.-]+)$", SBATCH.read_text(), flags=re.M))
