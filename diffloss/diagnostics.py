"""What a restoration looks like beyond PSNR/SSIM: artefact energy, and the prior's verdict.

- :func:`high_frequency_error`: the energy of the restoration error ``z − x`` above a spatial
  frequency. Checkerboard and grid artefacts of an early-trained network, and noise, live near
  the Nyquist frequency, and so does the fine detail a blurry restoration lost: the value
  counts both (a blurrier output raises it too). Haze and tints change an image slowly and
  barely enter it. By Parseval, the value is the mean square
  of the error after an ideal high-pass filter:

  ``HFE(z, x) = 1/(C·(H·W)²) · Σ_c Σ_{|f| > f_c} |F[z_c − x_c](f)|²``,

  with ``F`` the 2-D DFT and ``|f|`` the radial frequency in cycles per pixel (Nyquist 0.5).
- :func:`prior_denoising_loss`: how well the frozen diffusion prior predicts the noise added
  to an image, the DDPM "simple" loss ``E_{t,ε} ‖ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t) − ε‖²`` (Ho et al.
  Eq. 14), averaged over fixed timesteps and the image's tiles. An image the prior finds natural
  gets a low loss; comparing a restoration's with its ground truth's (same ε, same t) says how
  far the prior thinks the restoration is from a natural image.
- :func:`paired_differences`: ``b − a`` per seed, with mean and sample standard deviation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["DENOISING_TIMESTEPS", "denoising_timesteps", "high_frequency_error", "paired_differences",
           "prior_denoising_loss"]


def high_frequency_error(restored: Tensor, target: Tensor, cutoff: float = 0.25) -> Tensor:
    """Per-image energy of ``restored − target`` at radial frequencies above ``cutoff`` cycles
    per pixel (0 < cutoff < 0.5·√2); ``B×C×H×W`` (or ``C×H×W``) in, a ``B`` tensor out."""
    if restored.shape != target.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and target {tuple(target.shape)} "
                         "must have the same shape")
    if not 0 < cutoff < 0.5 * math.sqrt(2):
        raise ValueError(f"cutoff must be in (0, 0.707) cycles/pixel, got {cutoff}")
    err = (restored - target).double()
    if err.dim() == 3:
        err = err[None]
    h, w = err.shape[-2:]
    spectrum = torch.fft.fft2(err)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    high = (fy.square() + fx.square()).sqrt() > cutoff
    energy = (spectrum.abs().square() * high).sum(dim=(-3, -2, -1))
    return (energy / (err.shape[-3] * h * w) / (h * w)).float()


#: The timesteps of :func:`prior_denoising_loss` for a prior that knows them all.
DENOISING_TIMESTEPS = (50, 100, 200, 400)


def denoising_timesteps(prior: Any) -> tuple[int, ...]:
    """:data:`DENOISING_TIMESTEPS` when the prior knows them (a diffusion U-Net), else four evenly
    spaced timesteps up to the last it knows (a denoiser prior: FFDNet's 42, 84, 125, 167)."""
    lo, hi = getattr(prior, "valid_t_range", (0, 999))
    if lo <= DENOISING_TIMESTEPS[0] and DENOISING_TIMESTEPS[-1] <= hi:
        return DENOISING_TIMESTEPS
    return tuple(max(lo, round(hi * k / 4)) for k in range(1, 5))


@torch.no_grad()
def prior_denoising_loss(prior: Any, images: Tensor, timesteps: Sequence[int] | None = None,
                         seed: int = 0, tile: int | None = None) -> Tensor:
    """Per-image DDPM loss of the frozen ``prior`` on ``images`` in [0, 1] (``B×3×H×W``), at
    ``timesteps`` (default :func:`denoising_timesteps`: 50, 100, 200, 400 for a diffusion U-Net).

    Each image is cut into non-overlapping ``tile×tile`` windows (default: the prior's native
    size, or the largest multiple of its downsampling factor that fits a smaller image; the
    rest of the image is left out), mapped to [-1, 1], noised at every timestep in
    ``timesteps`` with noise drawn from ``seed`` (the same ε for the same window and t, whatever
    the image: restorations and ground truths are compared like for like), and the squared error
    of the predicted noise is averaged.
    """
    timesteps = denoising_timesteps(prior) if timesteps is None else timesteps
    b, c, h, w = images.shape
    factor = int(getattr(prior, "downsampling_factor", 1))
    if tile is None:  # the native size, or the largest window the U-Net takes that fits
        tile = min(prior.sample_size, min(h, w) // factor * factor)
    tile = int(tile)
    if tile < factor or h < tile or w < tile:
        raise ValueError(f"images ({h}×{w}) are too small for the prior's windows "
                         f"({tile}×{tile}, a multiple of {factor})")
    ny, nx = h // tile, w // tile
    x0 = images[..., :ny * tile, :nx * tile] * 2 - 1
    x0 = x0.reshape(b, c, ny, tile, nx, tile).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, tile, tile)
    device = next(prior.parameters()).device
    x0 = x0.to(device)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in timesteps:  # one ε per window position, shared by all images
        noise = torch.randn((ny * nx, c, tile, tile), generator=gen).repeat(b, 1, 1, 1).to(device)
        t = torch.full((x0.shape[0],), int(step), dtype=torch.long, device=device)
        eps = prior(prior.schedule.q_sample(x0, t, noise), t).eps.float()
        losses.append((eps - noise).square().mean(dim=(1, 2, 3)))
    return torch.stack(losses).mean(0).reshape(b, ny * nx).mean(1).cpu()


def paired_differences(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``b − a`` seed by seed (same seeds, same data), their mean and sample standard deviation
    (``None`` for one seed)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty lists, got {len(a)} and {len(b)}")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    return {"per_seed": diffs, "mean": statistics.mean(diffs),
            "sd": statistics.stdev(diffs) if len(diffs) > 1 else None}
