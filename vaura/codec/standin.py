"""The offline codec stand-in: train a tiny ``dac.DAC`` on the benchmark's audio, ship it, and gate it.

The pretrained 44.1 kHz DAC cannot be downloaded here, so the offline profile trains the same class at CPU size.
Losses follow DAC's recipe without the GAN (not worth it on CPU): multi-scale log-mel L1, waveform L1, and the
quantizer's commitment and codebook losses.

Shipped weights: ``codec.train.shipped_path`` (committed, a few MB) is made by the ``codec`` stage with
``vaura codec --params params.yaml --train --ship``. Its recorded provenance (architecture, training knobs, seed,
fingerprint of the training data) must equal what the current params and data would train, otherwise the stage
refuses it and says how to retrain (:func:`provenance_mismatches`).

The gate asks the question that matters downstream: do impact onsets survive the codec? It compares onset event
F1 on reconstructions with the same detector's F1 on the input (:func:`quality_gate`).
The stage body is :mod:`vaura.stages.codec`; the DAC wrapper and checkpoint format are :mod:`vaura.codec.codec`.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torchaudio
from torch import nn
from tqdm import tqdm

from vaura.codec.codec import Codec, _new_dac
from vaura.codec.config import CodecConfig, CodecGateConfig
from vaura.devices import resolve_device

RETRAIN_HINT = "retrain it with `vaura codec --params params.yaml --train --ship`, or set codec.train.source: train"


class CodecDataError(ValueError):
    """Stage inputs (manifest, ground truth) that are missing or inconsistent."""


@dataclass
class StageInputs:
    """What the stage reads: clip paths per split and ground-truth event times per clip."""

    train: pd.DataFrame
    val: pd.DataFrame
    events: dict[str, np.ndarray]
    events_table: pd.DataFrame


def _read_csv(path: Path, columns: set[str]) -> pd.DataFrame:
    if not path.is_file():
        raise CodecDataError(f"{path}: not found (written by the acquire stage for the synthetic benchmark)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CodecDataError(f"{path}: not a readable CSV ({exc})") from exc
    missing = columns - set(df.columns)
    if missing:
        raise CodecDataError(f"{path}: missing column(s) {sorted(missing)}")
    return df


def read_inputs(data_dir: Path, cfg: CodecConfig, seed: int) -> StageInputs:
    """TRAIN clips (optionally a seeded subset) and VAL clips usable for the gate, with their events.

    The gate uses only clips whose audio belongs to their video (``relevance.csv`` kind ``ok``): for swapped,
    shifted or music clips the event table does not describe what is heard.
    """
    from vaura.data.manifest import read_manifest

    manifest = read_manifest(data_dir / "clips" / "manifest.csv")
    events_table = _read_csv(data_dir / "raw" / "events.csv", {"clip", "time_s", "class"})
    events = {str(c): np.sort(g["time_s"].to_numpy(np.float64)) for c, g in events_table.groupby("clip")}
    train = manifest[manifest["split"] == "train"].sort_values("clip").reset_index(drop=True)
    if cfg.train.max_train_clips and len(train) > cfg.train.max_train_clips:
        pick = np.random.default_rng(seed).choice(len(train), cfg.train.max_train_clips, replace=False)
        train = train.iloc[np.sort(pick)].reset_index(drop=True)
    val = manifest[manifest["split"] == "val"].sort_values("clip")
    relevance_path = data_dir / "raw" / "relevance.csv"
    if relevance_path.is_file():
        rel = _read_csv(relevance_path, {"clip", "kind"})
        ok = set(rel.loc[rel["kind"] == "ok", "clip"].astype(str))
        val = val[val["clip"].astype(str).isin(ok)]
    val = val.head(cfg.gate.max_clips).reset_index(drop=True)
    if val.empty:
        raise CodecDataError(f"{data_dir / 'clips' / 'manifest.csv'}: no usable VAL clips for the codec quality gate")
    return StageInputs(train=train, val=val, events=events, events_table=events_table)


def data_fingerprint(train: pd.DataFrame, events_table: pd.DataFrame) -> str:
    """sha256 of the TRAIN clip ids and their ground-truth events: changes when the benchmark (or its seed) does."""
    ids = sorted(train["clip"].astype(str))
    ev = events_table[events_table["clip"].astype(str).isin(set(ids))]
    rows = sorted(f"{c},{t:.4f},{k}" for c, t, k in zip(ev["clip"].astype(str), ev["time_s"], ev["class"].astype(str)))
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    h.update(b"\n--events--\n")
    h.update("\n".join(rows).encode())
    return h.hexdigest()


def provenance(cfg: CodecConfig, seed: int, fingerprint: str) -> dict[str, Any]:
    """Everything that determines the trained weights (and nothing that does not: paths, time cap, source, device).

    The device changes results only by floating-point rounding, so GPU-trained weights ship to CPU users.
    """
    excluded = ("source", "shipped_path", "max_minutes", "device")
    train = {k: v for k, v in asdict(cfg.train).items() if k not in excluded}
    return {"kwargs": cfg.offline.dac_kwargs(), "train": train, "seed": int(seed), "data_fingerprint": fingerprint}


def provenance_mismatches(blob: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's provenance and what the params would train."""
    out = []
    recorded = blob.get("provenance") or {}
    for key, want in expected.items():
        got = recorded.get(key)
        if isinstance(want, Mapping) and isinstance(got, Mapping):
            out += [f"{key}.{k}: shipped {got.get(k)!r}, params {v!r}" for k, v in want.items() if got.get(k) != v]
            out += [f"{key}.{k}: shipped {got[k]!r}, not in params" for k in got if k not in want]
        elif got != want:
            out.append(f"{key}: shipped {got!r}, params {want!r}")
    steps_done = blob.get("steps_done")
    if steps_done != expected["train"]["steps"]:
        out.append(f"steps_done: shipped {steps_done!r} < codec.train.steps {expected['train']['steps']} (time cap hit)")
    return out


def read_clip_audio(paths: list[str], sample_rate: int, desc: str, progress: bool) -> list[np.ndarray]:
    """Mono float32 audio of each clip at the codec's rate (MediaError names the file on bad input)."""
    from vaura.media import read_audio

    return [read_audio(p, sample_rate) for p in tqdm(paths, desc=desc, unit="clip", disable=not progress)]


class MultiScaleMelLoss(nn.Module):
    """Mean over STFT scales of L1 between log10 mel spectrograms: short windows keep transients sharp."""

    def __init__(self, sample_rate: int, windows: Sequence[int] = (64, 128, 256, 512, 1024, 2048)):
        super().__init__()
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=w,
                win_length=w,
                hop_length=w // 4,
                n_mels=max(8, w // 16),
                f_min=0.0,
                f_max=sample_rate / 2,
                power=1.0,
                center=True,
            )
            for w in windows
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = pred.new_zeros(())
        for mel in self.mels:
            p = torch.log10(mel(pred).clamp(min=1e-5))
            t = torch.log10(mel(target).clamp(min=1e-5))
            loss = loss + (p - t).abs().mean()
        return loss / len(self.mels)


@dataclass
class TrainResult:
    """A trained stand-in plus what happened while training it (logged as metrics and kept in the checkpoint)."""

    model: nn.Module
    steps: int
    wall_s: float
    device: str
    history: list[dict[str, float]] = field(default_factory=list)


def _crop_batch(audio: Sequence[np.ndarray], batch: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    out = np.zeros((batch, 1, length), dtype=np.float32)
    for b in range(batch):
        clip = audio[int(rng.integers(len(audio)))]
        if clip.shape[0] > length:
            start = int(rng.integers(clip.shape[0] - length + 1))
            out[b, 0] = clip[start : start + length]
        else:
            out[b, 0, : clip.shape[0]] = clip
    return torch.from_numpy(out)


def train_offline_codec(
    audio: Sequence[np.ndarray],
    cfg: CodecConfig,
    seed: int,
    *,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 50,
) -> TrainResult:
    """Train ``dac.DAC(**cfg.offline)`` on mono float32 clips at ``cfg.offline.sample_rate``.

    Stops after ``cfg.train.steps`` steps or ``cfg.train.max_minutes`` of wall time, whichever comes first
    (``steps`` is the reproducible criterion; the time cap only protects the pipeline's budget). Trains on
    ``cfg.train.device``; the returned model is on the CPU, in eval mode.
    """
    tc, arch = cfg.train, cfg.offline
    if not audio:
        raise ValueError("no training audio: the train split is empty")
    if math.prod(arch.encoder_rates) != math.prod(arch.decoder_rates):
        raise ValueError(f"codec.offline: encoder_rates {arch.encoder_rates} and decoder_rates {arch.decoder_rates} "
                         "must have the same product (the hop length)")
    odd = [r for r in [*arch.encoder_rates, *arch.decoder_rates] if r % 2]
    if odd:
        raise ValueError(f"codec.offline: rates must be even (got {odd}): dac's strided convolutions then map "
                         "T frames to exactly T * hop samples")
    device = resolve_device(tc.device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = _new_dac(arch.dac_kwargs()).to(device)
    model.train()
    hop = int(model.hop_length)
    length = max(hop, round(tc.segment_s * arch.sample_rate) // hop * hop)
    mel_loss = MultiScaleMelLoss(arch.sample_rate).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.8, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: tc.lr_final_ratio + (1 - tc.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * min(s / tc.steps, 1.0)))
    )
    history: list[dict[str, float]] = []
    running: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per step
    t0 = time.monotonic()
    step = 0
    bar = tqdm(total=tc.steps, desc="codec train", unit="step", disable=not progress)
    while step < tc.steps and time.monotonic() - t0 < tc.max_minutes * 60:
        x = _crop_batch(audio, tc.batch_size, length, rng).to(device, non_blocking=True)
        out = model(x, arch.sample_rate)
        parts = {
            "mel": mel_loss(out["audio"], x),
            "l1": (out["audio"] - x).abs().mean(),
            "commitment": out["vq/commitment_loss"].mean(),
            "codebook": out["vq/codebook_loss"].mean(),
        }
        loss = (
            tc.mel_weight * parts["mel"]
            + tc.l1_weight * parts["l1"]
            + tc.commitment_weight * parts["commitment"]
            + tc.codebook_weight * parts["codebook"]
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        sched.step()
        step += 1
        for k, v in {"loss": loss, **parts}.items():
            running[k] = running[k] + v.detach() if k in running else v.detach().clone()
        if step % log_every == 0 or step == tc.steps:
            n = step % log_every or log_every
            entry = {k: float(v) / n for k, v in running.items()}
            entry["step"] = float(step)
            history.append(entry)
            running = {}
            bar.set_postfix(loss=f"{entry['loss']:.3f}", mel=f"{entry['mel']:.3f}")
            if on_log:
                on_log(step, entry)
        bar.update(1)
    bar.close()
    wall_s = time.monotonic() - t0
    return TrainResult(model=model.cpu().eval(), steps=step, wall_s=wall_s, device=str(device), history=history)


@torch.no_grad()
def reconstruct(codec: Codec, wav: np.ndarray) -> np.ndarray:
    """Encode and decode one mono clip; output trimmed to the input length."""
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).view(1, 1, -1)
    y = codec.decode(codec.encode(x))
    return y[0, 0, : x.shape[-1]].cpu().numpy()


def log_mel_distance(a: np.ndarray, b: np.ndarray, sample_rate: int) -> float:
    """Mean absolute log10-mel difference (n_fft ≈ 32 ms): a rough, weight-free reconstruction error."""
    n_fft = 1 << int(np.ceil(np.log2(0.032 * sample_rate)))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=64, power=1.0)
    ta, tb = (torch.log10(mel(torch.from_numpy(np.asarray(v, np.float32))).clamp(min=1e-5)) for v in (a, b))
    return float((ta - tb).abs().mean())


def quality_gate(
    codec: Codec,
    clips: Sequence[tuple[str, np.ndarray]],
    events: Mapping[str, np.ndarray],
    gate: CodecGateConfig,
    *,
    progress: bool = True,
    on_clip: Callable[[str, np.ndarray, np.ndarray, int], None] | None = None,
) -> dict[str, Any]:
    """Onset event F1 (micro-averaged over clips) on original vs reconstructed audio, against true event times.

    ``clips`` are ``(clip_id, mono audio at codec.sample_rate)``; ``events[clip_id]`` the true onset times (s).
    The gate passes when the reconstruction's F1 is at most ``gate.max_gap`` below the original's.
    ``on_clip(clip_id, original, reconstructed, sample_rate)`` sees every pair (the stage logs a few to MLflow to listen to).
    """
    from vaura.onsets import detect_onsets, event_f1

    if not clips:
        raise ValueError("quality gate: no validation clips to evaluate")
    sr = codec.sample_rate
    totals = {name: {"tp": 0, "fp": 0, "fn": 0} for name in ("original", "reconstructed")}
    offsets: dict[str, list[float]] = {"original": [], "reconstructed": []}
    mel_dist = []
    for clip, wav in tqdm(clips, desc="codec gate", unit="clip", disable=not progress):
        truth = np.asarray(events.get(clip, np.zeros(0)), dtype=np.float64)
        rec = reconstruct(codec, wav)
        mel_dist.append(log_mel_distance(wav, rec, sr))
        if on_clip:
            on_clip(clip, wav, rec, sr)
        for name, audio in (("original", wav), ("reconstructed", rec)):
            m = event_f1(detect_onsets(audio, sr), truth, tol=gate.tolerance_s)
            for k in ("tp", "fp", "fn"):
                totals[name][k] += int(m[k])
            if m["tp"]:
                offsets[name].append(m["mean_abs_offset_ms"] * m["tp"])
    out: dict[str, Any] = {"n_clips": len(clips), "n_events": totals["original"]["tp"] + totals["original"]["fn"]}
    for name, t in totals.items():
        p = t["tp"] / (t["tp"] + t["fp"]) if t["tp"] + t["fp"] else 0.0
        r = t["tp"] / (t["tp"] + t["fn"]) if t["tp"] + t["fn"] else 0.0
        out[f"f1_{name}"] = 2 * p * r / (p + r) if p + r else 0.0
        out[f"precision_{name}"] = p
        out[f"recall_{name}"] = r
        out[f"mean_abs_offset_ms_{name}"] = sum(offsets[name]) / t["tp"] if t["tp"] else float("nan")
    out["f1_gap"] = out["f1_original"] - out["f1_reconstructed"]
    out["gate_max_gap"] = gate.max_gap
    out["gate_pass"] = bool(out["f1_gap"] <= gate.max_gap)
    out["log_mel_distance"] = float(np.mean(mel_dist))
    return out
