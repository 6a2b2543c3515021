"""What a diffusion U-Net predicts, and how each prediction becomes the noise ε that DiffLoss compares.

A U-Net trained on x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (seed Eq. 2) may be asked for one of three targets
(diffusers' ``prediction_type``); with ᾱ = ᾱ_t each determines ε exactly:

* ``"epsilon"``       ε̂ itself (DDPM, ADM, Stable Diffusion 1.x);
* ``"v_prediction"``  v = √ᾱ·ε − √(1−ᾱ)·x_0 (Salimans & Ho 2022; SD 2.x-v), so
  ε = √ᾱ·v + √(1−ᾱ)·x_t;
* ``"sample"``        x̂_0, so ε = (x_t − √ᾱ·x̂_0)/√(1−ᾱ)  (ADM's ``predict_xstart``).

DiffLoss's L_nat (seed Eq. 6) is always computed on ε, whatever the prior was trained to output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..schedule import NoiseSchedule

#: diffusers' names for the three targets a diffusion U-Net can be trained to predict.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(kind: Any, where: Any = "the prior") -> str:
    """``kind`` if it is one of :data:`PREDICTION_TYPES`, else a ``ValueError`` naming ``where``."""
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"{where}: prediction_type={kind!r} is not one DiffLoss can turn into predicted noise; "
            f"supported: {', '.join(repr(k) for k in PREDICTION_TYPES)} (diffusers' scheduler names)."
        )
    return kind


def prediction_type_of(scheduler_config: dict[str, Any] | None, where: Any = "the prior") -> str:
    """The checked ``prediction_type`` of a diffusers scheduler config (``"epsilon"`` when absent,
    as in diffusers)."""
    return check_prediction_type((scheduler_config or {}).get("prediction_type", "epsilon"), where)


def to_epsilon(output: Tensor, xt: Tensor, t: Tensor, schedule: NoiseSchedule, kind: str) -> Tensor:
    """The U-Net's ``output`` for (x_t, t) as predicted noise ε̂ (module docstring's three formulas).

    Computed in at least float32 (x̂_0 → ε divides by √(1−ᾱ_t), which is 0.01 at t = 0 for the
    linear schedule), then returned in ``output``'s dtype."""
    if kind == "epsilon":
        return output
    dtype = torch.promote_types(output.dtype, torch.float32)
    out, x = output.to(dtype), xt.to(dtype)
    abar = schedule.extract("alphas_cumprod", t, out)
    if kind == "v_prediction":
        eps = abar.sqrt() * out + (1 - abar).sqrt() * x
    elif kind == "sample":
        eps = (x - abar.sqrt() * out) / (1 - abar).sqrt()
    else:
        check_prediction_type(kind)
    return eps.to(output.dtype)
