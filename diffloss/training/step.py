"""One training step, on one screen (seed Eq. 8 for the DiffLoss term)::

    z = g(y)                                   restored = model(degraded)
    L = fidelity(z, x) + Σ_k γ_k·term_k(z, x)  loss_parts(restored, clean, config, terms)
    ∇_θ L  (through the frozen prior into g)   backward(L)
    ‖∇_θ L‖, clipped to grad_clip              grad_norm(model, grad_clip)
    every value finite, or stop                values.check() (a read) or guard.hold() (none)
    θ ← Adam(θ, ∇_θ L)                         optimizer.step()

then, with an adversarial term, the discriminator's own update (:class:`AdversarialStep`).
Everything around it (devices, data, evaluation, checkpoints) is :mod:`.loop`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .distributed import grad_norm, has_scaler
from .guards import DeviceGuard, NonFiniteLossError, StepValues, discriminator_step
from .terms import loss_parts

__all__ = ["AdversarialStep", "train_step"]


def train_step(model: nn.Module, degraded: Tensor, clean: Tensor, config: TrainConfig,
               terms: dict[str, nn.Module], optimizer: torch.optim.Optimizer, *,
               generator: torch.Generator | None = None, accelerator: Any = None,
               step: int = 1, checkpoint: Path | None = None,
               guard: DeviceGuard | None = None) -> tuple[StepValues, Tensor]:
    """One training (micro-)step of ``model`` on a batch; returns the loss values and ``z``.

    With ``accelerator`` (inside ``accelerator.accumulate(model)``) the backward pass, the
    clipping and the optimizer follow accelerate (mixed precision, accumulation, DDP). Without
    ``guard`` the values are read and checked *before* the optimizer step (a NaN raises
    :class:`NonFiniteLossError`, nothing applied); with a :class:`DeviceGuard` (fused Adam)
    nothing is read, the guard skips bad updates on the device and the caller checks later.
    """
    syncing = accelerator is None or accelerator.sync_gradients
    restored = model(degraded)                                                  # z = g(y)
    parts, restored_bad = loss_parts(restored, clean, config, terms, generator)  # fidelity + Σ γ·term
    (accelerator.backward if accelerator is not None else Tensor.backward)(parts["total"])
    if syncing:  # ‖∇θ L‖ (clipped when grad_clip is set); accumulating micro-steps skip it
        parts["grad_norm"] = grad_norm(model, config.grad_clip, accelerator)
    values = StepValues(step, parts, restored_bad, accelerator)                 # on the device
    if guard is None:
        try:
            values.check(checkpoint, scaler=has_scaler(accelerator))           # one host sync
        except NonFiniteLossError:
            optimizer.zero_grad(set_to_none=True)  # no gradient of a refused step is left over
            raise
    else:
        guard.hold(optimizer, values)                                           # no sync
    try:
        optimizer.step()                                                        # θ ← Adam(θ, ∇θ L)
    finally:
        if guard is not None:
            guard.release(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return values, restored


class AdversarialStep:
    """The discriminator's update after the generator's (alternating GAN updates, supplement
    Eq. 7): each term with state of its own (``LossTerm.stateful``) steps on the detached ``z``
    and the clean image, its values checked for finiteness; returns them for the history."""

    def __init__(self, terms: dict[str, nn.Module], stateful: list[str]) -> None:
        self.terms = {name: terms[name] for name in stateful}

    def __call__(self, restored: Tensor, clean: Tensor, values: StepValues, step: int,
                 checkpoint: Path | None) -> dict[str, float]:
        extra: dict[str, float] = {}
        for term in self.terms.values():
            extra.update(discriminator_step(term, restored, clean, dict(values), step, checkpoint))
        return extra
