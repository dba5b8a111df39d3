"""Score a CFG sweep: every metric per (test set, γ) → ``metrics.json`` and one MLflow run each.

Groups scored per test set: every γ of the sweep (``g<γ>``), the codec reconstructions of the references
(``recon``, if the sweep wrote them: the ceiling this codec allows) and the reference audio itself
(``reference``: onset-sync of clean audio is the detector's ceiling; IB/Sync of real audio are the usual
"ground truth" rows of papers). Metrics: ``onset_sync`` (needs the synthetic ground-truth event table),
``fad`` (reference = the clips' real audio), ``kld``, ``ib``, ``sync``, ``desync``; a metric that cannot run
(no weights, no ground truth, not implemented) is a ``skipped`` result with its reason — in ``metrics.json``,
in the MLflow run's tags and in the report tables.

MLflow contract read by ``report`` (one run per group, ``vaura.stage = evaluate``, nested under the pipeline's
parent run, named ``evaluate · <variant> · γ <scale> · <test set>``):
- params: the ablation axes this group's audio really came from — ``variant``, ``test_set`` and, for generated
  groups only, ``gamma`` (the γ sampled with), ``model.conditioning``, ``filter.threshold``, ``train.seed``,
  ``sweep.seed`` — plus the ``evaluate`` section (the reference/recon groups do not depend on the trained model,
  so they state no model parameter);
- tags ``vaura.eval.test_set``, ``vaura.eval.group`` (``g6``, ``recon``, ``reference``), ``vaura.eval.cfg_scale``
  (the γ, or ``""``), ``vaura.variant``, and per metric ``metric.<name>.status`` (``ok``/``skipped``),
  ``metric.<name>.backbone`` and, when skipped, ``metric.<name>.skip`` (a short key); the reason itself is said
  once, on the pipeline's parent run (tag ``skip.<key>``);
- metrics: ``onset_f1, onset_precision, onset_recall, onset_offset_ms, onset_missed, onset_extra, fad, kld,
  ib, sync_ms, desync_s`` (only those that ran) and ``data.train_clips``, ``eval.n_clips``, ``eval.n_samples``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from vaura.config import bounded, flatten
from vaura.eval.bootstrap import BootstrapConfig
from vaura.eval.fad import fad
from vaura.eval.ib import ib_score
from vaura.eval.kld import kld_score
from vaura.eval.onset_sync import onset_sync
from vaura.eval.results import MetricResult
from vaura.eval.sync import OffsetPredictor, desync_score, sync_score
from vaura.tables import TableError, read_table

METRIC_KEYS = {  # (metric name, value key) → MLflow metric name / table column
    ("onset_sync", "f1"): "onset_f1",
    ("onset_sync", "precision"): "onset_precision",
    ("onset_sync", "recall"): "onset_recall",
    ("onset_sync", "offset_ms"): "onset_offset_ms",
    ("onset_sync", "missed"): "onset_missed",
    ("onset_sync", "extra"): "onset_extra",
    ("fad", "fad"): "fad",
    ("kld", "kld"): "kld",
    ("ib", "ib"): "ib",
    ("sync", "sync_ms"): "sync_ms",
    ("desync", "desync_s"): "desync_s",
}


# what evaluation reads of the sweep's index.csv (its writer, the sweep, documents the table)
SWEEP_COLUMNS = ("test_set", "cfg_scale", "clip", "sample", "start_sec", "window_s", "path", "video", "sample_rate")

_AUDIBLE_RMS = 10 ** (-45 / 20)  # -45 dBFS


# params of the trained model that made a generated group's audio (the ablation axes besides variant and γ)
_MODEL_AXES = ("model.conditioning", "filter.threshold", "train.seed", "sweep.seed")


class EvaluateError(ValueError):
    """Bad evaluation input (names the file and the reason)."""


@dataclass
class EvaluateConfig:
    """params.yaml section ``evaluate``."""

    fad_backbone: Literal["logmel", "vggish"] = "vggish"
    vggish_weights: str = "weights/vggish/vggish-10086976.pth"
    passt_weights: str = "weights/passt/passt-s-f128-p16-s10-ap.476-swa.pt"
    imagebind_weights: str = "weights/imagebind_huge.pth"
    synchformer_weights: str = "weights/synchformer/24-01-04T16-39-21.pt"
    events: str = "raw/events.csv"
    onset_tolerance_s: float = bounded(0.1, gt=0)
    n_artifact_clips: int = bounded(2, ge=0)  # clips per group logged for listening, chosen by informative_clips
    device: str = "auto"
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


@dataclass
class Group:
    """One scored group of audio clips of a test set."""

    test_set: str
    name: str
    cfg_scale: float | None
    n_clips: int
    n_samples: int
    sample_rate: int
    metrics: dict[str, MetricResult] = field(default_factory=dict)
    examples: list[tuple[str, float, np.ndarray]] = field(default_factory=list)  # (clip, start_sec, audio)
    videos: dict[str, str] = field(default_factory=dict)  # clip → source video (absolute)
    # onset counts per generated item (clip, sample, tp, fp, fn): what a paired comparison of two variants needs
    items: pd.DataFrame | None = None


@dataclass
class Models:
    """Pretrained scorers, each with the reason it is absent (``None`` model)."""

    sync: OffsetPredictor | None = None
    sync_reason: str = "Synchformer not loaded"
    ib: Any = None
    ib_reason: str = "ImageBind not loaded"
    passt: Any = None
    passt_reason: str = "PaSST not loaded"
    device: str = "cpu"


def read_sweep_index(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's ``index.csv`` with ``path`` (WAV) and ``video`` absolute (:mod:`vaura.tables`)."""
    try:
        return read_table(sweep_dir / "index.csv", SWEEP_COLUMNS, hint="run `vaura sweep` first",
                          path_columns=("path", "video"))
    except TableError as exc:
        raise EvaluateError(str(exc)) from exc


def test_set_window(rows: pd.DataFrame, index_path: Path) -> float:
    """The one window length of a test set's rows (the cache's ``window_s``, copied forward by the sweep)."""
    windows = sorted(set(rows["window_s"].astype(float)))
    if len(windows) != 1:
        raise EvaluateError(f"{index_path}: test set '{rows['test_set'].iloc[0]}' mixes windows {windows}")
    return windows[0]


def read_events(path: str | Path | None) -> pd.DataFrame | None:
    """Ground-truth event table ``clip,time_s,class`` or ``None`` when the profile has none."""
    if not path or not Path(path).is_file():
        return None
    df = pd.read_csv(path)
    missing = {"clip", "time_s"} - set(df.columns)
    if missing:
        raise EvaluateError(f"{path}: missing column(s) {sorted(missing)}; expected clip,time_s,class")
    return df


def window_events(events: pd.DataFrame, clip: str, start: float, window_s: float) -> np.ndarray:
    """Event times of ``clip`` inside ``[start, start + window_s)``, relative to ``start``."""
    t = events.loc[events["clip"] == clip, "time_s"].to_numpy(dtype=np.float64)
    return np.sort(t[(t >= start) & (t < start + window_s)] - start)


def _read_wav(path: Path, sample_rate: int, n: int) -> np.ndarray:
    import soundfile as sf

    if not path.is_file():
        raise EvaluateError(f"{path}: generated clip listed in the sweep index is missing (re-run `vaura sweep`)")
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise EvaluateError(f"{path}: sample rate {sr}, index says {sample_rate}")
    wav = wav.mean(axis=1)
    return np.pad(wav, (0, max(0, n - wav.size)))[:n]


def score_group(
    group: Group,
    audios: Sequence[np.ndarray],
    sample_rate: int,
    reference: Sequence[np.ndarray] | None,
    paired_reference: Sequence[np.ndarray] | None,
    truths: Sequence[np.ndarray] | None,
    sync_frames: Callable[[], list[np.ndarray]],
    ib_frames: Callable[[], list[np.ndarray]],
    cfg: EvaluateConfig,
    models: Models,
    root: Path,
    clips: Sequence[str] | None = None,
    reference_clips: Sequence[str] | None = None,
) -> None:
    """Fill ``group.metrics``; frames are read lazily (only for metrics whose models are loaded).

    ``reference`` is the test set's real audio (one per clip, for FAD); ``paired_reference[i]`` is the real audio
    of ``audios[i]``'s own clip (for KLD). Both are ``None`` for the reference group itself. ``clips[i]`` names
    the clip of ``audios[i]`` and ``reference_clips`` those of ``reference``: with them, onset-sync and FAD get
    bootstrap intervals over clips × samples (``cfg.bootstrap``).
    """
    m = group.metrics
    boot = cfg.bootstrap if clips is not None else None
    m["onset_sync"] = (
        onset_sync(audios, sample_rate, truths, tol=cfg.onset_tolerance_s, clips=clips, boot=boot)
        if truths is not None
        else MetricResult.skipped("onset_sync", "no ground-truth event table (synthetic benchmark only)")
    )
    fad_label = "log-mel, weight-free" if cfg.fad_backbone == "logmel" else cfg.fad_backbone
    m["fad"] = (
        fad(audios, reference, sample_rate, cfg.fad_backbone, root / cfg.vggish_weights, clips=clips,
            reference_clips=reference_clips, boot=boot) if reference is not None
        else MetricResult.skipped("fad", "the reference set itself (FAD would be 0 by definition)", fad_label)
    )
    m["kld"] = (
        kld_score(models.passt, audios, paired_reference, sample_rate, models.passt_reason)
        if paired_reference is not None
        else MetricResult.skipped("kld", "the reference set itself (KLD would be 0 by definition)", "passt")
    )
    m["ib"] = ib_score(models.ib, ib_frames() if models.ib is not None else [], audios, sample_rate,
                       models.ib_reason, device=models.device)
    frames = sync_frames() if models.sync is not None else []
    m["sync"] = sync_score(models.sync, frames, audios, sample_rate, models.sync_reason)
    m["desync"] = desync_score(models.sync, frames, audios, sample_rate, models.sync_reason)


def evaluate_sweep(
    sweep_dir: str | Path,
    events: pd.DataFrame | None,
    cfg: EvaluateConfig,
    models: Models,
    root: str | Path = ".",
    read_audio: Callable[..., np.ndarray] | None = None,
    read_video: Callable[..., np.ndarray] | None = None,
) -> list[Group]:
    """Score every group of every test set of the sweep at ``sweep_dir`` (its ``index.csv``, which names each
    clip's source video and window: evaluation reads nothing but the sweep, those videos, the event table and
    the weights)."""
    if read_audio is None or read_video is None:
        from vaura import media

        read_audio = read_audio or media.read_audio
        read_video = read_video or media.read_video
    sweep_dir, root = Path(sweep_dir), Path(root)
    index_path = sweep_dir / "index.csv"
    index = read_sweep_index(sweep_dir)
    groups: list[Group] = []
    for test_set, rows in index.groupby("test_set", sort=False):
        clips = rows.drop_duplicates("clip")
        window_s = test_set_window(rows, index_path)
        sr = int(rows["sample_rate"].iloc[0])
        n = int(round(window_s * sr))
        start = dict(zip(clips["clip"], clips["start_sec"].astype(float)))
        video = dict(zip(clips["clip"], clips["video"]))
        ref = {c: read_audio(video[c], sr, start_sec=start[c], duration=window_s) for c in start}
        truth = {c: window_events(events, c, start[c], window_s) for c in start} if events is not None else None
        listen = informative_clips(ref, truth, cfg.n_artifact_clips)
        cache: dict[tuple[str, str], np.ndarray] = {}

        def frames_for(kind: str, names: list[str]) -> list[np.ndarray]:
            for c in set(names) - {k[1] for k in cache if k[0] == kind}:
                short, crop = (256, 224) if kind == "sync" else (224, None)
                cache[(kind, c)] = read_video(video[c], fps=25.0, short_side=short, crop=crop,
                                              start_sec=start[c], duration=window_s)
            return [cache[(kind, c)] for c in names]

        parts: list[tuple[str, float | None, pd.DataFrame | None]] = [("reference", None, None)]
        recon = rows[rows["sample"] < 0]
        if len(recon):
            parts.append(("recon", None, recon))
        gens = rows[rows["sample"] >= 0]
        for gamma, g_rows in gens.groupby("cfg_scale", sort=True):
            parts.append((f"g{float(gamma):g}", float(gamma), g_rows))
        for name, gamma, g_rows in tqdm(parts, desc=f"evaluate {test_set}", unit="group"):
            names = list(start) if g_rows is None else [str(c) for c in g_rows["clip"]]
            audios = ([ref[c] for c in names] if g_rows is None
                      else [_read_wav(Path(p), sr, n) for p in g_rows["path"]])
            group = Group(str(test_set), name, gamma, n_clips=len(set(names)), n_samples=len(names), sample_rate=sr)
            score_group(
                group, audios, sr,
                reference=None if g_rows is None else [ref[c] for c in start],
                paired_reference=None if g_rows is None else [ref[c] for c in names],
                truths=None if truth is None else [truth[c] for c in names],
                sync_frames=lambda names=names: frames_for("sync", names),
                ib_frames=lambda names=names: frames_for("ib", names),
                cfg=cfg, models=models, root=root, clips=names, reference_clips=list(start),
            )
            onset = group.metrics["onset_sync"]
            if onset.items:
                samples = [0] * len(names) if g_rows is None else [int(k) for k in g_rows["sample"]]
                group.items = pd.DataFrame({"clip": names, "sample": samples, **onset.items})
            first = {c: a for c, a in reversed(list(zip(names, audios)))}  # each clip's first sample
            group.examples = [(c, start[c], first[c]) for c in listen if c in first]
            group.videos = {c: video[c] for c, _, _ in group.examples}
            groups.append(group)
    return groups


def informative_clips(ref: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray] | None, n: int) -> list[str]:
    """The ``n`` clips most worth listening to, the same for every group so γ and variants compare on one clip:
    audible reference audio (RMS above -45 dBFS) first, then most ground-truth events in the window, then loudest.
    The first clip of a test set is often near-silent; it is what a user would hear first otherwise."""
    def score(clip: str) -> tuple[bool, int, float]:
        audio = ref[clip]
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
        return rms > _AUDIBLE_RMS, 0 if truth is None else len(truth[clip]), rms

    return sorted(ref, key=score, reverse=True)[:n]


def flat_metrics(group: Group) -> dict[str, float]:
    """MLflow/table metric names of the metrics that ran (skipped ones have no number, by design)."""
    out: dict[str, float] = {}
    for name, res in group.metrics.items():
        if res.status != "ok":
            continue
        for key, value in res.values.items():
            col = METRIC_KEYS.get((name, key))
            if col is not None and not math.isnan(value):
                out[col] = value
    return out


def metrics_json(groups: Sequence[Group], variant: Mapping[str, Any],
                 boot: BootstrapConfig | None = None) -> dict[str, Any]:
    """The DVC metrics file: ``{variant, bootstrap, <test_set>: {<group>: {cfg_scale, n_clips, n_samples,
    <metric>: {status, <value>, <value>_low, <value>_high, ...}}}}`` (``<value>_low/_high``: the bootstrap
    interval described by ``bootstrap``)."""
    out: dict[str, Any] = {"variant": dict(variant)}
    if boot is not None:
        out["bootstrap"] = {"n": boot.n, "fad_n": boot.fad_n, "seed": boot.seed, "level": boot.level,
                            "over": "test clips, then samples within each drawn clip (percentile interval)"}
    for g in groups:
        out.setdefault(g.test_set, {})[g.name] = {
            "cfg_scale": g.cfg_scale, "n_clips": g.n_clips, "n_samples": g.n_samples,
            **{name: res.to_dict() for name, res in g.metrics.items()},
        }
    return out


ITEM_COLUMNS = ["test_set", "group", "clip", "sample", "tp", "fp", "fn"]


def onset_items(groups: Sequence[Group]) -> pd.DataFrame:
    """Every group's per-item onset counts in one table (``onsets.csv`` beside ``metrics.json``): the report's
    paired comparisons resample the same clips for two variants from it."""
    parts = [g.items.assign(test_set=g.test_set, group=g.name) for g in groups if g.items is not None]
    if not parts:
        return pd.DataFrame(columns=ITEM_COLUMNS)
    return pd.concat(parts, ignore_index=True)[ITEM_COLUMNS]


def group_label(group: Group) -> str:
    """What a group's audio is, for run names and artifact titles (``γ 3``, ``codec recon``, ``real audio``)."""
    if group.cfg_scale is not None:
        return f"γ {group.cfg_scale:g}"
    return {"recon": "codec recon", "reference": "real audio"}.get(group.name, group.name)


def group_tags(group: Group) -> dict[str, str]:
    """MLflow tags of a group's run (see the module docstring)."""
    tags = {
        "mlflow.runType": "evaluation",  # the UI expands the parent of evaluation runs: the table opens on them
        "vaura.eval.test_set": group.test_set,
        "vaura.eval.group": group.name,
        "vaura.eval.cfg_scale": "" if group.cfg_scale is None else f"{group.cfg_scale:g}",
    }
    for name, res in group.metrics.items():
        tags[f"metric.{name}.status"] = res.status
        tags[f"metric.{name}.backbone"] = res.backbone
        if res.status == "skipped":
            tags[f"metric.{name}.skip"] = reason_key(res.reason)
    return tags


def group_params(params: Mapping[str, Any], group: Group, variant: str | None) -> dict[str, Any]:
    """The params of a group's run: its ablation axes as values it really used (see the module docstring)."""
    flat = flatten(params)
    axes: dict[str, Any] = {"variant": variant} if variant else {}
    axes["test_set"] = group.test_set
    if group.cfg_scale is not None:  # generated audio: the trained model and the sampling γ made it
        axes["gamma"] = f"{group.cfg_scale:g}"
        axes.update({k: flat[k] for k in _MODEL_AXES if k in flat})
    return {**axes, "evaluate": dict(params.get("evaluate") or {})}


def reason_key(reason: str) -> str:
    """Short stable key of a skip reason (``metric.<name>.skip`` on a run → ``skip.<key>`` on its parent)."""
    return hashlib.md5(reason.encode()).hexdigest()[:8]


def skip_reasons(groups: Sequence[Group]) -> dict[str, str]:
    """``skip.<key>`` tags for the pipeline's parent run: each distinct skip reason, said once."""
    return {f"skip.{reason_key(res.reason)}": res.reason[:4000]
            for g in groups for res in g.metrics.values() if res.status == "skipped"}


def log_groups(
    params: Mapping[str, Any],
    groups: Sequence[Group],
    train_clips: int | None,
    variant: str | None = None,
    data_files: Sequence[str | Path] = (),
    params_file: str | Path = "params.yaml",
) -> list[str]:
    """One MLflow run per group (``vaura.tracking.stage_run``): axes params, metrics, tags, metrics.json and, for
    the group's example clips, audio (wav), spectrogram (png) and the test video muxed with that audio (mp4),
    named ``<clip>_<variant>_<group>``. Skip reasons go once to the parent run. Returns the run ids.
    ``variant`` None (no named variant, no DVC experiment) leaves it out of names and params."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from vaura.tracking import log_json, run_name, stage_run, tracking_config
    from vaura.tracking_media import log_audio, log_muxed_video, log_spectrogram

    where = tracking_config(params, params_file)
    run_ids, parent = [], ""
    for g in groups:
        label = group_label(g)
        with stage_run("evaluate", group_params(params, g, variant), tags=group_tags(g), params_file=params_file,
                       data_files=data_files, variant=variant, name=run_name("evaluate", variant, label, g.test_set),
                       config=where) as run:
            extra = {"eval.n_clips": g.n_clips, "eval.n_samples": g.n_samples}
            if train_clips is not None:
                extra["data.train_clips"] = train_clips
            mlflow.log_metrics({**flat_metrics(g), **extra})
            log_json(metrics_json([g], {}), "metrics.json")
            for clip, start, audio in g.examples:
                stem = "_".join(p for p in (clip, variant, g.name) if p)
                log_audio(audio, g.sample_rate, f"audio/{stem}.wav")
                log_spectrogram(audio, g.sample_rate, f"spectrogram/{stem}.png", title=run_name(clip, variant, label))
                log_muxed_video(g.videos[clip], audio, g.sample_rate, f"video/{stem}.mp4", start_sec=start)
            run_ids.append(run.info.run_id)
            parent = MlflowClient().get_run(run.info.run_id).data.tags["mlflow.parentRunId"]
    if run_ids:
        for key, reason in skip_reasons(groups).items():
            MlflowClient().set_tag(parent, key, reason)
    return run_ids
