"""V-AURA decoder: delay pattern, embeddings, fusion/prepend conditioning, Llama decoder, sampler, import."""
from vaura.model.config import GenerationConfig, ModelConfig, named_size
from vaura.model.decoder import VAURA

__all__ = ["VAURA", "ModelConfig", "GenerationConfig", "named_size"]
