"""Restoration networks: MSBDN-DFF (dehazing, deraining) and IAT (low-light enhancement)."""

from diffloss.models.iat import IAT
from diffloss.models.msbdn import MSBDN

__all__ = ["IAT", "MSBDN"]
