"""What stops a run, and how: non-finite values (checked before any update), signals (Ctrl-C /
SIGTERM finish the step and save ``last.pt`` first), a collapse or the caller's callback
(:class:`Stopping`).

A step's values (loss parts, ‖∇θ‖) live on the device as one :class:`StepValues` tensor.
Reading them is a host–device synchronisation; on the CPU that costs nothing and the trainer
reads and checks every step before the optimizer runs. On a GPU it drains the queue, so the
trainer reads every ``log_every`` steps (:func:`read_all`, one sync for all) and meanwhile a
:class:`DeviceGuard` makes fused Adam skip every update from the first non-finite value on,
on the device: when the values are read, the run stops with the weights of the step before.
:class:`DeferredReads` holds the steps not read yet and says when to read them.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .terms import LOSS_TERMS

__all__ = ["DeferredReads", "DeviceGuard", "NonFiniteLossError", "StepValues", "Stopping",
           "TrainingInterrupted", "deferred_signals", "discriminator_step", "finite_message", "read_all"]


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
                   restored_bad: int, applied: str = "nothing from this step was applied") -> str:
    def finite(k: str) -> bool:
        return math.isfinite(parts[k])

    keep = (f"The last good checkpoint is {ckpt}." if ckpt is not None
            else "No checkpoint had been written yet.")
    advice = "Try a lower lr, grad_clip, or mixed_precision='no'."
    losses = {k: v for k, v in parts.items() if k != "grad_norm"}
    if all(math.isfinite(v) for v in losses.values()):
        return (f"non-finite gradient at step {step}: the loss is finite but ‖∇θ‖ = "
                f"{parts['grad_norm']:.4g}. Training stopped; {applied}. {keep} {advice}")
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
            f"{applied}. {keep} {advice}")


class StepValues(Mapping[str, float]):
    """One (micro-)step's loss parts and ‖∇θ‖, kept on the device as one tensor until read.

    A read-only mapping name → float: the first access reads the tensor (a host sync);
    :func:`read_all` reads many steps' values with one sync. ``restored_bad``: the number of
    non-finite values in the restored image (for the error message; not logged).
    """

    def __init__(self, step: int, parts: dict[str, Tensor], restored_bad: Tensor,
                 accelerator: Any = None) -> None:
        self.step, self.names = step, tuple(parts)
        tensor = torch.stack([*(v.detach().float().reshape(()) for v in parts.values()),
                              restored_bad.detach().float().reshape(())])
        if accelerator is not None:
            tensor = accelerator.reduce(tensor, "mean")
        self.tensor: Tensor | None = tensor
        self._values: dict[str, float] | None = None
        self.restored_bad = 0

    def _fill(self, flat: list[float]) -> None:
        self._values = dict(zip(self.names, flat[:-1]))
        self.restored_bad = round(flat[-1])
        self.tensor = None

    @property
    def values(self) -> dict[str, float]:
        if self._values is None:
            read_all([self])
        assert self._values is not None
        return self._values

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"StepValues(step={self.step}, {self.values!r})" if self._values is not None \
            else f"StepValues(step={self.step}, unread)"

    def check(self, checkpoint: Path | None, scaler: bool = False,
              applied: str = "nothing from this step was applied") -> None:
        """Raise :class:`NonFiniteLossError` when a value is NaN/inf. With a loss scaler (fp16),
        an infinite ‖∇θ‖ under a finite loss is an overflow that the scaler skips, not an error."""
        values = self.values
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if scaler and bad == ["grad_norm"]:
            return
        if bad:
            raise NonFiniteLossError(finite_message(self.step, values, checkpoint, self.restored_bad,
                                                    applied), self.step, values, checkpoint)


def read_all(items: list[StepValues]) -> None:
    """Read every unread item's values with ONE host–device synchronisation."""
    pending = [i for i in items if i._values is None]
    if not pending:
        return
    flat = torch.cat([i.tensor for i in pending]).tolist()  # type: ignore[misc]
    at = 0
    for item in pending:
        n = len(item.names) + 1
        item._fill(flat[at:at + n])
        at += n


class DeviceGuard:
    """Stops the optimizer's updates on the device, without reading anything back, from the
    first step whose values are not all finite: a sticky flag handed to fused Adam as its
    ``found_inf`` (the mechanism ``torch.amp.GradScaler`` uses to skip steps)."""

    def __init__(self, device: torch.device) -> None:
        self.found_inf = torch.zeros((), device=device)

    def hold(self, optimizer: torch.optim.Optimizer, values: StepValues) -> None:
        assert values.tensor is not None
        bad = (~torch.isfinite(values.tensor)).any().float()
        self.found_inf = torch.maximum(self.found_inf, bad)
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        inner.grad_scale, inner.found_inf = None, self.found_inf

    @staticmethod
    def release(optimizer: torch.optim.Optimizer) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)
        for name in ("grad_scale", "found_inf"):
            if hasattr(inner, name):
                delattr(inner, name)


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


#: One step's values: each micro-step's :class:`StepValues` and its adversarial term's values.
MicroSteps = list[tuple[StepValues, dict[str, float]]]


class DeferredReads:
    """The steps whose values are still on the device, read back together (one host sync).

    ``deferred=False`` (the CPU): every step is read and checked at once. ``deferred=True`` (a
    GPU): steps are added until a read is :meth:`due` (every ``log_every`` steps, at an
    evaluation, a save or a signal), then :meth:`drain` reads them all with one sync and yields
    each step's history row, its values averaged over the micro-steps and checked
    (:class:`NonFiniteLossError` at the first bad one; ``applied`` says what was applied then).
    """

    def __init__(self, deferred: bool, log_every: int, grad_accum: int, scaler: bool,
                 applied: str) -> None:
        self.deferred, self.log_every, self.grad_accum = deferred, log_every, grad_accum
        self.scaler, self.applied = scaler, applied
        self.pending: list[tuple[dict[str, Any], MicroSteps]] = []

    def add(self, row: dict[str, Any], micro: MicroSteps) -> None:
        self.pending.append((row, micro))

    def due(self, step: int, evaluating: bool, saving: bool, signalled: bool) -> bool:
        """Whether the pending values are read after ``step``."""
        return not self.deferred or evaluating or saving or step % self.log_every == 0 or signalled

    def drain(self, checkpoint: Path | None) -> Iterator[dict[str, Any]]:
        """Read every pending step (one sync); yield each one's row, filled and checked."""
        read_all([v for _, steps in self.pending for v, _ in steps])
        for row, steps in self.pending:
            sums: dict[str, float] = {}
            for v, extra in steps:
                v.check(checkpoint, scaler=self.scaler, applied=self.applied)
                for k, x in {**v, **extra}.items():
                    sums[k] = x if k == "grad_norm" else sums.get(k, 0.0) + x / self.grad_accum
            row.update(sums)
            yield row
        self.pending.clear()


class Stopping:
    """Why a run stops before its last step, agreed by every process: a signal (Ctrl-C,
    SIGTERM: :func:`deferred_signals` records it, the step finishes and ``last.pt`` is saved),
    the caller's ``callback`` returning ``False`` for a row, or a collapse with
    ``stop_on_collapse``."""

    def __init__(self, signals: list[int], callback: Callable[[dict[str, Any], Any], bool | None] | None,
                 main_proc: bool, accelerator: Any, world: int) -> None:
        self.signals, self.callback, self.main_proc = signals, callback, main_proc
        self.accelerator, self.world = accelerator, world
        self.asked = False  # the callback said stop

    @property
    def signalled(self) -> bool:
        """A signal arrived, in a single-process run (read the values now: a stop follows)."""
        return bool(self.signals) and self.world == 1

    def consult(self, row: dict[str, Any], history: Any) -> None:
        """Show ``row`` to the callback (main process); ``False`` asks to stop."""
        if self.callback is not None and self.main_proc and self.callback(row, history) is False:
            self.asked = True

    def now(self, collapsed: bool) -> bool:
        """Stop after this step? Any process's reason stops them all."""
        stop = self.asked or bool(self.signals) or collapsed
        if self.world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.accelerator.device)
            stop = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        return stop

    def raise_if_signalled(self, step: int, history: Any, last: Path) -> None:
        """After a signal's stop: record it and raise :class:`TrainingInterrupted`."""
        if not self.signals:
            return
        name = signal.Signals(self.signals[0]).name
        history.meta["stopped"] = f"{name} at step {step}"
        if self.main_proc:
            history.write_json()
        raise TrainingInterrupted(f"training interrupted by {name} at step {step}; {last} was saved: "
                                  "resume with resume=True (--resume)", step, self.signals[0])
