"""One precision decision for the whole run: which half-precision type a device computes in.

A CUDA card with bf16 hardware (compute capability ≥ 8: Ampere, Hopper, ...) runs bf16 autocast;
an older one (Turing's T4, Volta's V100) runs fp16, with loss scaling in the trainer, because
there bf16 is emulated (``torch.cuda.is_bf16_supported()`` answers True on a T4 all the same, so
it is no test of hardware support) and reported slower than fp32. The CPU runs float32 unless a
dtype is asked for. The trainer's ``mixed_precision``, DiffLoss's prior and ``evaluate(amp=True)``
all ask this module, so the prior never runs in another precision than the restorer.
"""

from __future__ import annotations

import torch

__all__ = ["HALF", "autocast_dtype", "native_half"]

#: ``mixed_precision`` names → dtypes (``"no"``: none).
HALF: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}


def native_half(device: torch.device | str | None = None) -> str:
    """``"bf16"`` on a CUDA card with bf16 hardware (compute capability ≥ 8), ``"fp16"`` on an
    older one, ``"no"`` on the CPU (or when CUDA is not available)."""
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def autocast_dtype(device: torch.device | str, choice: bool | str | torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype for work on ``device``, or ``None`` (float32).

    ``choice``: ``None``/``True``/``"auto"`` — the device's :func:`native_half` (none on the CPU);
    ``False``/``"no"`` — none; ``"bf16"``/``"fp16"`` or a dtype — that one (on the CPU too, where
    autocast supports both: for experiments and for the fp16 check of the tests).
    """
    device = torch.device(device)
    if choice is None or choice is True or choice == "auto":
        return HALF[native_half(device)]
    if choice is False:
        return None
    if isinstance(choice, torch.dtype):
        if choice not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"autocast dtype must be torch.bfloat16, torch.float16 or torch.float32, got {choice}")
        return None if choice == torch.float32 else choice
    if isinstance(choice, str) and choice.lower() in HALF:
        return HALF[choice.lower()]
    raise ValueError(f"autocast must be None, True/False, 'auto', 'bf16', 'fp16', 'no' or a dtype, got {choice!r}")
