"""Audio-visual relevance curation: scorers (``imagebind``, ``motion-onset``) and threshold filtering.

VGGSound-style data holds many clips whose sound is not caused by what is visible; V-AURA trains on the
"VisualSound" subset whose ImageBind audio-visual similarity passes a threshold. This package scores every clip
(:mod:`vaura.curation.scoring`) and turns scores into train/val/test lists (:mod:`vaura.curation.filtering`).
Nothing is re-exported here: importing one module of the package (e.g. ``filtering`` for the ``filter`` and
``cache`` stages) does not load the scorers, so their code is not a dependency of those stages.
"""
