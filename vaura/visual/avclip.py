"""Offline stand-in for Segment-AVCLIP: pretrain the tiny Motionformer contrastively on synthetic clips.

Segment-AVCLIP learns visual features by matching each 0.64 s video segment with the audio of the same
segment. We do the same at CPU scale: every batch holds several segments per clip, starting at random
*token* boundaries (multiples of 2 frames = 80 ms), so the negatives include segments of the same clip shifted
by as little as one token. Telling those apart requires knowing *when* within the segment an impact happens,
not just which objects are in the clip, which is what the V-AURA decoder needs from its visual condition.

The visual segment embedding keeps the token order (the 8 tokens are concatenated before the projection) and
the audio encoder (a small 1-D CNN on log-mel, written here) keeps time order too, so timing can be matched.
Downstream (``cache``) uses only the Motionformer, frozen by :class:`vaura.visual.encoder.VisualEncoder`; the
audio tower and heads are saved beside it so a shipped stand-in can be re-measured.

Quality is measured on VAL clips the training never saw: within-clip segment retrieval (which of the
token-shifted audio segments matches a video segment) and linear probes on the frozen per-token features
(does an impact happen in this 80 ms token? which object is it?) next to the same probes on a randomly
initialised encoder of the same size.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vaura.devices import resolve_device
from vaura.visual.config import AVClipConfig, VisualConfig
from vaura.visual.encoder import VisualEncoder, size_from_config
from vaura.visual.motionformer import MotionFormer

FPS = 25
MEL_HOP_S = 0.01  # 100 mel frames/s: exactly 4 per video frame, 8 per feature token


class AVClipDataError(ValueError):
    """Training data the stage cannot use (names the file and the reason)."""


@dataclass
class ClipArrays:
    """Decoded clips: frames uint8 ``[N, T, crop, crop, 3]`` and log-mel ``[N, n_mels, 4·T]`` (time-aligned)."""

    clips: list[str]
    frames: np.ndarray
    mels: torch.Tensor


def log_mel(audio: np.ndarray, cfg: AVClipConfig) -> torch.Tensor:
    """``[S]`` at ``cfg.sample_rate`` -> ``log(mel + 1e-5)`` ``[n_mels, S / hop]`` (frame k starts at k·10 ms)."""
    hop = round(cfg.sample_rate * MEL_HOP_S)
    wav = torch.as_tensor(audio, dtype=torch.float32)
    wav = F.pad(wav, (0, 3 * hop))  # frame k covers [k·hop, k·hop + 4·hop): starts at its own timestamp
    return torch.log(_mel_transform(cfg.sample_rate, cfg.n_mels)(wav) + 1e-5)


@functools.lru_cache(maxsize=4)
def _mel_transform(sample_rate: int, n_mels: int) -> nn.Module:
    import torchaudio

    hop = round(sample_rate * MEL_HOP_S)
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=4 * hop, win_length=4 * hop, hop_length=hop, n_mels=n_mels, center=False
    )


def load_clips(
    paths: list[Path], names: list[str], vcfg: VisualConfig, cfg: AVClipConfig, progress: bool = True
) -> tuple[ClipArrays, list[tuple[str, str]]]:
    """Decode each clip once (25 fps, short side + centre crop from params.visual; mono audio at 16 kHz).

    Clips that cannot be decoded are skipped and returned as ``(clip, reason)`` pairs; all clips are cut to the
    shortest one so they stack.
    """
    from vaura.media import MediaError, read_audio, read_video

    frames, mels, kept, rejected = [], [], [], []
    for path, name in tqdm(list(zip(paths, names)), desc="avclip: decode", unit="clip", disable=not progress):
        try:
            v = read_video(path, fps=FPS, short_side=vcfg.short_side, crop=vcfg.crop)
            a = read_audio(path, cfg.sample_rate, duration=len(v) / FPS)
        except MediaError as exc:
            rejected.append((name, str(exc)))
            continue
        if len(v) < vcfg.frames_per_segment + vcfg.tubelet:
            rejected.append((name, f"{path}: {len(v)} frames, avclip needs more than one {vcfg.frames_per_segment}-frame segment"))
            continue
        frames.append(v)
        mels.append(log_mel(a, cfg))
        kept.append(name)
    if not kept:
        raise AVClipDataError(f"none of the {len(names)} clips could be used: {rejected[:3]}")
    n_frames = min(len(f) for f in frames)
    data = ClipArrays(kept, np.stack([f[:n_frames] for f in frames]), torch.stack([m[:, :4 * n_frames] for m in mels]))
    return data, rejected


class AudioSegmentEncoder(nn.Module):
    """Log-mel segment ``[B, n_mels, 4·F]`` -> ``[B, tokens, C]``: strided 1-D convs down to one step per token."""

    def __init__(self, n_mels: int, channels: int, n_tokens: int, frames_per_segment: int) -> None:
        super().__init__()
        steps = int(round(math.log2(4 * frames_per_segment / n_tokens)))
        if 2**steps * n_tokens != 4 * frames_per_segment:
            raise ValueError("mel frames per segment must be a power of two times the number of tokens")
        layers: list[nn.Module] = [nn.Conv1d(n_mels, channels, 5, padding=2), nn.GELU()]
        for _ in range(steps):
            layers += [nn.Conv1d(channels, channels, 4, stride=2, padding=1), nn.GroupNorm(1, channels), nn.GELU()]
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel).transpose(1, 2)


class SegmentAVCLIP(nn.Module):
    """Visual Motionformer + audio CNN, each followed by an order-keeping projection to a shared space."""

    def __init__(self, visual: MotionFormer, cfg: AVClipConfig) -> None:
        super().__init__()
        sz = visual.size
        self.visual = visual
        self.audio = AudioSegmentEncoder(cfg.n_mels, cfg.audio_channels, sz.tokens_per_segment, sz.frames)
        # BatchNorm before the projections: synthetic frames are mostly static background, so segment features
        # differ little at initialisation; standardising across the batch keeps InfoNCE from collapsing.
        self.v_head = nn.Sequential(nn.Flatten(1), nn.BatchNorm1d(sz.dim * sz.tokens_per_segment),
                                    nn.Linear(sz.dim * sz.tokens_per_segment, cfg.embed_dim))
        self.a_head = nn.Sequential(nn.Flatten(1), nn.BatchNorm1d(cfg.audio_channels * sz.tokens_per_segment),
                                    nn.Linear(cfg.audio_channels * sz.tokens_per_segment, cfg.embed_dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def embed_video(self, segs: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` in [-1, 1] -> unit vectors ``[B, E]``."""
        return F.normalize(self.v_head(self.visual(segs.unsqueeze(0))[0]), dim=-1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.a_head(self.audio(mel)), dim=-1)

    def loss(self, segs: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Symmetric InfoNCE over the batch; returns (loss, video->audio top-1 accuracy)."""
        v, a = self.embed_video(segs), self.embed_audio(mel)
        logits = self.log_scale.clamp(max=math.log(100.0)).exp() * v @ a.T
        target = torch.arange(len(v), device=v.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        return loss, float((logits.argmax(1) == target).float().mean())


def _to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, F, H, W, 3]`` -> ``[B, 3, F, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def sample_batch(
    data: ClipArrays, vcfg: VisualConfig, cfg: AVClipConfig, mel_norm: tuple[float, float], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_clips`` clips × ``segments_per_clip`` distinct token-aligned starts; random h-flip per segment."""
    n_clips, n_frames = data.frames.shape[:2]
    seg = vcfg.frames_per_segment
    starts_all = np.arange(0, n_frames - seg + 1, vcfg.tubelet)
    clip_idx = rng.choice(n_clips, size=min(cfg.batch_clips, n_clips), replace=False)
    vids, mels = [], []
    for c in clip_idx:
        for s in rng.choice(starts_all, size=min(cfg.segments_per_clip, len(starts_all)), replace=False):
            v = data.frames[c, s:s + seg]
            vids.append(v[:, :, ::-1] if rng.random() < 0.5 else v)
            mels.append(data.mels[c, :, 4 * s:4 * (s + seg)])
    mean, std = mel_norm
    return _to_input(np.ascontiguousarray(np.stack(vids))), (torch.stack(mels) - mean) / std


def train_avclip(
    data: ClipArrays,
    vcfg: VisualConfig,
    cfg: AVClipConfig,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[SegmentAVCLIP, dict[str, Any]]:
    """Contrastive pretraining; returns the trained two-tower model (eval mode) and training facts."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = resolve_device(vcfg.device)
    model = SegmentAVCLIP(MotionFormer(size_from_config(vcfg)), cfg).to(device)
    mel_norm = (float(data.mels.mean()), float(data.mels.std()) + 1e-6)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps))
    )
    model.train()
    t0 = time.monotonic()
    ema_loss, ema_acc, step = None, None, 0
    bar = tqdm(range(cfg.steps), desc="avclip: train", unit="step", disable=not progress)
    for step in bar:
        if cfg.max_seconds > 0 and time.monotonic() - t0 > cfg.max_seconds:
            break
        segs, mel = sample_batch(data, vcfg, cfg, mel_norm, rng)
        loss, acc = model.loss(segs.to(device), mel.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.9 * ema_loss + 0.1 * loss.item()
        ema_acc = acc if ema_acc is None else 0.9 * ema_acc + 0.1 * acc
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.2f}")
        if log is not None and step % 10 == 0:
            log(step, {"avclip/train_loss": loss.item(), "avclip/train_acc": acc})
    else:
        step = cfg.steps
    facts = {
        "steps_done": int(step), "train_seconds": round(time.monotonic() - t0, 1),
        "final_loss_ema": None if ema_loss is None else round(ema_loss, 4),
        "final_batch_acc_ema": None if ema_acc is None else round(ema_acc, 4),
        "batch_segments": min(cfg.batch_clips, len(data.clips)) * cfg.segments_per_clip,
        "mel_mean": mel_norm[0], "mel_std": mel_norm[1],
    }
    model.eval()
    return model, facts


@torch.no_grad()
def retrieval_metrics(
    model: SegmentAVCLIP, data: ClipArrays, vcfg: VisualConfig, mel_norm: tuple[float, float]
) -> dict[str, float]:
    """Within-clip segment retrieval on held-out clips: candidates are all token-shifted audio segments.

    ``within_clip_top1``: the matching start is ranked first; ``within_clip_mae_ms``: mean |error| of the
    retrieved start; ``chance_top1``: 1 / number of candidates.
    """
    seg, step = vcfg.frames_per_segment, vcfg.tubelet
    device = next(model.parameters()).device
    n_frames = data.frames.shape[1]
    starts = np.arange(0, n_frames - seg + 1, step)
    mean, std = mel_norm
    top1, errs = [], []
    for c in range(len(data.clips)):
        v = model.embed_video(_to_input(np.stack([data.frames[c, s:s + seg] for s in starts])).to(device))
        a = model.embed_audio(
            ((torch.stack([data.mels[c, :, 4 * s:4 * (s + seg)] for s in starts]) - mean) / std).to(device)
        )
        pred = (v @ a.T).argmax(1).cpu().numpy()
        top1.append(np.mean(pred == np.arange(len(starts))))
        errs.append(np.mean(np.abs(starts[pred] - starts)) / FPS * 1000)
    return {"within_clip_top1": float(np.mean(top1)), "within_clip_mae_ms": float(np.mean(errs)),
            "chance_top1": 1.0 / len(starts), "candidates_per_clip": int(len(starts))}


def token_labels(events: pd.DataFrame, clips: list[str], n_tokens: int, token_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-token ground truth: ``hit [N, n_tokens]`` (an event's time falls in the token) and ``cls`` (its class
    index, -1 where none; the later event wins when two share a token)."""
    names = sorted(events["class"].unique())
    hit = np.zeros((len(clips), n_tokens), bool)
    cls = np.full((len(clips), n_tokens), -1, int)
    by_clip = {c: g for c, g in events.groupby("clip")}
    for i, c in enumerate(clips):
        for t, name in zip(by_clip.get(c, events.iloc[:0])["time_s"], by_clip.get(c, events.iloc[:0])["class"]):
            k = int(math.floor(t / token_s + 1e-9))
            if 0 <= k < n_tokens:
                hit[i, k] = True
                cls[i, k] = names.index(name)
    return hit, cls


def probe_metrics(
    encoder: VisualEncoder, fit: ClipArrays, test: ClipArrays, events: pd.DataFrame
) -> dict[str, float]:
    """Linear probes on frozen per-token features (fit on ``fit`` clips, scored on ``test`` clips).

    ``event_ap``: average precision of "an impact happens in this 80 ms token" (chance = positive rate);
    ``class_acc``: which of the object classes made the impact, on event tokens (chance = 1 / classes).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    token_s = 1.0 / encoder.frame_rate

    def feats(data: ClipArrays) -> np.ndarray:
        out = encoder.encode_many(list(data.frames))
        return torch.stack(out).numpy()  # [N, tokens, D]

    xf, xt = feats(fit), feats(test)
    n_tok = xf.shape[1]
    hf, cf = token_labels(events, fit.clips, n_tok, token_s)
    ht, ct = token_labels(events, test.clips, n_tok, token_s)
    d = xf.shape[-1]
    mu, sd = xf.reshape(-1, d).mean(0), xf.reshape(-1, d).std(0) + 1e-6
    xf, xt = (xf - mu) / sd, (xt - mu) / sd
    det = LogisticRegression(max_iter=2000, class_weight="balanced", C=1.0)
    det.fit(xf.reshape(-1, d), hf.reshape(-1))
    score = det.decision_function(xt.reshape(-1, d)).reshape(ht.shape)
    out = {
        "event_ap": float(average_precision_score(ht.reshape(-1), score.reshape(-1))),
        "event_chance_ap": float(ht.mean()),
    }
    fit_mask, test_mask = cf.reshape(-1) >= 0, ct.reshape(-1) >= 0
    if len(np.unique(cf.reshape(-1)[fit_mask])) > 1 and test_mask.any():
        clf = LogisticRegression(max_iter=2000, C=1.0)
        clf.fit(xf.reshape(-1, d)[fit_mask], cf.reshape(-1)[fit_mask])
        out["class_acc"] = float(np.mean(clf.predict(xt.reshape(-1, d)[test_mask]) == ct.reshape(-1)[test_mask]))
        out["class_chance"] = 1.0 / events["class"].nunique()
    return out


# Knobs that only change how the stage *measures* (not the trained weights): a shipped file stays valid when
# they differ.
EVAL_ONLY_KEYS = ("source", "shipped", "max_val_clips", "probe_clips")


def _training_knobs(cfg: AVClipConfig) -> dict[str, Any]:
    from vaura.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in EVAL_ONLY_KEYS}


def load_shipped(path: Path, vcfg: VisualConfig, cfg: AVClipConfig) -> tuple[SegmentAVCLIP, dict[str, Any]]:
    """The two-tower model saved by ``vaura avclip --ship``; it must match params ``visual`` and ``avclip``."""
    from vaura.weights import WeightsError, load_strict, read_checkpoint

    if not path.is_file():
        raise WeightsError(
            f"shipped avclip stand-in not found: {path}. Produce it with `vaura avclip --params params.yaml "
            "--ship`, or set params avclip.source: train"
        )
    obj = read_checkpoint(path, "vaura avclip stand-in (vaura avclip --ship)")
    if "towers" not in obj or "size" not in obj or "avclip" not in obj:
        raise WeightsError(f"{path}: not a shipped avclip file (needs 'size', 'avclip' and 'towers')")
    size = size_from_config(vcfg)
    if obj["size"] != size.to_dict():
        diffs = {k: (v, size.to_dict().get(k)) for k, v in obj["size"].items() if size.to_dict().get(k) != v}
        raise WeightsError(f"{path}: trained for another visual architecture (file vs params: {diffs}); "
                              "rerun `vaura avclip --ship` or set avclip.source: train")
    mine, theirs = _training_knobs(cfg), {k: v for k, v in obj["avclip"].items() if k not in EVAL_ONLY_KEYS}
    if mine != theirs:
        diffs = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
        raise WeightsError(f"{path}: trained with other avclip params (file vs params: {diffs}); "
                              "rerun `vaura avclip --ship` or set avclip.source: train")
    model = SegmentAVCLIP(MotionFormer(size), cfg)
    load_strict(model, obj["towers"], str(path))
    facts = dict(obj.get("train_facts", {}))
    return model.to(resolve_device(vcfg.device)).eval(), facts


def run_stage(
    params: dict[str, Any],
    vcfg: VisualConfig,
    cfg: AVClipConfig,
    root: Path,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
    force_train: bool = False,
    ship: bool = False,
) -> dict[str, Any]:
    """The ``avclip`` stage: get the stand-in (train on TRAIN clips, or the shipped file), measure it on VAL
    clips, write ``<data>/avclip/``. ``ship`` trains and also writes the file ``avclip.shipped`` points to."""
    from vaura.data.manifest import read_manifest
    from vaura.io import atomic_torch_save, atomic_write_csv, atomic_write_json
    from vaura.visual.encoder import standin_payload

    t_start = time.monotonic()
    seed = int(params.get("seed", 0))
    data_dir = root / params.get("paths", {}).get("data", "data")
    manifest_path = data_dir / "clips" / "manifest.csv"
    manifest = read_manifest(manifest_path).sort_values("clip")
    train_now = force_train or ship or cfg.source == "train"
    n_train = cfg.max_train_clips if train_now else cfg.probe_clips
    tr = manifest[manifest["split"] == "train"].head(n_train)
    va = manifest[manifest["split"] == "val"].head(cfg.max_val_clips)
    if tr.empty or va.empty:
        raise AVClipDataError(f"{manifest_path}: need train and val clips, got {len(tr)} train, {len(va)} val")
    train, rej_tr = load_clips([Path(p) for p in tr["path"]], list(tr["clip"]), vcfg, cfg, progress)
    val, rej_va = load_clips([Path(p) for p in va["path"]], list(va["clip"]), vcfg, cfg, progress)
    t_decode = time.monotonic() - t_start

    if train_now:
        model, facts = train_avclip(train, vcfg, cfg, seed=seed, progress=progress, log=log)
        facts |= {"train_clips": len(train.clips), "data_seed": seed, "data_manifest": str(manifest_path)}
    else:
        model, facts = load_shipped(root / cfg.shipped, vcfg, cfg)
    mel_norm = (facts["mel_mean"], facts["mel_std"])
    metrics: dict[str, Any] = {
        "source": "trained" if train_now else "shipped", "val_clips": len(val.clips),
        "rejected": len(rej_tr) + len(rej_va), "decode_seconds": round(t_decode, 1),
        **{k: v for k, v in facts.items() if not k.startswith(("mel_", "data_manifest"))},
        "retrieval": retrieval_metrics(model, val, vcfg, mel_norm),
    }
    events_path = data_dir / "raw" / "events.csv"
    if events_path.is_file():
        events = pd.read_csv(events_path, dtype={"clip": str, "class": str})
        fit = ClipArrays(train.clips[: cfg.probe_clips], train.frames[: cfg.probe_clips], train.mels[: cfg.probe_clips])
        device = resolve_device(vcfg.device)
        trained = VisualEncoder(model.visual, vcfg.short_side, vcfg.batch_size, device)
        torch.manual_seed(seed)
        untrained = VisualEncoder(MotionFormer(size_from_config(vcfg)), vcfg.short_side, vcfg.batch_size, device)
        metrics["probe"] = probe_metrics(trained, fit, val, events)
        metrics["probe_random_init"] = probe_metrics(untrained, fit, val, events)
    else:
        metrics["probe"] = f"skipped: no ground truth at {events_path} (only the synthetic benchmark has it)"
    metrics["stage_seconds"] = round(time.monotonic() - t_start, 1)

    out = data_dir / "avclip"
    towers = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = standin_payload(model.visual, {"avclip": dict(_training_knobs(cfg)), "seed": seed, "towers": towers,
                                             "train_facts": facts})
    atomic_torch_save(out / "visual.pt", payload)
    if ship:
        atomic_torch_save(root / cfg.shipped, payload)
    atomic_write_json(out / "metrics.json", metrics)
    rejected = pd.DataFrame(rej_tr + rej_va, columns=["clip", "reason"])
    atomic_write_csv(out / "rejected.csv", rejected)
    return metrics
