"""Listening to training: a few validation clips generated with the sampler, decoded by the frozen codec and logged
to MLflow as wav + spectrogram + the clip's video muxed with the generated audio."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vaura import tracking_media
from vaura.cache import CachedClips
from vaura.model.config import GenerationConfig
from vaura.train.config import TrainConfig
from vaura.train.data import collate

if TYPE_CHECKING:  # importing the codec package loads DAC; only runs that decode samples need it
    from vaura.codec.config import CodecConfig


def load_codec(cfg: CodecConfig, root: Path, data_dir: Path, device: torch.device) -> Any:
    """The frozen codec of section ``codec`` (embedding init + decoding logged samples)."""
    from vaura.codec import load_codec as load

    return load(cfg, root, str(data_dir)).to(device).eval()


class SampleLogger:
    """Generates the first ``n_log_clips`` validation clips and logs them; the reference audio once."""

    def __init__(self, gen_cfg: GenerationConfig, cfg: TrainConfig, val: CachedClips, codec: Any,
                 device: torch.device) -> None:
        self.gen_cfg, self.cfg, self.codec, self.device = gen_cfg, cfg, codec, device
        n = min(cfg.n_log_clips, len(val))
        self.codes, self.feats = collate([val[i] for i in range(n)])
        rows = val.index.iloc[:n]
        self.clips = [str(c) for c in rows["clip"]]
        self.starts = [float(s) for s in rows["start_sec"]]
        self.videos = [Path(p) for p in rows["path"]]
        self.logged_reference = False

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        from vaura.model.sampler import generate

        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            gen = torch.Generator(self.device).manual_seed(self.cfg.seed)
            codes = generate(
                model, self.feats.to(self.device), self.codes.shape[-1], cfg_scale=self.gen_cfg.cfg_scale,
                temperature=self.gen_cfg.temperature, top_k=self.gen_cfg.top_k, top_p=self.gen_cfg.top_p,
                generator=gen,
            )
        model.train(was_training)
        batches = [("generated", f"samples/step{step:06d}", codes)]
        if not self.logged_reference:
            batches.append(("reference", "samples/reference", self.codes))
            self.logged_reference = True
        sr = int(self.codec.sample_rate)
        for kind, folder, c in batches:
            audio = self.codec.decode(c.to(next(self.codec.parameters()).device)).float().cpu()
            for i, clip in enumerate(self.clips):
                wav = audio[i, 0]
                tracking_media.log_audio(wav, sr, f"{folder}/{clip}.wav")
                tracking_media.log_spectrogram(wav, sr, f"{folder}/{clip}.png", title=f"{clip} {kind} step {step}")
                if self.videos[i].is_file():
                    tracking_media.log_muxed_video(self.videos[i], wav, sr, f"{folder}/{clip}.mp4", self.starts[i])
