"""What every relevance scorer shares: its interface, its error and its decoding pool.

Kept apart from :mod:`vaura.curation.scoring` (the registry and the scoring loop), which imports the scorers;
the scorers import only this module, so the package has no import circle.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence


class ScoringError(RuntimeError):
    """A clip that could not be scored (the message names the file and the reason)."""


class Scorer(Protocol):
    """What the ``score`` stage needs from a scorer."""

    name: str

    def score_clip(self, path: str | Path) -> float:
        """Relevance of one clip (higher = the audio is more likely caused by the visible action)."""

    def score_batch(self, paths: Sequence[str | Path]) -> list[float]:
        """Scores for several clips at once (batched on the device where the scorer has a model)."""


def thread_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]``, decoded in ``workers`` threads (PyAV and torch release the GIL)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(fn, items))
