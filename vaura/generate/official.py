"""The released V-AURA system assembled from its one checkpoint: its own DAC and its own Segment-AVCLIP encoder.

:mod:`vaura.model.official` splits the checkpoint and builds the decoder; the other two groups of tensors belong
to the codec and the visual encoder, which stand beside the model, so they are assembled here.
"""
from __future__ import annotations

import torch

from vaura.codec import Codec, load_dac_state_dict
from vaura.model.official import OfficialCheckpoint
from vaura.visual import PAPER_SIZE, MotionFormer, VisualEncoder, load_segment_avclip


def official_codec(ckpt: OfficialCheckpoint, n_quantizers: int = 9) -> Codec:
    """The checkpoint's own DAC (fp16 tensors → fp32) as a ``vaura.codec.Codec``."""
    return Codec(load_dac_state_dict(ckpt.codec, None, source=f"{ckpt.source} [audio_encoder.model.*]"),
                 n_quantizers)


def official_visual_encoder(ckpt: OfficialCheckpoint, device: str | torch.device = "cpu") -> VisualEncoder:
    """The checkpoint's own Segment-AVCLIP Motionformer as a ``vaura.visual.VisualEncoder``."""
    return VisualEncoder(load_segment_avclip(MotionFormer(PAPER_SIZE), ckpt.visual), device=device)
