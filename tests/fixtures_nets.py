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


class ExitsTheProcess(TinyNet):
    """Ends its process at the first forward pass, as a worker killed for memory would."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        import os

        os._exit(3)


class NaNInEval(TinyNet):
    """A fine restorer in ``train()`` mode whose ``eval()`` output is NaN (e.g. broken
    BatchNorm statistics): training looks healthy, validation is not."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = super().forward(y)
        return z if self.training else z * float("nan")


class RaisesInInit(nn.Module):
    """A user's model whose constructor fails (not with a TypeError)."""

    def __init__(self) -> None:
        super().__init__()
        raise RuntimeError("weights file mynet.pth not found")


class FailsAtStep(TinyNet):
    """Trains normally, then raises at its ``fail_at``-th training forward pass (an error met
    mid-run: a broken batch, a bug in the network)."""

    def __init__(self, width: int = 4, fail_at: int = 3) -> None:
        super().__init__(width)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError(f"broken at training call {self.calls}")
        return super().forward(y)



class Black(nn.Module):
    """A black image from the start: z = y·ReLU(w) with w = −1, through which no gradient passes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((1,), -1.0))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.relu(self.w)


class GoesBlack(nn.Module):
    """Returns its input until its first training forward pass, a black image after it: a run
    that collapses in its first step (IAT's collapse in chapter 06, made certain)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.register_buffer("trained", torch.zeros(()))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.trained.fill_(1.0)
        return y * self.w * (1 - self.trained)
