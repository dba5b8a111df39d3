"""Visual side of V-AURA: the Segment-AVCLIP Motionformer encoder (also the visual branch of Synchformer)."""
from vaura.visual.config import AVClipConfig, VisualConfig
from vaura.visual.encoder import (
    VisualEncoder,
    VisualInputError,
    frames_to_input,
    load_segment_avclip,
    load_visual_encoder,
    to_segments,
)
from vaura.visual.motionformer import PAPER_SIZE, MotionFormer, MotionFormerSize

__all__ = [
    "AVClipConfig", "MotionFormer", "MotionFormerSize", "PAPER_SIZE", "VisualConfig",
    "VisualEncoder", "VisualInputError", "frames_to_input", "load_segment_avclip", "load_visual_encoder",
    "to_segments",
]
