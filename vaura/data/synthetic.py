"""The synthetic benchmark: videos whose sound events are known exactly, so sync and relevance can be measured.

Each clip shows objects falling onto a floor; every contact is an *event* with a class-specific look (shape and
colour) and sound (timbre), heard at the exact contact time. Grey distractors glide around silently and a little
background noise is always there. A known fraction of training clips is made irrelevant the way VGGSound is
(audio swapped with another clip, events shifted 0.4-1 s, unrelated music/narration); only ``relevance.csv``
says which. Everything about a clip is drawn from its own seed, so clips can be rendered in parallel, resumed,
and re-rendered bit-identically.
"""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from vaura.config import bounded
from vaura.io import atomic_write_csv, atomic_write_json
from vaura.media import write_video

SPLITS = ("train", "val", "test")
# (name, shape, RGB colour): each class is one distinct visible object and one distinct timbre (_timbre()).
CLASSES = (
    ("woodblock", "square", (235, 140, 30)),
    ("bell", "triangle", (240, 220, 40)),
    ("drum", "circle", (220, 40, 40)),
    ("hihat", "diamond", (40, 220, 230)),
    ("pluck", "ring", (60, 210, 70)),
    ("glass", "bar", (210, 60, 220)),
)
IRRELEVANT_KINDS = ("swapped", "shifted", "music")
FALL_S = 0.4  # an object appears (fading in while still slow) and falls for this long before the contact...
DROP = 0.35  # ...from this fraction of the frame height: its last step per frame stays smaller than the object,
# so frame differences grow until the contact, where the squash and the dust it kicks up add the largest change
SQUASH_S = 0.08  # it lies squashed on the floor for this long...
FADE_S = 0.4  # ...then fades out slowly (small frame differences: the motion peak stays at the contact)
FIRST_EVENT_S = 0.3
TAIL_S = 0.25
SHIFT_RANGE_S = (0.4, 1.0)


@dataclass
class SyntheticConfig:
    """Params section ``synthetic``: benchmark size and rendering format."""

    n_train: int = bounded(160, ge=0)
    n_val: int = bounded(24, ge=0)
    n_test: int = bounded(24, ge=0)
    duration_s: float = bounded(5.12, gt=0)
    fps: float = bounded(25.0, gt=0)
    size: int = bounded(256, ge=1)
    sample_rate: int = bounded(44100, ge=1)
    min_events: int = bounded(2, ge=0)
    max_events: int = bounded(8, ge=0)
    min_gap_s: float = bounded(0.15, ge=0)
    max_distractors: int = bounded(2, ge=0)
    noise_db: float = bounded(-50.0, le=0)
    irrelevant_fraction: float = bounded(0.2, ge=0, le=1)
    workers: int = bounded(2, ge=1)


@dataclass
class ClipPlan:
    """Everything needed to render one clip; a pure function of (seed, split, index)."""

    clip: str
    split: str
    index: int
    kind: str  # ok | swapped | shifted | music
    events: list[tuple[float, int]]  # visual (contact time, class)
    audio_events: list[tuple[float, int, float]]  # heard (time, class, amplitude)
    objects_x: list[float]
    distractors: list[tuple[int, float, float, float, float, float]]  # shape, x0, y, amp_px, freq_hz, phase
    audio_seed: int


def _clip_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _event_times(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    n = int(rng.integers(cfg.min_events, cfg.max_events + 1))
    lo, hi = FIRST_EVENT_S, cfg.duration_s - TAIL_S
    while True:  # rejection sampling; dense enough settings fail fast in _validate
        t = np.sort(rng.uniform(lo, hi, size=n))
        if n < 2 or np.diff(t).min() >= cfg.min_gap_s:
            return np.round(t, 4)


def _validate(cfg: SyntheticConfig) -> None:
    usable = cfg.duration_s - TAIL_S - FIRST_EVENT_S
    if not 1 <= cfg.min_events <= cfg.max_events:
        raise ValueError(f"synthetic: need 1 <= min_events <= max_events, got {cfg.min_events}, {cfg.max_events}")
    if (cfg.max_events - 1) * cfg.min_gap_s > 0.5 * usable:
        raise ValueError(f"synthetic: {cfg.max_events} events {cfg.min_gap_s} s apart do not fit in {cfg.duration_s} s clips")
    if not 0.0 <= cfg.irrelevant_fraction <= 1.0:
        raise ValueError(f"synthetic: irrelevant_fraction must be in [0, 1], got {cfg.irrelevant_fraction}")
    if cfg.size < 64 or cfg.size % 2:
        raise ValueError(f"synthetic: size must be even and >= 64, got {cfg.size}")


def _base_plan(seed: int, split: str, index: int, cfg: SyntheticConfig) -> ClipPlan:
    rng = _clip_rng(seed, split, index)
    times = _event_times(rng, cfg)
    classes = rng.integers(0, len(CLASSES), size=len(times))
    amps = rng.uniform(0.45, 0.9, size=len(times))
    xs = rng.uniform(0.15, 0.85, size=len(times)) * cfg.size
    n_dis = int(rng.integers(0, cfg.max_distractors + 1))
    distractors = [
        (int(rng.integers(0, len(CLASSES))), float(rng.uniform(0.25, 0.75) * cfg.size), float(rng.uniform(0.2, 0.5) * cfg.size),
         float(rng.uniform(0.05, 0.2) * cfg.size), float(rng.uniform(0.15, 0.5)), float(rng.uniform(0, 2 * np.pi)))
        for _ in range(n_dis)
    ]
    events = [(float(t), int(c)) for t, c in zip(times, classes)]
    return ClipPlan(
        clip=f"syn-{split}-{index:05d}", split=split, index=index, kind="ok", events=events,
        audio_events=[(t, c, float(a)) for (t, c), a in zip(events, amps)],
        objects_x=[float(x) for x in xs], distractors=distractors, audio_seed=int(rng.integers(2**31)),
    )


def plan_benchmark(cfg: SyntheticConfig, seed: int) -> list[ClipPlan]:
    """Plans of every clip, irrelevant training clips included (cheap: nothing is rendered)."""
    _validate(cfg)
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    plans = [_base_plan(seed, split, i, cfg) for split in SPLITS for i in range(counts[split])]
    train = [p for p in plans if p.split == "train"]
    n_bad = round(cfg.irrelevant_fraction * len(train))
    order = np.random.default_rng([seed, 99]).permutation(len(train))
    for j, idx in enumerate(order[:n_bad]):
        plan = train[idx]
        plan.kind = IRRELEVANT_KINDS[j % len(IRRELEVANT_KINDS)]
        rng = _clip_rng(seed, plan.split, plan.index, stream=1)
        if plan.kind == "swapped":
            donor = train[int((idx + 1 + rng.integers(0, len(train) - 1)) % len(train))] if len(train) > 1 else plan
            base = _base_plan(seed, donor.split, donor.index, cfg)  # the donor's own, un-modified sound
            plan.audio_events, plan.audio_seed = base.audio_events, base.audio_seed
        elif plan.kind == "shifted":
            shift = float(rng.uniform(*SHIFT_RANGE_S) * rng.choice([-1.0, 1.0]))
            plan.audio_events = [(t + shift, c, a) for t, c, a in plan.audio_events if 0.0 <= t + shift < cfg.duration_s - 0.05]
        else:
            plan.audio_events = []
    return plans


# ---------------------------------------------------------------- audio


def _timbre(cls: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One hit of class ``cls``, peak 1, starting at sample 0 with a sharp attack."""
    n = int(0.6 * sample_rate)
    t = np.arange(n) / sample_rate
    name = CLASSES[cls][0]
    if name == "woodblock":
        x = 0.7 * np.sin(2 * np.pi * 900 * t) * np.exp(-t / 0.025) + 0.4 * np.sin(2 * np.pi * 1870 * t) * np.exp(-t / 0.012)
    elif name == "bell":
        x = sum(a * np.sin(2 * np.pi * 520 * r * t) * np.exp(-t * r / 0.35) for r, a in ((1, 1), (2.76, 0.6), (5.4, 0.4), (8.93, 0.25)))
    elif name == "drum":
        freq = 60 + 140 * np.exp(-t / 0.03)
        x = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / 0.12)
        x[: int(0.004 * sample_rate)] += rng.uniform(-0.5, 0.5, int(0.004 * sample_rate))
    elif name == "hihat":
        noise = rng.standard_normal(n)
        x = np.diff(np.diff(noise, prepend=0), prepend=0) * np.exp(-t / 0.05)  # second difference: a high-pass
    elif name == "pluck":
        x = sum(np.sin(2 * np.pi * 220 * k * t) / k * np.exp(-t * k / 0.4) for k in range(1, 9))
    else:  # glass: click + high inharmonic ring
        x = (np.sin(2 * np.pi * 3200 * t) + 0.7 * np.sin(2 * np.pi * 4730 * t)) * np.exp(-t / 0.07)
        x[: int(0.002 * sample_rate)] += 1.0
    x = x * np.minimum(1.0, t / 0.001)  # 1 ms attack: sharp but click-free
    return (x / np.abs(x).max()).astype(np.float32)


def _music(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unrelated sound: a soft melody of sustained notes over a narration-like vowel buzz."""
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    pos = 0
    scale = 261.63 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    while pos < n:
        dur = int(rng.uniform(0.3, 0.8) * sample_rate)
        seg = t[: min(dur, n - pos)]
        f = rng.choice(scale)
        env = np.minimum(1.0, seg / 0.08) * np.minimum(1.0, (seg[-1] - seg + 1e-3) / 0.08)
        out[pos : pos + len(seg)] += 0.25 * env * (np.sin(2 * np.pi * f * seg) + 0.3 * np.sin(4 * np.pi * f * seg))
        pos += dur
    f0 = rng.uniform(110, 190) * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    buzz = sum(np.sin(2 * np.pi * np.cumsum(f0 * k) / sample_rate) / k for k in range(1, 12))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)))
    return (out + 0.12 * buzz * syllables ** 2).astype(np.float32)


def render_audio(plan: ClipPlan, cfg: SyntheticConfig) -> np.ndarray:
    """Mono float32 audio of the clip: the planned hits (or music) over low background noise."""
    n = round(cfg.duration_s * cfg.sample_rate)
    rng = np.random.default_rng(plan.audio_seed)
    audio = np.zeros(n, np.float32)
    if plan.kind == "music":
        audio += _music(n, cfg.sample_rate, rng)
    for t, cls, amp in plan.audio_events:
        hit = _timbre(cls, cfg.sample_rate, rng) * amp
        i = round(t * cfg.sample_rate)
        seg = hit[: n - i]
        audio[i : i + len(seg)] += seg
    noise = np.cumsum(rng.standard_normal(n)) * 0.02  # brown-ish rumble...
    noise = noise - np.convolve(noise, np.ones(441) / 441, mode="same") + rng.standard_normal(n) * 0.3
    noise *= 10 ** (cfg.noise_db / 20) / (np.sqrt(np.mean(noise**2)) + 1e-12)  # ...at noise_db dBFS RMS
    return np.clip(audio + noise.astype(np.float32), -1.0, 1.0)


# ---------------------------------------------------------------- video

def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    dx, dy = (xx - cx) / rx, (yy - cy) / ry
    if shape == "square":
        return (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    if shape == "circle":
        return dx**2 + dy**2 <= 1
    if shape == "triangle":
        return (np.abs(dy) <= 1) & (np.abs(dx) <= (dy + 1) / 2)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1
    if shape == "ring":
        r2 = dx**2 + dy**2
        return (r2 <= 1) & (r2 >= 0.35)
    return (np.abs(dx) <= 1) & (np.abs(dy) <= 0.45)  # bar


def _paint(frame: np.ndarray, shape: str, colour: np.ndarray, cx: float, cy: float, rx: float, ry: float, alpha: float) -> None:
    size = frame.shape[0]
    y0, y1 = max(0, int(cy - ry) - 1), min(size, int(cy + ry) + 2)
    x0, x1 = max(0, int(cx - rx) - 1), min(size, int(cx + rx) + 2)
    if y0 >= y1 or x0 >= x1 or alpha <= 0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    mask = _shape_mask(shape, yy + 0.5, xx + 0.5, cx, cy, rx, ry)
    region = frame[y0:y1, x0:x1]
    region[mask] = ((1 - alpha) * region[mask] + alpha * colour).astype(np.uint8)


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    floor = int(0.82 * size)
    ramp = np.linspace(25, 55, size)[:, None, None] * np.array([0.6, 0.7, 1.0])
    bg = np.broadcast_to(ramp, (size, size, 3)).copy()
    bg += rng.uniform(-6, 6, size=(size, size, 1))  # static texture: no motion, but not flat
    bg[floor:] = np.array([95, 70, 45]) + rng.uniform(-8, 8, size=(size - floor, size, 1))
    bg[floor : floor + 2] = 160
    return np.clip(bg, 0, 255).astype(np.uint8), floor


def render_frames(plan: ClipPlan, cfg: SyntheticConfig) -> np.ndarray:
    """uint8 [T, size, size, 3]: falling objects that touch the floor at the event times, plus distractors."""
    size = cfg.size
    n_frames = round(cfg.duration_s * cfg.fps)
    bg, floor = _background(size, np.random.default_rng([plan.audio_seed, 7]))
    r = 0.1 * size
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for k in range(n_frames):
        tau = k / cfg.fps
        frame = bg.copy()
        for shape_idx, x0, y, amp, freq, phase in plan.distractors:
            cx = x0 + amp * np.sin(2 * np.pi * freq * tau + phase)
            _paint(frame, CLASSES[shape_idx][1], np.array([150, 150, 150]), cx, y, 0.6 * r, 0.6 * r, 0.8)
        for (t, cls), cx in zip(plan.events, plan.objects_x):
            _, shape, colour = CLASSES[cls]
            rest_y = floor - r
            if t - FALL_S <= tau < t:  # falls from rest, accelerating: fastest right before contact
                u = (tau - (t - FALL_S)) / FALL_S
                cy = rest_y - DROP * size * (1.0 - u * u)
                _paint(frame, shape, np.array(colour), cx, cy, r, r, min(1.0, u / 0.4))
            elif t <= tau < t + SQUASH_S + FADE_S:  # squashed on the floor, then fading slowly away
                alpha = 1.0 - max(0.0, tau - t - SQUASH_S) / FADE_S
                _paint(frame, shape, np.array(colour), cx, floor - 0.7 * r, 1.25 * r, 0.7 * r, alpha)
                splash = 0.5 ** ((tau - t) * cfg.fps)  # dust kicked up by the contact, gone in a few frames
                _paint(frame, "square", np.array([235, 225, 200]), cx, floor + 0.3 * r, 1.8 * r, 0.3 * r, splash)
        frames[k] = frame
    return frames


def _render_clip(args: tuple[ClipPlan, SyntheticConfig, str]) -> str:
    plan, cfg, out_dir = args
    path = Path(out_dir) / f"{plan.clip}.mp4"
    write_video(path, render_frames(plan, cfg), cfg.fps, render_audio(plan, cfg), cfg.sample_rate)
    return plan.clip


def _label(plan: ClipPlan) -> str:
    counts = np.bincount([c for _, c in plan.events], minlength=len(CLASSES))
    return CLASSES[int(np.argmax(counts))][0]


def generate_benchmark(out_dir: str | Path, cfg: SyntheticConfig, seed: int) -> pd.DataFrame:
    """Render the benchmark into ``out_dir`` (MP4s + manifest/events/relevance CSVs); returns the manifest.

    Clips already present are kept (files are written atomically, so an existing file is complete), which
    makes an interrupted run resumable, unless ``synthetic.json`` shows they were rendered with another seed
    or config; the CSVs are always rewritten from the plans.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_benchmark(cfg, seed)
    # Clips rendered under another seed/config share names with ours but not content: drop them, so kept
    # files always match the ground truth written below. Stamped before rendering so a killed run resumes.
    stamp = {"seed": seed, **{k: v for k, v in asdict(cfg).items() if k != "workers"}}
    stamp_path = out_dir / "synthetic.json"
    if not stamp_path.exists() or json.loads(stamp_path.read_text()) != stamp:
        for old in out_dir.glob("syn-*.mp4"):
            old.unlink()
        atomic_write_json(stamp_path, stamp)
    todo = [p for p in plans if not (out_dir / f"{p.clip}.mp4").exists()]
    jobs = [(p, cfg, str(out_dir)) for p in todo]
    bar = tqdm(total=len(jobs), desc="synthetic clips", unit="clip", disable=not jobs)
    if cfg.workers > 1 and len(jobs) > 1:
        # spawn, not fork: acquire runs inside an MLflow run whose monitor thread may hold locks at fork time
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(_render_clip, jobs, chunksize=4):
                bar.update()
    else:
        for job in jobs:
            _render_clip(job)
            bar.update()
    bar.close()
    size = cfg.size
    manifest = pd.DataFrame(
        [
            {"clip": p.clip, "path": f"{p.clip}.mp4", "split": p.split, "label": _label(p), "duration_s": cfg.duration_s,
             "fps": cfg.fps, "sample_rate": cfg.sample_rate, "width": size, "height": size, "source": "synthetic"}
            for p in plans
        ]
    )
    events = pd.DataFrame(
        [{"clip": p.clip, "time_s": t, "class": CLASSES[c][0]} for p in plans for t, c in p.events],
        columns=["clip", "time_s", "class"],
    )
    relevance = pd.DataFrame(
        [{"clip": p.clip, "relevant": int(p.kind == "ok"), "kind": p.kind} for p in plans],
        columns=["clip", "relevant", "kind"],
    )
    atomic_write_csv(out_dir / "events.csv", events)
    atomic_write_csv(out_dir / "relevance.csv", relevance)
    atomic_write_csv(out_dir / "manifest.csv", manifest)
    return manifest
