"""Evaluation: metrics over generated audio and paper-shaped tables."""
