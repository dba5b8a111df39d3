"""The ``codec`` stage's library side: get the offline stand-in's weights (trained here or shipped) and gate them.

Two ways to weights, chosen by ``codec.train.source``:
- ``train``: train the tiny DAC on the benchmark's TRAIN clips (``codec.train.steps`` steps).
- ``shipped``: use ``codec.train.shipped_path`` (committed to the repo, a few MB), made by this very stage with
  ``vaura codec --params params.yaml --train --ship``. Its recorded provenance (architecture, training knobs,
  seed, fingerprint of the training data) must equal what the current params and data would train, otherwise
  the stage refuses it and says how to retrain. This keeps ``make demo`` within its CPU budget.
Either way the quality gate runs on the VAL clips and goes to ``metrics.json``.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from tqdm import tqdm

from vaura.codec.codec import (
    Codec,
    codec_from_offline_checkpoint,
    load_codec,
    offline_checkpoint,
    offline_codec_path,
    read_offline_checkpoint,
)
from vaura.codec.config import CodecConfig
from vaura.codec.train import quality_gate, train_offline_codec
from vaura.config import ConfigError
from vaura.io import atomic_torch_save, atomic_write_json
from vaura.weights import WeightsError

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


def run_stage(
    params: Mapping[str, Any],
    cfg: CodecConfig,
    *,
    root: str | Path = ".",
    force_train: bool = False,
    ship: bool = False,
    progress: bool = True,
    on_train_log: Callable[[int, dict[str, float]], None] | None = None,
    on_gate_clip: Callable[[str, np.ndarray, np.ndarray, int], None] | None = None,
) -> dict[str, Any]:
    """Run the ``codec`` stage; returns the metrics also written to ``<data>/codec/metrics.json``."""
    t0 = time.monotonic()
    if cfg.kind == "offline" and not 1 <= cfg.n_quantizers <= cfg.offline.n_codebooks:
        raise ConfigError(f"params.codec.n_quantizers={cfg.n_quantizers} must be in [1, codec.offline.n_codebooks="
                          f"{cfg.offline.n_codebooks}] (checked before any training)")
    root = Path(root)
    data_rel = params.get("paths", {}).get("data", "data")
    data_dir = root / data_rel
    seed = int(params.get("seed", 0))
    out_dir = data_dir / "codec"
    inputs = read_inputs(data_dir, cfg, seed)
    metrics: dict[str, Any] = {"kind": cfg.kind}

    if cfg.kind == "dac44":
        if force_train or ship:
            raise CodecDataError("--train/--ship apply to the offline stand-in only (codec.kind: offline)")
        codec = load_codec(cfg, root)
        metrics["source"] = "pretrained"
    else:
        expected = provenance(cfg, seed, data_fingerprint(inputs.train, inputs.events_table))
        if force_train or ship or cfg.train.source == "train":
            if inputs.train.empty:
                raise CodecDataError(f"{data_dir / 'clips' / 'manifest.csv'}: no TRAIN clips to train the codec on")
            audio = read_clip_audio(list(inputs.train["path"]), cfg.offline.sample_rate, "codec train audio", progress)
            result = train_offline_codec(audio, cfg, seed, progress=progress, on_log=on_train_log)
            if result.steps < cfg.train.steps:  # how far a time cap gets depends on the machine's load
                raise ConfigError(f"params.codec.train.max_minutes={cfg.train.max_minutes:g} stopped training at step "
                                  f"{result.steps} of codec.train.steps={cfg.train.steps}: a time-capped codec is no "
                                  "reproduction of its params and is not saved; raise codec.train.max_minutes")
            blob = offline_checkpoint(
                result.model,
                cfg.offline.dac_kwargs(),
                cfg.n_quantizers,
                provenance=expected,
                steps_done=result.steps,
                train_wall_s=result.wall_s,
                history=result.history,
                train_device=result.device,
            )
            if ship:
                shipped = root / cfg.train.shipped_path
                atomic_torch_save(shipped, blob)
            metrics["source"] = "trained"
        else:
            shipped = root / cfg.train.shipped_path
            try:
                blob = read_offline_checkpoint(shipped)
            except WeightsError as exc:
                raise WeightsError(f"{exc}; {RETRAIN_HINT}") from exc
            problems = provenance_mismatches(blob, expected)
            if problems:
                raise WeightsError(
                    f"{shipped}: shipped codec weights were not trained with the current params/data: "
                    + "; ".join(problems) + f". {RETRAIN_HINT}"
                )
            blob = {**blob, "n_quantizers": cfg.n_quantizers}
            metrics["source"] = "shipped"
        metrics["train_steps"] = int(blob["steps_done"])
        metrics["train_wall_s"] = float(blob["train_wall_s"])
        metrics["train_device"] = str(blob.get("train_device", "cpu"))
        if blob.get("history"):
            metrics.update({f"train_final_{k}": v for k, v in blob["history"][-1].items() if k != "step"})
        codec_path = offline_codec_path(root, data_rel)
        atomic_torch_save(codec_path, blob)
        codec = codec_from_offline_checkpoint(blob, cfg.n_quantizers, source=str(codec_path))
        metrics["n_train_clips"] = len(inputs.train)

    metrics.update(_codec_facts(codec))
    val_audio = read_clip_audio(list(inputs.val["path"]), codec.sample_rate, "codec gate audio", progress)
    clips = list(zip(inputs.val["clip"].astype(str), val_audio))
    metrics.update(quality_gate(codec, clips, inputs.events, cfg.gate, progress=progress, on_clip=on_gate_clip))
    metrics["stage_wall_s"] = time.monotonic() - t0
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _codec_facts(codec: Codec) -> dict[str, Any]:
    return {
        "sample_rate": codec.sample_rate,
        "hop_length": codec.hop_length,
        "frame_rate": codec.frame_rate,
        "n_codebooks": codec.n_codebooks,
        "codebook_size": codec.codebook_size,
        "codebook_dim": codec.codebook_dim,
        "n_params": int(sum(p.numel() for p in codec.parameters())),
    }
