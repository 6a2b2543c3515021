"""DiffLoss: a frozen pretrained diffusion model as a training loss for image restoration.

One public entry per concept (DESIGN.md): :class:`NoiseSchedule`, :class:`DiffusionPrior`,
:class:`DiffLoss`, :class:`MSBDN`, :class:`PairedImageDataset`, :func:`psnr`, :func:`ssim`,
:func:`train`. Entries whose module is not importable yet are simply absent.
"""

from __future__ import annotations

import importlib

from .profiles import Profile
from .profiles import current as current_profile
from .schedule import NoiseSchedule

__version__ = "0.1.0"

_LAZY = {
    "DiffusionPrior": "priors",
    "PriorOutput": "priors",
    "DiffLoss": "loss",
    "DiffLossOutput": "loss",
    "restoration_loss": "loss",
    "PerceptualLoss": "loss",
    "AdversarialLoss": "loss",
    "MSBDN": "models.msbdn",
    "PairedImageDataset": "data",
    "SyntheticHaze": "data",
    "sample_images": "data",
    "psnr": "metrics",
    "ssim": "metrics",
    "train": "training",
    "TrainConfig": "training",
    "evaluate": "training",
}

__all__ = ["NoiseSchedule", "Profile", "current_profile", *_LAZY]


def __getattr__(name: str):
    """Import heavy modules (diffusers, torchvision) only when their entry is first used."""
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'diffloss' has no attribute {name!r}")
