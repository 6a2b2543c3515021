"""What stops a run, and how: non-finite values (checked before any update) and signals
(Ctrl-C / SIGTERM finish the step and save ``last.pt`` first)."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .terms import LOSS_TERMS

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "deferred_signals", "discriminator_step",
           "finite_message"]


class NonFiniteLossError(FloatingPointError):
    """A loss part or the gradient became NaN or infinite. ``step`` (1-based) and ``parts``
    (name → value) say where; ``checkpoint`` is the last good checkpoint (``None`` if none)."""

    def __init__(self, message: str, step: int, parts: dict[str, float],
                 checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.parts, self.checkpoint = step, parts, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training after ``last.pt`` of ``step`` was saved."""

    def __init__(self, message: str, step: int, signum: int) -> None:
        super().__init__(message)
        self.step, self.signum = step, signum


def finite_message(step: int, parts: dict[str, float], ckpt: Path | None,
                    restored_bad: int) -> str:
    def finite(k: str) -> bool:
        return math.isfinite(parts[k])

    keep = (f"The last good checkpoint is {ckpt}." if ckpt is not None
            else "No checkpoint had been written yet.")
    advice = "Try a lower lr, grad_clip, or mixed_precision='no'."
    losses = {k: v for k, v in parts.items() if k != "grad_norm"}
    if all(math.isfinite(v) for v in losses.values()):
        return (f"non-finite gradient at step {step}: the loss is finite but ‖∇θ‖ = "
                f"{parts['grad_norm']:.4g}. Training stopped; nothing from this step was "
                f"applied. {keep} {advice}")
    # The parts themselves (fidelity, nat, sem, ...) first, then the sums they make up.
    bad = [k for k in losses if k not in LOSS_TERMS and k != "total" and not finite(k)]
    derived = [k for k in (*[t for t in losses if t in LOSS_TERMS], "total")
               if k in losses and not finite(k)]
    if not bad:
        bad, derived = derived, []
    also = f" (and so {', '.join(derived)})" if derived else ""
    shown = ", ".join(f"{k} = {losses[k]:.4g}" for k in losses if k != "total")
    where = ("; the restored image itself has "
             f"{restored_bad} non-finite value(s): the network diverged") if restored_bad else ""
    return (f"non-finite loss at step {step}: {' and '.join(bad)} "
            f"{'is' if len(bad) <= 1 else 'are'} not finite{also} ({shown}){where}. Training stopped; "
            f"nothing from this step was applied. {keep} {advice}")


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """While training, SIGINT (Ctrl-C, a notebook's interrupt) and SIGTERM only record the
    signal: the loop finishes the step, saves ``last.pt`` and stops. A second signal
    interrupts at once. Only the main thread can install handlers; elsewhere nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def discriminator_step(term: nn.Module, restored: Tensor, clean: Tensor, vals: dict[str, float],
                        step: int, last_good: Path | None) -> dict[str, float]:
    """The adversarial term's own update (after the generator's), with the finiteness check."""
    def check(values: dict[str, float]) -> None:
        if not all(math.isfinite(v) for v in values.values()):
            merged = {**vals, **values}
            raise NonFiniteLossError(finite_message(step, merged, last_good, 0), step, merged,
                                     last_good)

    aux = term.step(restored.detach().float(), clean, check=check)
    return {k: float(v) for k, v in aux.items()}
