"""How good is a visual encoder for V-AURA? Measured on VAL clips the training never saw.

Within-clip segment retrieval (which of the token-shifted audio segments matches a video segment) and linear
probes on the frozen per-token features (does an impact happen in this 80 ms token? which object is it?),
reported next to the same probes on a randomly initialised encoder of the same size by the ``avclip`` stage.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from vaura.visual.config import VisualConfig
from vaura.visual.encoder import VisualEncoder
from vaura.visual.standin import FPS, ClipArrays, SegmentAVCLIP, to_input


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
        v = model.embed_video(to_input(np.stack([data.frames[c, s:s + seg] for s in starts])).to(device))
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
