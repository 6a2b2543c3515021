"""Host → device copies that do not make the host wait for the GPU.

A plain ``x.to("cuda")`` of a CPU tensor in ordinary (pageable) memory is a synchronising copy:
the host waits until every kernel queued before it has run (``torch.cuda.set_sync_debug_mode``
reports it). DiffLoss draws its timesteps, noise and crops on a CPU generator, so that a run is
reproducible on any device; sending them through page-locked (pinned) memory with
``non_blocking=True`` keeps the GPU's queue full instead. The values are the same either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` on ``device``; a CPU → CUDA copy goes through pinned memory, without a host sync."""
    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
