"""Measuring a judge: how well a frozen prior predicts noise, and what differences it notices.

Two measurements that chapter 02 makes for both of this project's judges (the tiny prior and
FFDNet), on photos neither was trained on:

* :func:`eps_error_per_t`: the DDPM objective per timestep (Ho et al. 2020, Eq. 14),
  ``E‖ε_θ(√ᾱ_t·x_0 + √(1−ᾱ_t)·ε, t) − ε‖²``: how much of the noise the prior finds;
* :func:`naturalness_sensitivity`: DiffLoss's naturalness term (seed Eq. 6),
  ``L_nat(z, x; t) = MSE(ε_θ(z_t, t), ε_θ(x_t, t))`` with the same ε and t for both images,
  between a clean image and each of its degraded versions (:func:`degraded_versions`), and
  between two different clean images, the yardstick of a difference that is real content.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from .data.haze import add_haze
from .data.lowlight import LOWLIGHT_RANGES, LowLightParams, add_low_light
from .data.rain import RAIN_RANGES, RainParams, add_rain

__all__ = ["degraded_versions", "eps_error_per_t", "naturalness_sensitivity"]


@torch.no_grad()
def eps_error_per_t(prior: torch.nn.Module, images: Tensor, timesteps: Sequence[int],
                    seed: int = 0) -> list[float]:
    """``E‖ε_θ(x_t, t) − ε‖²`` (mean over pixels and images) at each t, for images in [0, 1]
    (B×3×H×W), with noise drawn from ``seed`` (the same ε for every prior given the same seed)."""
    g = torch.Generator().manual_seed(seed)
    x0 = prior.encode(images.to(prior.device, prior.dtype))
    out = []
    for t in timesteps:
        eps = torch.randn(x0.shape, generator=g).to(x0)
        tt = torch.full((len(x0),), int(t), dtype=torch.long)
        out.append(float((prior(prior.schedule.q_sample(x0, tt, eps), tt).eps - eps).square().mean()))
    return out


@torch.no_grad()
def naturalness_sensitivity(prior: torch.nn.Module, clean: Tensor, versions: dict[str, Tensor],
                            timesteps: Sequence[int], draws: int = 4,
                            seed: int = 0) -> dict[str, list[float]]:
    """``L_nat(z, x; t)`` per version ``z`` of the clean images ``x`` (B×3×H×W in [0, 1], B ≥ 2)
    at each t, averaged over images and ``draws`` noise draws (the same ε for ``z`` and ``x``),
    plus ``"other scene"``: image i against image i+1 (mod B), the same ε."""
    if len(clean) < 2:
        raise ValueError("naturalness_sensitivity needs at least two clean images (the other scene)")
    g = torch.Generator().manual_seed(seed)
    x0 = prior.encode(clean.to(prior.device, prior.dtype))
    versions_in_space = {k: prior.encode(v.to(prior.device, prior.dtype)) for k, v in versions.items()}
    zs = [*versions_in_space, "other scene"]
    out: dict[str, list[float]] = {k: [] for k in zs}
    for t in timesteps:
        tt = torch.full((len(x0),), int(t), dtype=torch.long)
        sums = dict.fromkeys(zs, 0.0)
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=g).to(x0)
            e_x = prior(prior.schedule.q_sample(x0, tt, eps), tt).eps
            # the other scene (image i−1) under image i−1's ε, against image i under that same ε
            e_x_other = prior(prior.schedule.q_sample(x0, tt, eps.roll(1, dims=0)), tt).eps
            sums["other scene"] += float((e_x.roll(1, dims=0) - e_x_other).square().mean())
            for k, z in versions_in_space.items():
                e_z = prior(prior.schedule.q_sample(z, tt, eps), tt).eps
                sums[k] += float((e_z - e_x).square().mean())
        for k in zs:
            out[k].append(sums[k] / draws)
    return out


def degraded_versions(clean: Tensor, depth: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Five degradations of clean images in [0, 1] (B×3×H×W; ``depth`` B×H×W or B×1×H×W), each
    from this package's model of it: ``hazy`` (atmospheric scattering, β 0.6, A 0.8), ``dark``
    (low light: exposure, shot and read noise, 8 bits; the middle of its ranges), ``rainy``
    (streaks and veil, the middle of its ranges), ``blurred`` (Gaussian, σ 2 px) and ``noisy``
    (Gaussian, σ 0.1)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    # the middle of each range: geometric for the log-uniform low-light draws, arithmetic for rain
    mid_dark = LowLightParams.draw(rng, {k: ((lo * hi) ** 0.5,) * 2 for k, (lo, hi) in LOWLIGHT_RANGES.items()})
    mid_rain = RainParams.draw(rng, {k: ((lo + hi) / 2,) * 2 for k, (lo, hi) in RAIN_RANGES.items()})
    return {
        "hazy": add_haze(clean, depth, beta=0.6, airlight=0.8),
        "dark": torch.stack([add_low_light(x, mid_dark, rng) for x in clean]),
        "rainy": torch.stack([add_rain(x, mid_rain, rng)[0] for x in clean]),
        "blurred": gaussian_blur(clean, kernel_size=9, sigma=2.0),
        "noisy": (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1),
    }
