"""Audio codec for V-AURA: a frozen DAC tokenizer (pretrained 44.1 kHz or the offline stand-in) and its training."""
from vaura.codec.codec import (
    Codec,
    CodecInputError,
    load_codec,
    load_dac_file,
    load_dac_state_dict,
    offline_codec_path,
)
from vaura.codec.config import CodecConfig, CodecGateConfig, CodecTrainConfig, TinyDACConfig

__all__ = [
    "Codec",
    "CodecConfig",
    "CodecGateConfig",
    "CodecInputError",
    "CodecTrainConfig",
    "TinyDACConfig",
    "load_codec",
    "load_dac_file",
    "load_dac_state_dict",
    "offline_codec_path",
]
