"""Generate audio for a video with V-AURA and mux it into a copy: ``vaura generate VIDEO -o OUT.mp4``.

The whole video is covered by sliding windows (``generation.window_s``, advancing ``generation.stride_s``;
each window continues the previous tokens as its prompt). ``--checkpoint`` is either a vaura training
checkpoint (default ``<paths.data>/train/<ablation.baseline>/best.pt``: the baseline variant's; the codec and visual encoder come from params.yaml) or the
released V-AURA experiment (folder ``24-08-01T08-34-26`` or its ``checkpoints/*.ckpt``), which brings its own
44.1 kHz DAC and Segment-AVCLIP weights and runs in the alignment it was trained with.
Each call is one MLflow run (checkpoint, γ, seed, seconds generated) unless ``--no-track``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vaura.config import to_dict
from vaura.stages import add_common, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="input video (any length; its audio, if any, is replaced)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output MP4: the video with generated audio")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="vaura training checkpoint (default <paths.data>/train/<ablation.baseline>/best.pt) or the released "
                             "V-AURA experiment folder / .ckpt")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="classifier-free guidance γ (default: params generation.cfg_scale; paper 6)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: params seed)")
    parser.add_argument("--decode", choices=["auto", "compiled", "eager"], default=None,
                        help="decode step: compiled CUDA graphs, eager, or auto = compiled where it can run "
                             "(default: params generation.decode)")
    add_common(parser, device="where to run (default: auto = cuda when available)")


def _is_official(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".ckpt"


def run(args: argparse.Namespace) -> int:
    from vaura.codec import CodecConfig, load_codec
    from vaura.generate.official import official_codec, official_visual_encoder
    from vaura.generate.video import audio_for_video, check_compatible
    from vaura.io import check_output_file
    from vaura.media import mux_audio
    from vaura.model.config import GenerationConfig
    from vaura.model.official import load_official_checkpoint, official_decoder
    from vaura.model.sampler import use_compiled_decode
    from vaura.train.checkpoint import load_trained_model
    from vaura.variants import ablation_config, output_dir
    from vaura.visual import VisualConfig, load_visual_encoder

    ctx, (gen, codec_cfg, visual_cfg) = load(args, "generate", generation=GenerationConfig, codec=CodecConfig,
                                             visual=VisualConfig)
    check_output_file(args.out, args.video)  # before any work: never overwrite the input, never fail at the end
    if args.cfg_scale is not None:
        gen = dataclasses.replace(gen, cfg_scale=args.cfg_scale)
    if args.decode is not None:
        gen = dataclasses.replace(gen, decode=args.decode)
    seed = args.seed if args.seed is not None else ctx.seed
    device = ctx.device_or("auto")
    compiled = use_compiled_decode(gen.decode, device)
    checkpoint = args.checkpoint or output_dir(ctx.data, "train", ablation_config(ctx.params).baseline) / "best.pt"
    if _is_official(checkpoint):
        ckpt = load_official_checkpoint(checkpoint)
        model = official_decoder(ckpt)
        codec, encoder = official_codec(ckpt), official_visual_encoder(ckpt, device)
    else:
        model = load_trained_model(checkpoint, device=device)
        codec = load_codec(codec_cfg, ctx.root, ctx.paths.data)
        encoder = load_visual_encoder(dataclasses.replace(visual_cfg, device=str(device)), ctx.root, ctx.paths.data)
    model.to(device).eval()
    codec.to(device)
    check_compatible(model, codec, encoder, str(checkpoint))
    model.cfg.check_window(gen.window_s, "params.generation")
    with ctx.tracked({"generation": to_dict(gen), "seed": seed, "checkpoint": str(checkpoint)}) as mlflow:
        audio = audio_for_video(args.video, model, codec, encoder, gen, seed, device, compile=compiled)
        mux_audio(args.video, audio, codec.sample_rate, args.out)
        if mlflow:
            mlflow.log_metric("generated_seconds", len(audio) / codec.sample_rate)
    print(f"wrote {args.out} ({len(audio) / codec.sample_rate:.2f} s of generated audio, γ = {gen.cfg_scale:g}, "
          f"seed {seed})")
    return 0
