"""The rain model: a layer of streaks composited over the image, with the veil of rain accumulation.

Heavy synthetic rain as in Rain100H (Yang et al., CVPR 2017, "Deep Joint Rain Detection and
Removal from a Single Image"), whose model is ``O = (1 − v)·(B ⊕ S) + v·A``:

- the **streak layer** ``S``: sparse seeds (a fraction ``density`` of the pixels, each with a
  random brightness) smeared by a **line kernel** of ``length`` pixels at an angle ``angle``
  from vertical (motion blur of falling drops during the exposure), widened by a Gaussian of
  ``width`` pixels (FWHM) across the line, scaled to a peak of ``intensity``;
- **composited** over the background ``B`` by screen blending, ``B ⊕ S = 1 − (1 − B)(1 − S)``:
  light adds, the result stays in [0, 1], a dark background shows the streak at full strength;
- the **veil** of rain accumulation (distant rain scatters light like fog): a blend of
  strength ``v`` towards a grey airlight ``A``.

Parameters are drawn per image (:meth:`RainParams.draw`) from stated ranges; lengths and
widths are in pixels of the image the rain falls on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RAIN_RANGES", "RainParams", "add_rain", "line_kernel", "streak_layer"]

#: Ranges of the per-image draws (uniform): ``angle`` in degrees from vertical, ``length``
#: as a fraction of the image's shorter side, ``width`` (FWHM, px), ``density`` (fraction of
#: pixels that seed a streak), ``intensity`` (peak of the streak layer), ``veil`` (``v``) and
#: the veil's grey level ``airlight``.
RAIN_RANGES: dict[str, tuple[float, float]] = {
    "angle": (-20.0, 20.0), "length": (0.08, 0.2), "width": (1.0, 2.5),
    "density": (0.004, 0.012), "intensity": (0.6, 0.9), "veil": (0.0, 0.25),
    "airlight": (0.7, 0.9)}


def line_kernel(length: float, angle: float, width: float = 1.0) -> Tensor:
    """A normalised (sum 1) 2-D kernel: a line of ``length`` px at ``angle`` degrees from
    vertical (positive: the top leans right), with a Gaussian cross-section of FWHM ``width``
    px. Built by sampling the distance of every kernel pixel to the segment."""
    half = max(1, math.ceil(length / 2 + width))
    ys, xs = torch.meshgrid(torch.arange(-half, half + 1, dtype=torch.float64),
                            torch.arange(-half, half + 1, dtype=torch.float64), indexing="ij")
    theta = math.radians(angle)
    dy, dx = -math.cos(theta), math.sin(theta)  # unit vector along the streak, image rows down
    along = ys * dy + xs * dx
    across = (ys * dx - xs * dy).abs()
    beyond = (along.abs() - length / 2).clamp(min=0)  # past the segment's ends
    dist2 = across ** 2 + beyond ** 2
    sigma = width / (2 * math.sqrt(2 * math.log(2)))
    k = torch.exp(-dist2 / (2 * max(sigma, 0.3) ** 2))
    return (k / k.sum()).to(torch.float32)


@dataclass(frozen=True)
class RainParams:
    """The draws of one rainy image (see the module docstring)."""

    angle: float
    length: float
    width: float
    density: float
    intensity: float
    veil: float
    airlight: float

    @classmethod
    def draw(cls, rng: np.random.Generator,
             ranges: dict[str, tuple[float, float]] | None = None) -> RainParams:
        """Each parameter uniform in its range of ``ranges`` (default :data:`RAIN_RANGES`)."""
        r = {**RAIN_RANGES, **(ranges or {})}
        return cls(**{k: float(rng.uniform(*r[k])) for k in
                      ("angle", "length", "width", "density", "intensity", "veil", "airlight")})


def streak_layer(shape: tuple[int, int], params: RainParams, rng: np.random.Generator,
                 scale: int | None = None) -> Tensor:
    """The streak layer ``S`` (H×W in [0, intensity]) for an image of ``shape`` = (H, W).
    ``scale``: the side that ``params.length`` is a fraction of (default: ``min(H, W)``; pass
    the whole photo's shorter side for a crop of it, so that streaks keep their length)."""
    h, w = shape
    length = params.length * (scale if scale is not None else min(h, w))
    kernel = line_kernel(length, params.angle, params.width)
    pad = kernel.shape[-1] // 2
    # Seeds on a margin around the image too, so that streaks enter from outside it.
    seeds = rng.random((h + 2 * pad, w + 2 * pad)) < params.density
    brightness = rng.uniform(0.5, 1.0, size=seeds.shape) * seeds
    field = torch.from_numpy(brightness).to(torch.float32)[None, None]
    smeared = F.conv2d(field, kernel[None, None])[0, 0]  # H×W: the "valid" part
    peak = float(torch.quantile(smeared[smeared > 0], 0.99)) if bool((smeared > 0).any()) else 1.0
    return (smeared / peak).clamp(0, 1) * params.intensity


def add_rain(clean: Tensor, params: RainParams, rng: np.random.Generator,
             scale: int | None = None) -> tuple[Tensor, Tensor]:
    """``(rainy, S)``: ``clean`` (3×H×W in [0, 1]) with the streak layer ``S`` screen-blended
    over it and the veil, ``O = (1 − v)·(1 − (1 − B)(1 − S)) + v·A`` (module docstring)."""
    if clean.dim() != 3 or clean.shape[0] != 3:
        raise ValueError(f"clean must be 3×H×W, got {tuple(clean.shape)}")
    s = streak_layer(tuple(clean.shape[-2:]), params, rng, scale)
    streaked = 1 - (1 - clean) * (1 - s)                                  # B ⊕ S
    rainy = (1 - params.veil) * streaked + params.veil * params.airlight  # the veil
    return rainy.clamp(0, 1), s
