"""Small networks that stand for "a user's own restorer" in tests (issue 23): imported by path,
``tests.fixtures_nets:TinyNet``, exactly as ``diffloss train --model mypkg.nets:MyNet`` imports one."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A residual two-layer CNN: z = clamp(y + conv(relu(conv(y))), 0, 1)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.width = width
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y + self.body(y)).clamp(0, 1)


class HalfSize(nn.Module):
    """Returns a half-resolution image: not a restorer's contract."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, stride=2, padding=1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv(y)


class NotANetwork:
    """A class, but not an nn.Module."""
