"""Datasets: the synthetic benchmark, raw-video sources for ``acquire``, and manifest reading."""
