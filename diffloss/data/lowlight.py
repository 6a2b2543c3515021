"""The low-light model: a short exposure seen through a noisy sensor and saved as an 8-bit image.

A LOL-style low-light image (Wei et al., BMVC 2018: the same scene with a short and a long
exposure) is made from a clean sRGB image ``J`` in four steps, each a documented physical
stage of a camera:

1. **to linear light**: ``L = srgb_to_linear(J)`` (IEC 61966-2-1; sRGB values are gamma
   encoded, light adds and scales in linear values);
2. **short exposure**: ``E = k·L``, ``k`` the exposure ratio (LOL: 1/10 to 1/100 of a normal
   exposure);
3. **sensor noise**, the Poisson–Gaussian model of raw sensor data (Foi et al., IEEE TIP 2008):
   shot noise ``Poisson(E·n_sat)/n_sat`` (``n_sat`` photo-electrons fill the well; the fewer
   photons, the noisier) plus read noise ``N(0, σ_r²)``; so for a flat patch
   ``Var[y] = E/n_sat + σ_r²``, the variance grows linearly with the signal;
4. **8-bit image**: clip to [0, 1], back to sRGB (``linear_to_srgb``), quantise to the 256
   levels of an 8-bit file.

Parameters are drawn per image (:meth:`LowLightParams.draw`) from stated ranges chosen so
that the mean sRGB brightness of the result is a few percent of full scale, as in LOL's
``low`` images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["LOWLIGHT_RANGES", "LowLightParams", "add_low_light", "linear_to_srgb",
           "sensor_noise", "srgb_to_linear"]

#: Ranges of the per-image draws: exposure ratio ``k`` (log-uniform), full-well capacity
#: ``n_sat`` in photo-electrons (log-uniform) and read noise ``σ_r`` in units of full scale
#: (log-uniform).
LOWLIGHT_RANGES: dict[str, tuple[float, float]] = {
    "exposure": (0.01, 0.06), "full_well": (300.0, 3000.0), "read_noise": (5e-4, 3e-3)}


def srgb_to_linear(x: Tensor) -> Tensor:
    """sRGB → linear light (IEC 61966-2-1): ``x/12.92`` for ``x ≤ 0.04045``, else
    ``((x + 0.055)/1.055)^2.4``."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: Tensor) -> Tensor:
    """Linear light → sRGB, the inverse of :func:`srgb_to_linear`: ``12.92·x`` for
    ``x ≤ 0.0031308``, else ``1.055·x^(1/2.4) − 0.055``."""
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0) ** (1 / 2.4) - 0.055)


def sensor_noise(exposed: Tensor, full_well: float, read_noise: float,
                 rng: np.random.Generator) -> Tensor:
    """The Poisson–Gaussian sensor model: ``Poisson(E·n_sat)/n_sat + N(0, σ_r²)`` for the
    exposed linear signal ``E`` (in units of full scale), ``n_sat`` = ``full_well`` and
    ``σ_r`` = ``read_noise``. ``Var = E/n_sat + σ_r²``. Not clipped (a dark pixel may read
    below 0, as raw sensor values do before the black level is subtracted)."""
    e = exposed.detach().to(torch.float64).clamp(min=0).numpy()
    electrons = rng.poisson(e * full_well)
    y = electrons / full_well + rng.normal(0.0, read_noise, size=e.shape)
    return torch.from_numpy(y).to(exposed.dtype)


@dataclass(frozen=True)
class LowLightParams:
    """The draws of one low-light image (see the module docstring)."""

    exposure: float
    full_well: float
    read_noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator,
             ranges: dict[str, tuple[float, float]] | None = None) -> LowLightParams:
        """Each parameter log-uniform in its range of ``ranges`` (default :data:`LOWLIGHT_RANGES`)."""
        r = {**LOWLIGHT_RANGES, **(ranges or {})}

        def log_uniform(lo: float, hi: float) -> float:
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

        return cls(log_uniform(*r["exposure"]), log_uniform(*r["full_well"]),
                   log_uniform(*r["read_noise"]))


def add_low_light(clean: Tensor, params: LowLightParams, rng: np.random.Generator) -> Tensor:
    """The low-light version of the sRGB image ``clean`` (3×H×W in [0, 1]): linear light,
    exposure ``k``, sensor noise, back to sRGB, 8-bit quantisation (module docstring)."""
    if clean.dim() != 3 or clean.shape[0] != 3:
        raise ValueError(f"clean must be 3×H×W, got {tuple(clean.shape)}")
    exposed = params.exposure * srgb_to_linear(clean)                   # E = k·L
    raw = sensor_noise(exposed, params.full_well, params.read_noise, rng)  # shot + read noise
    srgb = linear_to_srgb(raw.clamp(0, 1))
    return torch.round(srgb * 255) / 255                                # an 8-bit file
