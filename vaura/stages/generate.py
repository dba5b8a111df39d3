"""Generate audio for a video with V-AURA and mux it into a copy: ``vaura generate VIDEO -o OUT.mp4``.

The whole video is covered by sliding windows (``generation.window_s``, advancing ``generation.stride_s``;
each window continues the previous tokens as its prompt). ``--checkpoint`` is either a vaura training
checkpoint (default ``<paths.data>/train/best.pt``; the codec and visual encoder come from params.yaml) or the
released V-AURA experiment (folder ``24-08-01T08-34-26`` or its ``checkpoints/*.ckpt``), which brings its own
44.1 kHz DAC and Segment-AVCLIP weights and runs in the alignment it was trained with.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="input video (any length; its audio, if any, is replaced)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output MP4: the video with generated audio")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="vaura training checkpoint (default <paths.data>/train/best.pt) or the released "
                             "V-AURA experiment folder / .ckpt")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="classifier-free guidance γ (default: params generation.cfg_scale; paper 6)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: params seed)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run (auto = cuda when available)")
    parser.add_argument("--decode", choices=["auto", "compiled", "eager"], default=None,
                        help="decode step: compiled CUDA graphs, eager, or auto = compiled where it can run "
                             "(default: params generation.decode)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root the paths are relative to")


def _is_official(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".ckpt"


def run(args: argparse.Namespace) -> int:
    from vaura.codec import CodecConfig, load_codec
    from vaura.config import ConfigError, PathsConfig, load_section, load_yaml
    from vaura.media import MediaError, mux_audio
    from vaura.model.config import GenerationConfig
    from vaura.generate.official import official_codec, official_visual_encoder
    from vaura.generate.video import GenerateError, audio_for_video, check_compatible
    from vaura.model.official import load_official_checkpoint, official_decoder
    from vaura.model.sampler import use_compiled_decode
    from vaura.train.checkpoint import CheckpointError, load_trained_model
    from vaura.visual import VisualConfig, load_visual_encoder
    from vaura.weights import WeightsError

    try:
        params = load_yaml(args.params)
        gen: GenerationConfig = load_section(GenerationConfig, "generation", params)
        paths: PathsConfig = load_section(PathsConfig, "paths", params)
        if args.cfg_scale is not None:
            gen = dataclasses.replace(gen, cfg_scale=args.cfg_scale)
        if args.decode is not None:
            gen = dataclasses.replace(gen, decode=args.decode)
        seed = args.seed if args.seed is not None else int(params.get("seed", 0))
    except (ConfigError, ValueError) as exc:
        print(f"vaura generate: {exc}", file=sys.stderr)
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("vaura generate: --device cuda but no CUDA device is available", file=sys.stderr)
        return 1
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    try:
        compiled = use_compiled_decode(gen.decode, device)
    except ValueError as exc:
        print(f"vaura generate: {exc}", file=sys.stderr)
        return 1
    root = args.root
    checkpoint = args.checkpoint or root / paths.data / "train" / "best.pt"
    try:
        if _is_official(checkpoint):
            ckpt = load_official_checkpoint(checkpoint)
            model = official_decoder(ckpt)
            codec, encoder = official_codec(ckpt), official_visual_encoder(ckpt, device)
        else:
            model = load_trained_model(checkpoint, device=device)
            codec = load_codec(load_section(CodecConfig, "codec", params), root, paths.data)
            visual_cfg = load_section(VisualConfig, "visual", params)
            encoder = load_visual_encoder(dataclasses.replace(visual_cfg, device=device.type), root)
        model.to(device).eval()
        codec.to(device)
        check_compatible(model, codec, encoder, str(checkpoint))
        model.cfg.check_window(gen.window_s, "params.generation")
        audio = audio_for_video(args.video, model, codec, encoder, gen, seed, device, compile=compiled)
        mux_audio(args.video, audio, codec.sample_rate, args.out)
    except (ConfigError, WeightsError, CheckpointError, GenerateError, MediaError, ValueError) as exc:
        print(f"vaura generate: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(audio) / codec.sample_rate:.2f} s of generated audio, γ = {gen.cfg_scale:g}, "
          f"seed {seed})")
    return 0
