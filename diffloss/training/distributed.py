"""Devices and processes: the ``accelerate`` Accelerator of a run, a barrier that works on
CPU (gloo) and GPU (NCCL) runs alike, and the gradient norm as accelerate sees it."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig

__all__ = ["barrier", "fused_adam", "grad_norm", "has_scaler", "make_accelerator"]


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


def fused_adam(device: torch.device) -> bool | None:
    """``fused=`` for ``torch.optim.Adam`` on ``device``: ``True`` where torch has a fused
    kernel (CUDA, CPU), else ``None`` (torch's default, foreach)."""
    return True if torch.device(device).type in ("cuda", "cpu") else None


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


def grad_norm(model: nn.Module, clip: float | None, accelerator: Any) -> Tensor:
    """‖∇θ L‖₂ over all parameters, clipped to ``clip`` when it is set (a device scalar)."""
    if clip is not None:
        clip_ = accelerator.clip_grad_norm_ if accelerator is not None else nn.utils.clip_grad_norm_
        return clip_(model.parameters(), clip)
    if accelerator is not None:
        accelerator.unscale_gradients()  # fp16: the norm of the true gradient (no-op otherwise)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6: the norm without rescaling the grads
        return nn.utils.get_total_norm(grads)
    return nn.utils.clip_grad_norm_(model.parameters(), math.inf)  # pragma: no cover


def has_scaler(accelerator: Any) -> bool:
    """fp16 mixed precision: accelerate's loss scaler skips steps whose gradient overflowed."""
    return getattr(accelerator, "scaler", None) is not None
