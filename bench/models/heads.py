"""Task decoders built from a task's kind: global classification or dense prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassificationHead(nn.Module):
    """Global average pooling + one linear layer (MoLA's decoder for classification)."""

    def __init__(self, in_channels: int, num_outputs: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)) if x.dim() == 4 else x)


class DenseHead(nn.Module):
    """3x3 conv + ReLU + 1x1 conv, bilinearly upsampled to the input size (per-pixel outputs)."""

    def __init__(self, in_channels: int, num_outputs: int, out_size: tuple[int, int],
                 hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_channels
        self.out_size = tuple(out_size)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_outputs, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if out.shape[-2:] != self.out_size:
            out = F.interpolate(out, size=self.out_size, mode="bilinear", align_corners=False)
        return out
