"""Decoder training: torchrun-native DDP trainer, exact-resume checkpoints, LR schedule."""
