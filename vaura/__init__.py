"""vaura: V-AURA video-to-audio generation with a reproducible MLOps pipeline."""

__version__ = "0.1.0"
