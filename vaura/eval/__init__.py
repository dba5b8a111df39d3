"""Evaluation: metrics over generated audio, CFG sweeps and paper-shaped tables."""
