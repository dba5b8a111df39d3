"""Every speed figure of the project in one run and one JSON: decoder, end to end, batched sweep, training, cache.

Run by ``benchmarks/gpu_suite.sh`` on a GPU (paper size, bf16, CFG γ = 6, top-k 128, 229 decoder steps), or
``--tiny`` on CPU (tiny sizes, fp32) to check the suite itself end to end. Each figure sits beside its
reference-style counterpart, measured in the same run on the same weights:

- decoder, B = 1: the fast path (compiled CUDA-graph step over a static KV cache; on CPU the same static step
  uncompiled) vs the reference method (the whole prefix re-run every step, eager, as the official code does)
  and vs vaura's eager KV cache;
- greedy-code agreement of the fast path with eager fp32 decoding (same weights; bf16 rounding can flip an
  argmax, after which the two sequences differ);
- batched (the sweep's case): clips/s at B = 64 (fast path, reference, eager KV);
- end to end (``vaura generate``'s work for one 2.56 s clip): Motionformer features + decoder + DAC decode;
- training: tokens/s and MFU of full optimizer steps, ours (blocks compiled, fused AdamW, the sync-free loss,
  bf16 autocast) vs reference-style (eager, unfused AdamW, boolean-mask loss, batch 12);
- cache stage: DAC encode + Motionformer clips/s through ``vaura.cache.build_cache`` vs the video/audio
  decode-only floor on the same machine and the same decode threads.

Random weights everywhere (speed does not depend on the values). Every section is guarded: a failure or a
skipped section (time budget) is recorded under ``errors`` / ``skipped`` and the others still run; the JSON
is rewritten atomically after each section, so a run killed at its time limit keeps what it measured.
Usage::

    python benchmarks/gpu_suite.py [--tiny] [--device auto|cpu|cuda] [--out FILE] [--budget-s 420]
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import flops_per_step, gpu_peak, measured_cpu_peak  # noqa: E402  (benchmarks/training.py)

from vaura.io import atomic_write_json  # noqa: E402
from vaura.model import VAURA, named_size  # noqa: E402
from vaura.model.decoder import cfg_drop_mask  # noqa: E402
from vaura.model.sampler import generate, generate_recompute  # noqa: E402
from vaura.visual.motionformer import PAPER_SIZE, MotionFormerSize  # noqa: E402

REQUIRED_KEYS = ("device", "torch", "decoder_b1_s", "e2e_b1_s", "reference_b1_s", "batched_clips_per_s",
                 "train_mfu", "cache_fraction_of_floor")
TARGETS = {"decoder_b1_s": ("<=", 0.20), "e2e_b1_s": ("<=", 0.30), "speedup_vs_reference_b1": (">=", 25.0),
           "batched_clips_per_s": (">=", 100.0), "train_mfu": (">=", 0.45)}


@dataclass
class Setup:
    """What one run measures: sizes, precision and counts (``PAPER`` on a GPU, ``TINY`` to test the suite)."""

    size: str
    dtype: str
    steps: int
    cfg_scale: float = 6.0
    top_k: int = 128
    batch: int = 64
    agreement_clips: int = 4
    train_batch: int = 48
    reference_train_batch: int = 12
    train_steps: int = 8
    visual: dict = field(default_factory=lambda: asdict(PAPER_SIZE))
    dac: dict = field(default_factory=dict)
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    frame_rate: float = 44100 / 512  # the DAC's code frames per second (the decoder needs no DAC to be built)
    cache_clips: int = 32
    cache_clip_s: float = 10.0
    video_side: int = 256
    budget_s: float = 420.0


PAPER = Setup(size="paper", dtype="bf16", steps=229)
TINY = Setup(size="tiny", dtype="fp32", steps=40, batch=4, agreement_clips=2, train_batch=4, reference_train_batch=2,
             train_steps=2, visual=dict(dim=32, depth=1, heads=2, mlp_ratio=2, img_size=32, patch=16, tubelet=2,
                                        frames=16),
             dac=dict(encoder_dim=4, encoder_rates=[2, 4, 4], decoder_dim=8, decoder_rates=[4, 4, 2],
                      n_codebooks=9, codebook_size=1024, codebook_dim=8, sample_rate=2756),
             frame_rate=2756 / 32,
             cache_clips=4, cache_clip_s=3.0, video_side=48, budget_s=300.0)


def boolean_mask_loss(logits: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous loss (reference-style training): per codebook, the valid frames gathered by a boolean mask."""
    valid = codes >= 0
    per = torch.stack([F.cross_entropy(logits[:, q][valid[:, q]].float(), codes[:, q][valid[:, q]])
                       for q in range(codes.shape[1])])
    return per.mean(), per.detach()


class Suite:
    """Runs guarded sections against a deadline and keeps the JSON on disk current."""

    def __init__(self, setup: Setup, device: torch.device, out: Path) -> None:
        self.s, self.device, self.out = setup, device, out
        self.cuda = device.type == "cuda"
        self.deadline = time.monotonic() + setup.budget_s
        self.dtype = torch.bfloat16 if setup.dtype == "bf16" else torch.float32
        self.r: dict[str, Any] = {key: None for key in REQUIRED_KEYS}
        self.r.update(errors={}, skipped={}, section_s={})
        self._codec: Any = None
        self._decoder: VAURA | None = None

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, need_s: float, fn: Callable[[], None]) -> None:
        if self.left() < need_s:
            self.r["skipped"][name] = f"time budget: {self.left():.0f} s left, needs about {need_s:.0f} s"
        else:
            t0 = time.monotonic()
            try:
                fn()
            except Exception as exc:  # one failing benchmark must not lose the others
                self.r["errors"][name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            self.r["section_s"][name] = round(time.monotonic() - t0, 1)
            if self.cuda:
                torch.cuda.empty_cache()
        self.save()

    def save(self) -> None:
        self.r["meets"] = {k: _meets(self.r.get(k), *TARGETS[k]) for k in TARGETS}
        atomic_write_json(self.out, self.r)
        print(f"[gpu_suite] {self.out}: {sum(v is not None for v in self.r.values())} keys, "
              f"{self.left():.0f} s of budget left", file=sys.stderr)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def gen(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    # -- shared models -----------------------------------------------------------------------------------------
    def codec(self) -> Any:
        """DAC 44.1 kHz (paper) or a tiny DAC, random weights, wrapped as the project's ``Codec``."""
        if self._codec is None:
            from vaura.codec.codec import Codec, _new_dac

            torch.manual_seed(0)
            codec = Codec(_new_dac(self.s.dac or None), self.s.n_codebooks).to(self.device)
            dims = (codec.n_codebooks, codec.codebook_size, codec.codebook_dim, codec.frame_rate)
            if dims != self.code_dims():
                raise ValueError(f"codec {dims} does not match the setup's {self.code_dims()}")
            self._codec = codec
        return self._codec

    def decoder(self, dtype: torch.dtype | None = None) -> VAURA:
        """The decoder at the setup's size on the device, heads re-initialised (zero heads give flat logits).

        One shared model in the setup's dtype (its compiled decode steps are reused); ``dtype`` builds a
        separate copy with the same weights (same seed) in that dtype.
        """
        if dtype is None and self._decoder is not None:
            return self._decoder
        torch.manual_seed(0)
        with torch.device(self.device):
            model = VAURA(named_size(self.s.size, dropout=0.0), *self.code_dims(), self.s.visual["dim"])
            for head in model.lm_heads:
                torch.nn.init.normal_(head.weight, std=0.02)
        model = model.to(dtype or self.dtype).eval()
        if dtype is None:
            self._decoder = model
        return model

    def code_dims(self) -> tuple[int, int, int, float]:
        """(codebooks, codebook size, codebook dim, frame rate) of the setup's codec."""
        return self.s.n_codebooks, self.s.codebook_size, self.s.codebook_dim, self.s.frame_rate

    def n_frames(self) -> int:
        return self.s.steps - self.s.n_codebooks + 1

    def n_tokens(self) -> int:
        """12.5 Hz visual tokens of the window (32 for 2.56 s)."""
        return min(math.ceil(self.n_frames() / self.s.frame_rate * 12.5), round(2.56 * 12.5))

    def visual(self, batch: int, seed: int = 0) -> torch.Tensor:
        n = self.n_tokens()
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, n, self.s.visual["dim"], generator=g).to(self.device, self.dtype)

    def fast(self, model: VAURA, visual: torch.Tensor, seed: int = 0, **kw: Any) -> torch.Tensor:
        """The fast path: compiled CUDA-graph step on a GPU; the same static-cache step uncompiled on CPU."""
        return generate(model, visual, self.n_frames(), self.s.cfg_scale, top_k=self.s.top_k,
                        generator=self.gen(seed), compile=self.cuda, static=not self.cuda, **kw)

    # -- sections ----------------------------------------------------------------------------------------------
    def meta(self) -> None:
        s = self.s
        self.r.update(
            device=torch.cuda.get_device_name(self.device) if self.cuda else
            f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
            torch=torch.__version__, cuda=torch.version.cuda if self.cuda else None, python=platform.python_version(),
            started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            settings={"size": s.size, "dtype": s.dtype, "cfg_scale": s.cfg_scale, "top_k": s.top_k,
                      "decoder_steps": s.steps, "batch": s.batch, "train_batch": s.train_batch,
                      "reference_train_batch": s.reference_train_batch, "compiled_decode": self.cuda,
                      "cache_clips": s.cache_clips, "cache_clip_s": s.cache_clip_s, "budget_s": s.budget_s},
            targets={k: f"{op} {v}" for k, (op, v) in TARGETS.items()})
        try:
            import triton

            self.r["triton"] = triton.__version__
        except ImportError:
            self.r["triton"] = None

    def decoder_b1(self) -> None:
        model, vis = self.decoder(), self.visual(1)
        self.r["decoder_params"] = sum(p.numel() for p in model.parameters())
        first, _ = self.timed(lambda: self.fast(model, vis))
        times = [self.timed(lambda: self.fast(model, vis))[0] for _ in range(3)]
        self.r["decoder_first_call_s"] = round(first, 3)
        self.r["decoder_b1_s"] = round(statistics.median(times), 4)
        self.r["decoder_b1_ms_per_step"] = round(1e3 * statistics.median(times) / self.s.steps, 3)
        generate(model, vis, 4, self.s.cfg_scale, top_k=self.s.top_k)  # warm the eager kernels
        t_kv, _ = self.timed(lambda: generate(model, vis, self.n_frames(), self.s.cfg_scale, top_k=self.s.top_k,
                                              generator=self.gen(0)))
        self.r["kv_eager_b1_s"] = round(t_kv, 3)
        t_ref, _ = self.timed(lambda: generate_recompute(model, vis, self.n_frames(), self.s.cfg_scale,
                                                         top_k=self.s.top_k, generator=self.gen(0)))
        self.r["reference_b1_s"] = round(t_ref, 3)
        self.r["speedup_vs_reference_b1"] = round(t_ref / self.r["decoder_b1_s"], 2)

    def agreement(self) -> None:
        """Greedy codes: fast path (setup dtype) vs eager fp32 KV decode and the fp32 reference, same weights."""
        fast_model, fp32 = self.decoder(), self.decoder(torch.float32)
        agree, first_diff, total = 0, [], 0
        for i in range(self.s.agreement_clips):
            vis = self.visual(1, seed=100 + i)
            ours = self.fast(fast_model, vis, temperature=0.0)
            eager = generate(fp32, vis.float(), self.n_frames(), self.s.cfg_scale, temperature=0.0)
            same = ours == eager
            agree += int(same.sum())
            total += same.numel()
            diff = (~same).flatten(0, 1).any(0).nonzero()  # frames where any codebook differs
            first_diff.append(int(diff[0]) if len(diff) else None)  # None: identical
        self.r["greedy_agreement_vs_eager_fp32"] = round(agree / total, 4)
        self.r["greedy_first_differing_frame"] = first_diff
        vis = self.visual(1, seed=7).float()
        t_ref, ref = self.timed(lambda: generate_recompute(fp32, vis, self.n_frames(), self.s.cfg_scale,
                                                           top_k=self.s.top_k, generator=self.gen(0)))
        self.r["reference_b1_fp32_s"] = round(t_ref, 3)
        eager = generate(fp32, vis, self.n_frames(), self.s.cfg_scale, top_k=self.s.top_k, generator=self.gen(0))
        self.r["sampled_eager_fp32_equals_reference_fp32"] = bool(torch.equal(eager, ref))
        probs = torch.randn(4096, 1024, device=self.device).softmax(-1)
        from vaura.model.sampler import draw

        self.r["draw_equals_multinomial"] = bool(torch.equal(
            draw(probs, self.gen(3)), torch.multinomial(probs, 1, generator=self.gen(3))[:, 0]))

    def batched(self) -> None:
        b, model = self.s.batch, self.decoder()
        vis = self.visual(b, seed=1)
        first, _ = self.timed(lambda: self.fast(model, vis))
        times = [self.timed(lambda: self.fast(model, vis))[0] for _ in range(2)]
        self.r["batched_first_call_s"] = round(first, 3)
        self.r["batched_clips_per_s"] = round(b / statistics.median(times), 2)
        t_kv, _ = self.timed(lambda: generate(model, vis, self.n_frames(), self.s.cfg_scale, top_k=self.s.top_k,
                                              generator=self.gen(0)))
        self.r["kv_eager_batched_clips_per_s"] = round(b / t_kv, 2)

    def reference_batched(self) -> None:
        b, model = self.s.batch, self.decoder()
        vis = self.visual(b, seed=1)
        t_ref, _ = self.timed(lambda: generate_recompute(model, vis, self.n_frames(), self.s.cfg_scale,
                                                         top_k=self.s.top_k, generator=self.gen(0)))
        self.r["reference_batched_clips_per_s"] = round(b / t_ref, 3)

    def e2e(self) -> None:
        """One 2.56 s clip as ``vaura generate`` does it: frames → features → codes → waveform."""
        from vaura.visual import MotionFormer, VisualEncoder

        size = MotionFormerSize(**self.s.visual)
        torch.manual_seed(0)
        encoder = VisualEncoder(MotionFormer(size), size.img_size, 16, self.device)
        model, codec = self.decoder(), self.codec()
        n_video = 2 * self.n_tokens()  # 25 fps frames of the window
        n_video += (-n_video) % size.frames
        frames = np.random.default_rng(0).integers(0, 256, (n_video, size.img_size, size.img_size, 3), dtype=np.uint8)
        parts: dict[str, list[float]] = {"visual": [], "decoder": [], "codec_decode": []}

        def once() -> None:
            t, feats = self.timed(lambda: encoder.encode(frames))
            parts["visual"].append(t)
            t, codes = self.timed(lambda: self.fast(model, feats[None].to(self.device, self.dtype)))
            parts["decoder"].append(t)
            t, _ = self.timed(lambda: codec.decode(codes))
            parts["codec_decode"].append(t)

        once()  # warm-up (the decoder graph exists already when decoder_b1 ran)
        for v in parts.values():
            v.clear()
        totals = []
        for _ in range(3):
            t, _ = self.timed(once)
            totals.append(t)
        self.r["e2e_b1_s"] = round(statistics.median(totals), 4)
        self.r["e2e_parts_s"] = {k: round(statistics.median(v), 4) for k, v in parts.items()}
        if self.r.get("reference_b1_s") is not None:  # derived: the same parts around the reference decoder
            self.r["e2e_reference_b1_s"] = round(self.r["e2e_parts_s"]["visual"] + self.r["reference_b1_s"]
                                                 + self.r["e2e_parts_s"]["codec_decode"], 3)
            self.r["e2e_reference_note"] = "derived: measured visual + codec parts + reference_b1_s"

    def train(self) -> None:
        try:
            ours = self._train_steps(self.s.train_batch, fast=True)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            ours = self._train_steps(self.s.train_batch // 2, fast=True)
        self.r.update({f"train_{k}": v for k, v in ours.items()})

    def train_reference(self) -> None:
        ref = self._train_steps(self.s.reference_train_batch, fast=False)
        self.r.update({f"train_reference_{k}": v for k, v in ref.items()})

    def _train_steps(self, batch: int, fast: bool) -> dict[str, Any]:
        """Median optimizer step: forward + loss + backward + clip + AdamW, under bf16 autocast on a GPU."""
        k, card, _, rate = self.code_dims()
        torch.manual_seed(0)
        with torch.device(self.device):
            model = VAURA(named_size(self.s.size), *self.code_dims(), self.s.visual["dim"]).train()
        if fast and self.cuda:
            model.compile_blocks()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=fast and self.cuda)
        n_frames = math.ceil(2.56 * rate)
        codes = torch.randint(0, card, (batch, k, n_frames), device=self.device)
        visual = torch.randn(batch, 32, self.s.visual["dim"], device=self.device)
        drop = cfg_drop_mask(batch, model.cfg.cfg_dropout, device=self.device)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else torch.autocast("cpu", enabled=False)

        def step() -> torch.Tensor:
            with amp:
                loss = model.loss(codes, visual, drop)[0] if fast else boolean_mask_loss(
                    model(codes, visual, drop), codes)[0]
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        t_warm, _ = self.timed(lambda: [step() for _ in range(3)])
        times = []
        for _ in range(self.s.train_steps):
            t, _ = self.timed(step)
            times.append(t)
        step_s = statistics.median(times)
        flops, _ = flops_per_step(model, batch, n_frames)
        peak = gpu_peak(torch.cuda.get_device_name(self.device), None)[0] if self.cuda else measured_cpu_peak(512)
        out = {"batch": batch, "step_s": round(step_s, 4), "warmup_s": round(t_warm, 1),
               "tokens_per_s": round(batch * k * n_frames / step_s),
               "mfu": None if peak is None else round(flops / step_s / peak, 4),
               "compiled": fast and self.cuda, "fused_adamw": fast and self.cuda,
               "loss": "ignore_index" if fast else "boolean_mask"}
        return out

    def cache(self) -> None:
        """``build_cache`` clips/s against decoding the same files only (same decode threads)."""
        from vaura import media
        from vaura.cache import ClipSpec, build_cache
        from vaura.visual import MotionFormer, VisualEncoder

        s, codec = self.s, self.codec()
        size = MotionFormerSize(**s.visual)
        workers = min(8, os.cpu_count() or 1)

        def rng_for(i: int) -> np.random.Generator:
            return np.random.default_rng(i)
        with tempfile.TemporaryDirectory() as tmp:
            def write(i: int) -> str:
                # a random picture panning across the frame: realistic motion for the encoder, cheap to write
                base = rng_for(i).integers(0, 256, (s.video_side, 2 * s.video_side, 3), dtype=np.uint8)
                width = s.video_side + s.video_side // 3
                span = base.shape[1] - width + 1
                frames = (base[:, t % span : t % span + width] for t in range(round(s.cache_clip_s * 25)))
                audio = (rng_for(i).standard_normal(round(s.cache_clip_s * 44100)) * 0.1).astype(np.float32)
                path = Path(tmp) / f"clip{i:03d}.mp4"
                media.write_video(path, frames, 25.0, audio, 44100)
                return str(path)

            with ThreadPoolExecutor(workers) as pool:
                paths = list(pool.map(write, range(s.cache_clips)))

            def read_audio(p: str) -> np.ndarray:
                return media.read_audio(p, codec.sample_rate)

            def read_frames(p: str) -> np.ndarray:
                return media.read_video(p, fps=25.0, short_side=s.video_side, crop=size.img_size)

            with ThreadPoolExecutor(workers) as pool:
                t_floor, _ = self.timed(lambda: list(pool.map(lambda p: (read_audio(p), read_frames(p)), paths)))
            torch.manual_seed(0)
            encoder = VisualEncoder(MotionFormer(size), s.video_side, 16, self.device)
            plan = [ClipSpec(Path(p).stem, p, "train", None) for p in paths]
            out = Path(tmp) / "cache"
            t_cache, summary = self.timed(lambda: build_cache(
                plan, out, codec, encoder, read_audio, read_frames, shard_size=16, batch_size=16, workers=workers,
                window_s=2.56, device=self.device, progress=False))
            if summary["clips"] != len(paths):
                raise RuntimeError(f"cache kept {summary['clips']} of {len(paths)} clips")
            shard_bytes = sum(f.stat().st_size for f in out.glob("shard-*.pt"))
        self.r.update(cache_clips_per_s=round(len(paths) / t_cache, 2),
                      cache_floor_clips_per_s=round(len(paths) / t_floor, 2),
                      cache_fraction_of_floor=round(t_floor / t_cache, 3),
                      cache_bytes_per_clip=round(shard_bytes / len(paths)),
                      cache_decode_threads=workers)

    def fast_fp32_equality(self) -> None:
        """Compiled fp32 step vs eager fp32 (exact-equality check of the compiled path without bf16 rounding)."""
        fp32 = self.decoder(torch.float32)
        vis = self.visual(1, seed=11).float()
        ours = generate(fp32, vis, self.n_frames(), self.s.cfg_scale, temperature=0.0, compile=self.cuda,
                        static=not self.cuda)
        eager = generate(fp32, vis, self.n_frames(), self.s.cfg_scale, temperature=0.0)
        self.r["greedy_fast_fp32_agreement"] = round(float((ours == eager).float().mean()), 4)


def _meets(value: Any, op: str, target: float) -> bool | None:
    if value is None:
        return None
    return value <= target if op == "<=" else value >= target


def default_out(device: torch.device, tiny: bool) -> Path:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ("-tiny" if tiny else "")
    return Path(__file__).resolve().parent / "results" / f"{dt.date.today().isoformat()}-{slug}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, fp32 (checks the suite on CPU)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write (default benchmarks/results/<date>-<device>.json)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting sections after this long")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    setup = copy.deepcopy(TINY if args.tiny else PAPER)
    if args.budget_s is not None:
        setup.budget_s = args.budget_s
    suite = Suite(setup, device, args.out or default_out(device, args.tiny))
    # (name, rough seconds it needs on an H200): most important first, so a short budget loses the least
    for name, need in (("meta", 0), ("decoder_b1", 90), ("agreement", 30), ("batched", 80), ("e2e", 20),
                       ("train", 90), ("train_reference", 30), ("cache", 40), ("reference_batched", 40),
                       ("fast_fp32_equality", 80)):
        suite.section(name, 0 if args.tiny else need, getattr(suite, name))
    print(f"[gpu_suite] wrote {suite.out}", file=sys.stderr)
    return 0 if all(suite.r[k] is not None for k in REQUIRED_KEYS) else 1


if __name__ == "__main__":
    sys.exit(main())
