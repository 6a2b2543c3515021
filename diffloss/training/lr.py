"""The learning-rate schedule of a run: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["lr_factor"]


def lr_factor(config: Any, iterations: int) -> Callable[[int], float]:
    """The factor on ``config.lr`` after ``step`` optimiser steps (``LambdaLR``): linear warm-up
    over ``warmup`` steps, then 1 (``"constant"``) or the cosine from 1 to ``min_lr / lr``,
    ``r + (1 − r)·½(1 + cos(π·p))`` with ``p`` the share of the post-warm-up steps done."""
    warmup, ratio = config.warmup, config.min_lr / config.lr

    def factor(step: int) -> float:  # step = optimiser steps done so far
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, iterations - warmup))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
