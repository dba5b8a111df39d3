"""Generation with a trained or released V-AURA: the CFG sweep over test clips, audio for a whole video, and
the released system assembled from its checkpoint. Stands above ``model``, ``codec``, ``visual`` and ``media``."""
