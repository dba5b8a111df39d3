"""Audio-visual relevance curation: scorers (``imagebind``, ``motion-onset``) and threshold filtering.

VGGSound-style data holds many clips whose sound is not caused by what is visible; V-AURA trains on the
"VisualSound" subset whose ImageBind audio-visual similarity passes a threshold. This package scores every clip
(:mod:`vaura.curation.scoring`) and turns scores into train/val/test lists (:mod:`vaura.curation.filtering`).
"""
from vaura.curation.scorer import Scorer, ScoringError
from vaura.curation.scoring import SCORERS, ScoreConfig, build_scorer, score_clips

__all__ = ["SCORERS", "ScoreConfig", "Scorer", "ScoringError", "build_scorer", "score_clips"]
