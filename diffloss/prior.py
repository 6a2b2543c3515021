"""The names chapters and scripts import from ``diffloss.prior``; they live in :mod:`diffloss.priors`.

``from diffloss.prior import DiffusionPrior, load_profile_prior, random_crops, ...`` keeps working:
this module re-exports :mod:`diffloss.priors`' public names.
"""

from __future__ import annotations

from .priors import *  # noqa: F403 - the compatibility surface is exactly diffloss.priors.__all__
from .priors import __all__  # noqa: F401
