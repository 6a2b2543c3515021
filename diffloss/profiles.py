"""Run profiles: how big each chapter's experiment is.

``DIFFLOSS_PROFILE`` selects one of ``ci`` | ``small`` | ``paper`` (DESIGN.md, "Run profiles").
Unset, it means ``paper`` when CUDA is available and ``small`` otherwise.

A profile only sets *sizes* (samples, steps, crops, which prior and restorer); the code that
runs is the same in every profile, so the ``ci`` run under nbval exercises the real chapters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

ENV_VAR = "DIFFLOSS_PROFILE"


@dataclass(frozen=True)
class Profile:
    """The knobs that differ between profiles (every chapter reads the ones it needs)."""

    name: str
    description: str
    #: ``"synthetic"`` (haze on the bundled images, Dense-Haze when present for ``small``)
    #: or ``"dense_haze"``.
    data: str
    #: ``"tiny"`` (shipped in the repo) or ``"adm"`` (the paper's ADM 256 uncond prior).
    prior: str
    #: ``"msbdn-small"`` or ``"msbdn"``.
    restorer: str
    #: Monte Carlo samples per timestep in chapter 01.
    mc_samples: int
    #: Images drawn from the prior in chapter 02 and the number of sampler steps.
    prior_samples: int
    sampling_steps: int
    #: Pixel-space optimisation steps in chapter 03.
    pixel_steps: int
    #: Training iterations, batch and crop size of the restorer (chapters 04-05).
    train_iters: int
    batch_size: int
    crop: int
    eval_every: int
    #: Seeds to repeat a comparison over (mean ± spread, DESIGN.md).
    seeds: tuple[int, ...]


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci",
        description="CI on 2 CPU cores: every notebook in under 2 minutes",
        data="synthetic",
        prior="tiny",
        restorer="msbdn-small",
        mc_samples=2000,
        prior_samples=4,
        sampling_steps=10,
        pixel_steps=10,
        train_iters=20,
        batch_size=2,
        crop=64,
        eval_every=10,
        seeds=(0,),
    ),
    "small": Profile(
        name="small",
        description="any laptop: the whole demo in under 20 minutes on 2 cores",
        data="synthetic",
        prior="tiny",
        restorer="msbdn-small",
        mc_samples=20000,
        prior_samples=16,
        sampling_steps=50,
        pixel_steps=60,
        train_iters=150,
        batch_size=4,
        crop=64,
        eval_every=15,
        seeds=(0, 1, 2),
    ),
    "paper": Profile(
        name="paper",
        description="a GPU: Dense-Haze, the ADM 256 prior, full MSBDN (hours)",
        data="dense_haze",
        prior="adm",
        restorer="msbdn",
        mc_samples=100000,
        prior_samples=16,
        sampling_steps=100,
        pixel_steps=200,
        train_iters=20000,
        batch_size=8,
        crop=256,
        eval_every=500,
        seeds=(0, 1, 2),
    ),
}


def get(name: str) -> Profile:
    """Return the profile called ``name``; a clear ``ValueError`` lists the valid names."""
    key = name.strip().lower()
    if key not in PROFILES:
        valid = ", ".join(sorted(PROFILES))
        raise ValueError(
            f"Unknown run profile {name!r}. Valid profiles: {valid}. "
            f"Set {ENV_VAR} to one of them (or unset it for the default)."
        )
    return PROFILES[key]


def default_name() -> str:
    """``paper`` on CUDA, else ``small`` (the default when ``DIFFLOSS_PROFILE`` is unset)."""
    return "paper" if torch.cuda.is_available() else "small"


def current() -> Profile:
    """The profile named by ``DIFFLOSS_PROFILE`` (or the default when unset or empty)."""
    value = os.environ.get(ENV_VAR, "").strip()
    return get(value or default_name())
