"""VGGish (Hershey et al. 2017), the FAD backbone, written for vaura with a strict loader.

Architecture: input ``[B, 1, 96, 64]`` (96 log-mel frames of 10 ms × 64 bands = 0.96 s at 16 kHz); four conv
blocks 64 | 128 | 256-256 | 512-512 (3×3, padding 1, ReLU), each followed by 2×2 max-pooling → ``[B, 512, 6, 4]``;
flattened channels-last (H, W, C order, as the TensorFlow original) → FC 12288→4096→4096→128 with ReLU after
each layer. Output: the 128-d embedding before the PCA/quantisation post-processing.

Weight file layout loaded (the PyTorch port's ``vggish-10086976.pth``, a plain state dict, 12 tensors)::

    features.{0,3,6,8,11,13}.{weight,bias}   conv 1, 2, 3a, 3b, 4a, 4b
    embeddings.{0,2,4}.{weight,bias}         FC 4096, 4096, 128

Loading is strict: a missing or unexpected key or a wrong shape is an error naming the file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vaura.weights import load_released

VGGISH_HINT = ("VGGish weights vggish-10086976.pth (the torchvggish port of Google's VGGish, release v0.1 of "
               "github.com/harritaylor/torchvggish)")


class VGGish(nn.Module):
    """VGGish network; module indices follow the weight file's key names."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for spec in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(spec), 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = int(spec)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 128), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, 96, 64]`` log-mel patches → ``[B, 128]``."""
        h = self.features(x).permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(h)


def examples_from_log_mel(log_mel: torch.Tensor, frames: int = 96) -> torch.Tensor:
    """Cut ``[T, 64]`` log-mel into non-overlapping 0.96 s patches ``[n, 1, 96, 64]``; a clip shorter than one
    patch is padded with the log floor (log 0.01) so every clip yields at least one embedding."""
    if log_mel.shape[0] < frames:
        pad = torch.full((frames - log_mel.shape[0], log_mel.shape[1]), float(torch.log(torch.tensor(0.01))))
        log_mel = torch.cat([log_mel, pad])
    n = log_mel.shape[0] // frames
    return log_mel[: n * frames].reshape(n, 1, frames, log_mel.shape[1])


def load_vggish(path: str | Path) -> VGGish:
    """Build VGGish and strictly load the weight file at ``path`` (eval mode, no grad)."""
    return load_released(VGGish, Path(path), VGGISH_HINT, "evaluate.vggish_weights").eval().requires_grad_(False)
