"""A run's parts from the names in its config: the restoration network and the diffusion prior."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["MODELS", "build_model", "load_prior"]

#: ``TrainConfig.model`` values.
MODELS: tuple[str, ...] = ("msbdn", "msbdn-small", "iat")


def build_model(name: str) -> nn.Module:
    """``"msbdn"`` → ``MSBDN()``, ``"msbdn-small"`` → ``MSBDN.small()``, ``"iat"`` → ``IAT()``
    (seed torch first)."""
    from ..models.iat import IAT
    from ..models.msbdn import MSBDN

    key = str(name).strip().lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}. Valid values: {', '.join(MODELS)}")
    return {"msbdn": MSBDN, "msbdn-small": MSBDN.small, "iat": IAT}[key]()


def load_prior(spec: str) -> Any:
    """``"tiny"`` → the shipped tiny prior; ``"adm:PATH"`` → an ADM checkpoint; otherwise a
    diffusers folder or hub id (:meth:`~diffloss.prior.DiffusionPrior.from_pretrained`)."""
    from ..prior import DiffusionPrior

    if spec == "tiny":
        return DiffusionPrior.tiny()
    if spec.startswith("adm:"):
        return DiffusionPrior.from_adm_checkpoint(spec[4:])
    return DiffusionPrior.from_pretrained(spec)
