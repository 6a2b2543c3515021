"""Devices and processes: the ``accelerate`` Accelerator of a run, and a barrier that works on
CPU (gloo) and GPU (NCCL) runs alike."""

from __future__ import annotations

import os
from typing import Any

import torch

from .config import TrainConfig

__all__ = ["barrier", "make_accelerator"]


def make_accelerator(config: TrainConfig, mixed_precision: str) -> Any:
    """An ``accelerate.Accelerator`` for ``config`` (device, mixed precision, accumulation)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if AcceleratorState._shared_state and not distributed:
        # A previous run in this process (a notebook, the tests) fixed accelerate's singleton
        # settings; a single-process run may start afresh with its own.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       cpu=config.cpu or not torch.cuda.is_available())


def barrier(accelerator: Any) -> None:
    """Wait for every process.

    On CUDA this is ``accelerator.wait_for_everyone()``. CPU (gloo) runs call
    ``torch.distributed.barrier()`` directly: ``wait_for_everyone`` passes
    ``device_ids=[local_rank]`` to the barrier, which on a machine with fewer GPUs than
    processes names a GPU that does not exist.
    """
    if accelerator.num_processes == 1:
        return
    if accelerator.device.type == "cpu":
        torch.distributed.barrier()
    else:
        accelerator.wait_for_everyone()
