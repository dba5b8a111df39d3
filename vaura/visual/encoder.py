"""The frozen visual encoder used by ``cache`` and generation: frames (25 fps) -> 12.5 Hz feature tokens.

``load_visual_encoder`` picks the real Segment-AVCLIP checkpoint (paper profile) or the stand-in trained by
the ``avclip`` stage (offline profile); both are the same :class:`MotionFormer` class at different sizes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaura.devices import resolve_device
from vaura.visual.config import VisualConfig
from vaura.visual.motionformer import PAPER_SIZE, MotionFormer, MotionFormerSize
from vaura.weights import (
    SEGMENT_AVCLIP_URL_HINT,
    WeightsError,
    inner_tensors,
    load_strict,
    read_checkpoint,
    select_prefixed,
)

FPS = 25.0
V_ENCODER_PREFIXES = ("module.v_encoder.", "v_encoder.", "visual_feature_extractor.")


class VisualInputError(ValueError):
    """Frames the encoder cannot use (wrong dtype/shape, fewer frames than one segment)."""


def size_from_config(cfg: VisualConfig) -> MotionFormerSize:
    return MotionFormerSize(
        dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, img_size=cfg.crop,
        patch=cfg.patch, tubelet=cfg.tubelet, frames=cfg.frames_per_segment,
    )


def load_segment_avclip(model: MotionFormer, state_dict_or_path: str | Path | Mapping[str, Any]) -> MotionFormer:
    """Strictly load Segment-AVCLIP visual weights into ``model``.

    Accepts the Synchformer-project ``epoch_best.pt`` (``ckpt["state_dict"]``, keys ``module.v_encoder.*`` or
    ``v_encoder.*``; the audio encoder, ``logit_scale`` and other entries are ignored on purpose), the V-AURA
    Lightning ``state_dict`` (``visual_feature_extractor.*``; the sampler and codec are ignored), a state dict
    that holds one of those, or a bare v_encoder state dict. Any missing/unexpected/mis-shaped key raises.
    """
    source = "state dict"
    if isinstance(state_dict_or_path, (str, Path)):
        source = str(state_dict_or_path)
        obj: Mapping[str, Any] = read_checkpoint(state_dict_or_path, SEGMENT_AVCLIP_URL_HINT, "visual.weights")
    else:
        obj = state_dict_or_path
    tensors = inner_tensors(obj, "state_dict")
    sub = select_prefixed(tensors, V_ENCODER_PREFIXES)
    if not sub:
        own = set(model.state_dict())
        if not (set(tensors) & own):
            raise WeightsError(
                f"{source}: no visual-encoder weights found (expected keys under one of {list(V_ENCODER_PREFIXES)} "
                f"or bare Motionformer names such as 'blocks.0.attn.qkv.weight'); first keys: {sorted(tensors)[:5]}"
            )
        sub = tensors
    load_strict(model, sub, source)
    return model


def frames_to_input(
    frames: np.ndarray | torch.Tensor,
    crop: int,
    train: bool,
    short_side: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, crop, crop]`` in [-1, 1] (FACTS: short side, crop, mean=std=0.5).

    Frames already at ``crop × crop`` (as ``vaura.media.read_video`` returns them) are only normalised.
    Otherwise the short side is resized to ``short_side`` (bilinear, antialiased) and a ``crop`` square is taken:
    centred at test time, random with a horizontal flip (p = 0.5) in training.
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise VisualInputError(f"expected uint8 frames [T, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if (h, w) != (crop, crop):
        if min(h, w) != short_side:
            scale = short_side / min(h, w)
            size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
            x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255)
        h, w = x.shape[-2:]
        if min(h, w) < crop:
            raise VisualInputError(f"frames {h}x{w} are smaller than the crop {crop}")
        if train:
            top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
        else:
            top, left = (h - crop) // 2, (w - crop) // 2
        x = x[..., top:top + crop, left:left + crop]
    if train and float(torch.rand((), generator=generator)) < 0.5:
        x = x.flip(-1)
    return x.float().div(255.0).sub(0.5).div(0.5)


def to_segments(x: torch.Tensor, frames_per_segment: int) -> torch.Tensor:
    """``[T, 3, H, W]`` -> ``[T // F, 3, F, H, W]`` non-overlapping segments (a trailing partial one is dropped)."""
    n = x.shape[0] // frames_per_segment
    if n == 0:
        raise VisualInputError(f"{x.shape[0]} frames: need at least {frames_per_segment} (one segment)")
    x = x[: n * frames_per_segment].reshape(n, frames_per_segment, *x.shape[1:])
    return x.permute(0, 2, 1, 3, 4)


class VisualEncoder(nn.Module):
    """Frozen, eval-mode encoder: ``encode(frames uint8 [T,H,W,3] @ 25 fps) -> [8·(T//16), D]`` at 12.5 Hz."""

    def __init__(
        self, model: MotionFormer, short_side: int = 256, batch_size: int = 8, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__()
        self.model = model
        self.short_side = short_side
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.model.size.dim

    @property
    def frame_rate(self) -> float:
        """Feature tokens per second (12.5 for 16-frame segments with a 2-frame tubelet at 25 fps)."""
        return FPS / self.model.size.tubelet

    def train(self, mode: bool = True) -> "VisualEncoder":
        return super().train(False)

    def n_tokens(self, n_frames: int) -> int:
        sz = self.model.size
        return sz.tokens_per_segment * (n_frames // sz.frames)

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One clip -> float32 CPU tensor ``[N, D]``."""
        return self.encode_many([frames])[0]

    @torch.no_grad()
    def encode_many(self, clips: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """Several clips (any lengths); their segments are batched together ``batch_size`` at a time.

        Only one clip's preprocessed frames and one batch are held at once (a 2.56 s clip at 224² is ~39 MB).
        """
        sz = self.model.size
        done: list[torch.Tensor] = []  # (tokens_per_segment, D) per segment, in clip order
        pending: list[torch.Tensor] = []

        def flush() -> None:
            batch = torch.stack(pending).to(self.device)
            done.extend(self.model(batch.unsqueeze(0))[0].float().cpu())
            pending.clear()

        counts = []
        for clip in clips:
            segs = to_segments(frames_to_input(clip, sz.img_size, False, self.short_side), sz.frames)
            counts.append(len(segs))
            for seg in segs:
                pending.append(seg)
                if len(pending) == self.batch_size:
                    flush()
        if pending:
            flush()
        result, start = [], 0
        for n in counts:
            result.append(torch.cat(done[start:start + n]))
            start += n
        return result


def check_paper_size(cfg: VisualConfig) -> None:
    """``kind: segment_avclip`` needs the released architecture; name every knob that differs."""
    paper = PAPER_SIZE
    pairs = {"dim": (cfg.dim, paper.dim), "depth": (cfg.depth, paper.depth), "heads": (cfg.heads, paper.heads),
             "mlp_ratio": (cfg.mlp_ratio, paper.mlp_ratio), "crop": (cfg.crop, paper.img_size),
             "patch": (cfg.patch, paper.patch), "tubelet": (cfg.tubelet, paper.tubelet),
             "frames_per_segment": (cfg.frames_per_segment, paper.frames)}
    diffs = [f"visual.{k}={mine} (paper {ref})" for k, (mine, ref) in pairs.items() if mine != ref]
    if diffs:
        raise WeightsError(
            "visual.kind=segment_avclip loads the released ViT-B weights, which need the paper sizes; "
            f"params differ: {', '.join(diffs)}"
        )


def standin_path(root: str | Path = ".", data_dir: str = "data") -> Path:
    """Where the ``avclip`` stage writes the offline stand-in and ``cache``/``generate`` read it (one rule)."""
    return Path(root) / data_dir / "avclip" / "visual.pt"


def load_visual_encoder(cfg: VisualConfig, root: str | Path = ".", data_dir: str = "data") -> VisualEncoder:
    """Build the frozen encoder named by ``cfg`` (paths relative to ``root``; the stand-in under ``data_dir``)."""
    root = Path(root)
    if cfg.kind == "segment_avclip":
        check_paper_size(cfg)
        model = load_segment_avclip(MotionFormer(PAPER_SIZE), root / cfg.weights)
    else:
        model = load_standin(standin_path(root, data_dir), size_from_config(cfg))
    return VisualEncoder(model, cfg.short_side, cfg.batch_size, resolve_device(cfg.device))


def standin_payload(model: MotionFormer, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``avclip`` saves: weights + the architecture they were trained with (weights_only-loadable)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"size": model.size.to_dict(), "state_dict": state, **(dict(extra or {}))}


def load_standin(path: Path, size: MotionFormerSize) -> MotionFormer:
    """Load ``data/avclip/visual.pt``; its architecture must equal the one params ask for."""
    if not path.is_file():
        raise WeightsError(
            f"offline visual encoder not found: {path}. It is produced by the 'avclip' stage "
            "(`dvc repro avclip` or `vaura avclip --params params.yaml`)."
        )
    obj = read_checkpoint(path, "offline stand-in (run the avclip stage)", own_file=True)
    if "size" not in obj or "state_dict" not in obj:
        raise WeightsError(f"{path}: not a vaura stand-in encoder file (needs 'size' and 'state_dict')")
    saved = MotionFormerSize(**obj["size"])
    if saved != size:
        diffs = {k: (v, size.to_dict()[k]) for k, v in saved.to_dict().items() if size.to_dict()[k] != v}
        raise WeightsError(
            f"{path}: trained with a different architecture than params.visual asks for "
            f"(file vs params: {diffs}); rerun the avclip stage"
        )
    model = MotionFormer(size)
    load_strict(model, obj["state_dict"], str(path))
    return model
