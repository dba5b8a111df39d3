"""Autoregressive generation with a KV cache, classifier-free guidance by batch doubling, and sliding windows.

One decoder step emits one token per codebook (delay pattern), so a window of T frames takes ``T + K - 1``
steps (229 for 2.56 s of 44.1 kHz DAC). The first call processes the prompt (and, for ``prepend``, the visual
prefix) in one pass; every later step feeds only the newest step against the cached keys/values, instead of
re-running the whole prefix as the reference implementation does. The cond and null-cond halves run as one
batch of 2B and are mixed as ``uncond + γ·(cond − uncond)`` before sampling. B = 1 and batched eval share
this single code path.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from typing import Callable

import torch
from tqdm import tqdm

from vaura.model.decoder import VAURA
from vaura.model.delay import build_delayed, revert_delayed
from vaura.model.layers import KVCache


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one token per row of ``logits [..., card]``; ``temperature == 0`` means greedy.

    top-k keeps the k largest logits, top-p the smallest set whose probability reaches p (both off at 0).
    """
    if temperature == 0:
        return logits.argmax(-1)
    shape = logits.shape
    logits = logits.reshape(-1, shape[-1]).float() / temperature
    if 0 < top_k < shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p > 0.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # keep tokens until the mass before them hits p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return draw(logits.softmax(-1), generator).reshape(shape[:-1])


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs [N, card]``, the same draw as ``torch.multinomial(probs, 1, generator)``.

    multinomial takes a single sample as ``argmax(p / E)`` with ``E ~ Exp(1)`` (an exponential race, exact
    for any distribution) after checking the probabilities on the host: a GPU→CPU sync on every decoder step.
    Running the race directly consumes the generator identically and gives the same indices without the sync.
    """
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(-1)


@torch.no_grad()
def generate(model: VAURA, visual: torch.Tensor, n_frames: int, cfg_scale: float | None = 6.0,
             temperature: float = 1.0, top_k: int = 128, top_p: float = 0.0,
             generator: torch.Generator | None = None, prompt: torch.Tensor | None = None,
             compile: bool = False, progress: bool = False, static: bool = False) -> torch.Tensor:
    """Codes ``[B, K, n_frames]`` for one window of visual features ``[B, N, Dv]``.

    ``prompt [B, K, P]`` fixes the first P frames (sliding windows pass the overlap here). ``cfg_scale=None``
    samples the conditional model alone; any number (1.0 included) runs the doubled cond/null batch, so
    γ = 1 reproduces conditional sampling exactly and γ = 0 the null-conditioned model.
    ``compile=True`` (CUDA only) compiles the one-step decode with CUDA graphs; it runs the ``static`` step:
    attention over the whole preallocated cache (masked past the current position), so every step has the same
    shapes. ``static=True`` alone runs that step uncompiled, on any device (the equivalence tests use it).
    """
    if model.training:
        raise RuntimeError("generate() needs model.eval() (dropout would corrupt sampling)")
    b, k, special = visual.shape[0], model.n_codebooks, model.special_token
    device = visual.device
    if n_frames > model.max_frames:
        raise ValueError(f"n_frames={n_frames} exceeds one window ({model.max_frames}); use generate_long")
    p = 0 if prompt is None else prompt.shape[-1]
    if prompt is not None and (prompt.shape[:2] != (b, k) or p > n_frames):
        raise ValueError(f"prompt shape {tuple(prompt.shape)} does not fit batch {b}, {k} codebooks, "
                         f"{n_frames} frames")

    guided = cfg_scale is not None
    rows = 2 * b if guided else b
    vis = torch.cat([visual, visual]) if guided else visual
    drop = torch.arange(rows, device=device) >= b  # second half: null condition
    cond = model.condition(vis, drop)

    # delayed sequence of the window: prompt frames filled in, everything else special until sampled
    frames = torch.full((b, k, n_frames), special, dtype=torch.long, device=device)
    if prompt is not None:
        frames[..., :p] = prompt
    seq = build_delayed(frames, special)
    n_steps = n_frames + k - 1
    cond_steps = model.align(cond, n_steps) if model.fusion else None
    n_prefix = 0 if model.fusion else cond.shape[1]
    dtype = next(model.parameters()).dtype
    if compile or static:
        cache, step_fn = _static_decoder(model, rows, n_prefix + n_steps, device, dtype, compile)
    else:
        cache, step_fn = model.new_cache(rows, n_prefix + n_steps, device, dtype), None
    positions = torch.arange(n_prefix + n_steps, device=device)
    delay = torch.arange(k, device=device)

    def rows_of(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t]) if guided else t

    # prefill: steps 0..p (their inputs hold only the BOS step and prompt frames) plus a prepended prefix
    x = model.embed_steps(rows_of(seq[..., : p + 1]), None if cond_steps is None else cond_steps[:, : p + 1])
    if not model.fusion:
        x = torch.cat([cond.to(x.dtype), x], dim=1)
    logits = model.run(x, torch.arange(x.shape[1], device=device), cache, end=x.shape[1])[:, :, -1]
    for s in tqdm(range(p, n_steps), disable=not progress, desc="generate", leave=False):
        if s > p:
            tok = rows_of(seq[..., s : s + 1])
            c = None if cond_steps is None else cond_steps[:, s : s + 1]
            pos = positions[n_prefix + s : n_prefix + s + 1].clone()  # on device: no host→device copy + sync
            if step_fn is not None:
                logits = step_fn(tok, c, pos)[:, :, -1]
            else:
                logits = model.run(model.embed_steps(tok, c), pos, cache, end=n_prefix + s + 1)[:, :, -1]
        if guided:
            cond_l, uncond_l = logits[:b].float(), logits[b:].float()
            logits = uncond_l + cfg_scale * (cond_l - uncond_l)
        new = sample_logits(logits, temperature, top_k, top_p, generator)  # [B, K]
        frame = s - delay  # frame each codebook's token belongs to
        write = (frame >= p) & (frame < n_frames)
        seq[..., s + 1] = torch.where(write[None], new, seq[..., s + 1])
    return revert_delayed(seq)


def _static_decoder(model: VAURA, rows: int, max_len: int, device: torch.device, dtype: torch.dtype,
                    compile: bool) -> tuple[KVCache, Callable]:
    """A full-length cache and the one-step decode over it, kept per model and shape for the next call.

    Reusing them lets a sweep's batches replay the same compiled CUDA graph (same cache buffers, no recompile,
    no re-capture); stale keys from an earlier call are never read, because the mask stops each query at its
    own position and every position up to it is rewritten first. ``compile=True`` compiles the step with CUDA
    graphs (``reduce-overhead``).
    """
    if compile and torch.device(device).type != "cuda":
        raise ValueError("compile=True needs a CUDA device (CUDA graphs); use --device cuda or drop --compile")
    key = (rows, max_len, str(device), dtype, compile)
    pool = model.__dict__.setdefault("_static_decoders", {})  # lives and dies with the model
    if key not in pool:
        cache = model.new_cache(rows, max_len, device, dtype)

        def step(tok: torch.Tensor, c: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
            return model.run(model.embed_steps(tok, c), pos, cache, static=True)

        if compile:
            step = torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)
        if len(pool) >= 2:  # a sweep needs its batch size and one remainder; free older caches
            pool.pop(next(iter(pool)))
        pool[key] = (cache, step)
    return pool[key]


DECODE_MODES = ("auto", "compiled", "eager")
_fallback_said: set[str] = set()


def use_compiled_decode(mode: str, device: torch.device | str) -> bool:
    """Resolve ``generation.decode`` for ``device``: run the compiled CUDA-graph step or the eager one?

    ``auto`` takes the compiled step wherever it can run (CUDA with triton installed) and otherwise says once per
    process, on stderr, why it decodes eagerly; ``compiled`` insists (an error where it cannot run); ``eager``
    never compiles.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"generation.decode={mode!r}: choose one of {', '.join(DECODE_MODES)}")
    if mode == "eager":
        return False
    device = torch.device(device)
    if device.type != "cuda":
        reason = f"it needs CUDA graphs and this run is on {device.type}"
    elif importlib.util.find_spec("triton") is None:
        reason = "torch.compile needs triton, which is not installed"
    else:
        return True
    if mode == "compiled":
        raise ValueError(f"generation.decode=compiled: {reason}; set generation.decode to auto or eager")
    if reason not in _fallback_said:
        _fallback_said.add(reason)
        print(f"vaura: eager decoding (slower): the compiled decode step is off because {reason}",
              file=sys.stderr)
    return False


@torch.no_grad()
def generate_recompute(model: VAURA, visual: torch.Tensor, n_frames: int, cfg_scale: float = 6.0,
                       temperature: float = 1.0, top_k: int = 128,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The reference implementation's decode: every step re-runs the whole prefix, no cache.

    Kept as the baseline that the cached paths must reproduce (tests) and beat (benchmarks).
    """
    b, k = visual.shape[0], model.n_codebooks
    cond = model.condition(torch.cat([visual, visual]), torch.arange(2 * b, device=visual.device) >= b)
    seq = build_delayed(torch.full((b, k, n_frames), model.special_token, device=visual.device),
                        model.special_token)
    n_steps = n_frames + k - 1
    cond_steps = model.align(cond, n_steps) if model.fusion else None
    delay = torch.arange(k, device=visual.device)
    for s in range(n_steps):
        x = model.embed_steps(torch.cat([seq[..., : s + 1]] * 2),
                              None if cond_steps is None else cond_steps[:, : s + 1])
        if not model.fusion:
            x = torch.cat([cond.to(x.dtype), x], dim=1)
        logits = model.run(x)[:, :, -1].float()
        logits = logits[b:] + cfg_scale * (logits[:b] - logits[b:])
        new = sample_logits(logits, temperature, top_k, 0.0, generator)
        frame = s - delay
        seq[..., s + 1] = torch.where(((frame >= 0) & (frame < n_frames))[None], new, seq[..., s + 1])
    return revert_delayed(seq)


def window_starts(n_frames: int, window_frames: int, stride_frames: int, audio_frame_rate: float,
                  visual_frame_rate: float) -> list[tuple[int, int]]:
    """``(visual_token_start, audio_frame_start)`` of each sliding window covering ``n_frames``.

    Windows start on visual-token boundaries (stride rounded to whole tokens) and the audio start is the
    nearest frame, ``round(k / 12.5 · frame_rate)`` — the rule the training cache uses for window starts. The
    last window is pulled back to end at the video's end, so every window is (nearly) full length, as in training.
    """
    stride_tokens = max(1, round(stride_frames * visual_frame_rate / audio_frame_rate))
    last_k = max(0, math.ceil((n_frames - window_frames) * visual_frame_rate / audio_frame_rate - 1e-9))
    starts = [(0, 0)]
    while starts[-1][1] + window_frames < n_frames:
        prev = starts[-1][0]
        k = max(min(prev + stride_tokens, last_k), prev + 1)
        starts.append((k, round(k / visual_frame_rate * audio_frame_rate)))
    return starts


@torch.no_grad()
def generate_long(model: VAURA, visual: torch.Tensor, n_frames: int, window_frames: int, stride_frames: int,
                  cfg_scale: float | None = 6.0, temperature: float = 1.0, top_k: int = 128, top_p: float = 0.0,
                  generator: torch.Generator | None = None, compile: bool = False,
                  progress: bool = False) -> torch.Tensor:
    """Codes ``[B, K, n_frames]`` for a video of any length from its visual features ``[B, N_total, Dv]``.

    Sliding windows of ``window_frames`` advance by ``stride_frames`` (snapped to visual tokens, see
    :func:`window_starts`); each window is prompted with the already generated frames it overlaps, so the
    sequence continues across joins instead of restarting, and only its new frames are sampled.
    """
    b, k = visual.shape[0], model.n_codebooks
    window_frames = min(window_frames, model.max_frames)
    out = torch.full((b, k, n_frames), -1, dtype=torch.long, device=visual.device)
    starts = window_starts(n_frames, window_frames, stride_frames, model.audio_frame_rate, model.visual_frame_rate)
    window_tokens = math.ceil(window_frames * model.visual_frame_rate / model.audio_frame_rate - 1e-9)
    done = 0  # frames generated so far
    for tok0, a0 in tqdm(starts, disable=not progress or len(starts) == 1, desc="windows"):
        end = min(a0 + window_frames, n_frames)
        vis = visual[:, tok0 : tok0 + min(window_tokens, model.n_null)]
        if vis.shape[1] == 0:
            raise ValueError(f"no visual tokens for the window starting at frame {a0}: "
                             f"{visual.shape[1]} tokens cover fewer than {n_frames} frames")
        prompt = out[..., a0:done] if done > a0 else None
        codes = generate(model, vis, end - a0, cfg_scale, temperature, top_k, top_p, generator, prompt, compile)
        out[..., a0:end] = codes
        done = end
    return out
