"""Colour map and structure map of an image (the seed supplement's Fig. 2), and their errors.

The supplement shows, for restored images, a *colour map* (where the colours are, without
detail) and a *structure map* (where the edges are, without colour). This module defines them
precisely so that the chapters can measure them:

- **colour map**: the chroma of the image, strongly low-passed. With the ITU-R BT.601 luma
  ``Y = 0.299·R + 0.587·G + 0.114·B`` and the chroma ``Cb = 0.564·(B − Y)``,
  ``Cr = 0.713·(R − Y)`` (JPEG's YCbCr without the 0.5 offset), the colour map is ``(Cb, Cr)``
  blurred by a Gaussian of standard deviation ``sigma`` pixels (default: 1/32 of the shorter
  side, at least 2). For display, :func:`color_map_rgb` puts it back on a constant mid-grey luma.
- **structure map**: the gradient magnitude of the luma, ``√(G_x² + G_y²)`` with the 3×3 Sobel
  kernels (replicate padding), which keeps edges and texture and drops colour.

:func:`map_errors` gives a restoration's mean absolute error to the ground truth on each map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: ITU-R BT.601 luma weights (R, G, B).
LUMA = (0.299, 0.587, 0.114)


def _batched(img: Tensor) -> tuple[Tensor, bool]:
    if img.ndim == 3:
        return img[None], True
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"expected a 3×H×W or B×3×H×W RGB image, got {tuple(img.shape)}")
    return img, False


def luma(img: Tensor) -> Tensor:
    """Y = 0.299·R + 0.587·G + 0.114·B (BT.601) of B×3×H×W images → B×1×H×W."""
    w = img.new_tensor(LUMA).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def chroma(img: Tensor) -> Tensor:
    """(Cb, Cr) = (0.564·(B − Y), 0.713·(R − Y)) (BT.601, no offset) → B×2×H×W, zero for greys."""
    y = luma(img)
    return torch.cat([0.564 * (img[:, 2:3] - y), 0.713 * (img[:, 0:1] - y)], dim=1)


def default_sigma(height: int, width: int) -> float:
    """The colour map's blur: 1/32 of the shorter side, at least 2 pixels."""
    return max(2.0, min(height, width) / 32)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (±3σ support, reflect padding) of a B×C×H×W tensor."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def color_map(img: Tensor, sigma: float | None = None) -> Tensor:
    """The colour map: Gaussian-blurred (Cb, Cr) chroma (B×2×H×W, or 2×H×W for one image)."""
    x, single = _batched(img)
    s = sigma if sigma is not None else default_sigma(*x.shape[-2:])
    out = gaussian_blur(chroma(x.float()), s)
    return out[0] if single else out


def color_map_rgb(img: Tensor, sigma: float | None = None, y: float = 0.5) -> Tensor:
    """The colour map shown as an RGB image: the blurred chroma on a constant luma ``y``."""
    x, single = _batched(img)
    cbcr = color_map(x, sigma)
    cb, cr = cbcr[:, 0:1] / 0.564, cbcr[:, 1:2] / 0.713  # B − Y, R − Y
    r, b = y + cr, y + cb
    g = (y - LUMA[0] * r - LUMA[2] * b) / LUMA[1]
    out = torch.cat([r, g, b], dim=1).clamp(0, 1)
    return out[0] if single else out


def structure_map(img: Tensor) -> Tensor:
    """The structure map: Sobel gradient magnitude of the luma (B×1×H×W, or H×W for one image)."""
    x, single = _batched(img)
    y = F.pad(luma(x.float()), (1, 1, 1, 1), mode="replicate")
    kx = y.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = F.conv2d(y, kx)
    gy = F.conv2d(y, kx.transpose(-1, -2))
    out = torch.sqrt(gx ** 2 + gy ** 2 + 1e-12)
    return out[0, 0] if single else out


def map_errors(restored: Tensor, target: Tensor, sigma: float | None = None) -> dict[str, float]:
    """Mean absolute error of ``restored`` to ``target`` on the colour map and the structure map
    (``{"color_mae", "structure_mae"}``; both images in [0, 1], same shape)."""
    if restored.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(restored.shape)} vs {tuple(target.shape)}")
    return {
        "color_mae": float((color_map(restored, sigma) - color_map(target, sigma)).abs().mean()),
        "structure_mae": float((structure_map(restored) - structure_map(target)).abs().mean()),
    }
