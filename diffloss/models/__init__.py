"""Restoration networks."""

from diffloss.models.msbdn import MSBDN

__all__ = ["MSBDN"]
