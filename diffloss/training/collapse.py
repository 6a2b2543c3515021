"""A run that collapses is noticed once, reported, and stopped on request.

A restorer can fall into a state from which its loss no longer pulls it out: chapter 06's IAT
runs, pushed by too strong an extra term, ended as black images, the output below IAT's clamp
where no gradient passes back. Two signs, checked at every evaluation after step 0 on the
validation split (the main test split when there is none; the run's choices never read it):

* the restoration's PSNR is more than :data:`COLLAPSE_MARGIN_DB` below both the degraded
  input's on the same images and the untrained network's (step 0): training made them clearly
  worse than doing nothing and than where it started;
* more than :data:`SATURATED_SHARE` of the output values that were free at the start have gone
  to the clamp (within 1/255 of 0 or 1): the share at the clamp rose from ``b`` to ``s`` with
  ``(s − b) / (1 − b) > SATURATED_SHARE``, where ``b`` is the largest share of the clean images,
  the degraded ones (a dark input has many) and the untrained network's output (an untrained
  MSBDN's is mostly outside [0, 1]): a black or white image that was not there at the start.

A sign must hold at :data:`PATIENCE` evaluations in a row, or at the run's last one: a run
that passes through a black phase and comes out of it (chapter 06 has some) is not a collapse.
The trainer warns once, writes ``history.meta["collapse"]`` (step, split, reason) and, with
``TrainConfig(stop_on_collapse=True)`` (``--stop-on-collapse``), stops there with ``last.pt``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .evaluation import evaluate, saturated_share

__all__ = ["COLLAPSE_MARGIN_DB", "PATIENCE", "SATURATED_SHARE", "CollapseWatch", "saturated_share"]

#: A restoration this many dB below the degraded input is a collapse.
COLLAPSE_MARGIN_DB: float = 3.0
#: The share of the output values free at the start that, gone to the clamp, is a collapse.
SATURATED_SHARE: float = 0.5
#: Evaluations in a row that must show a sign (the run's last evaluation alone also counts).
PATIENCE: int = 2


@dataclass
class CollapseWatch:
    """Watches one split's evaluations; ``found`` holds the first collapse (``None`` before)."""

    split: str
    input_psnr: float
    baseline_saturated: float  # the larger share at the clamp of the clean and degraded images
    found: dict[str, Any] | None = None
    start: tuple[float, float | None] | None = None  # the untrained network's (PSNR, saturation)
    streak: int = 0  # evaluations in a row that showed a sign

    @classmethod
    def for_split(cls, split: str, dataset: Any, device: torch.device, y_channel: bool) -> CollapseWatch:
        """The watch of ``split``: the degraded input's PSNR and the images' own saturation."""
        base = evaluate(nn.Identity(), dataset, device=device, y_channel=y_channel)
        n = max(1, len(dataset))
        shares = [sum(saturated_share(dataset[i][k]) for i in range(len(dataset))) / n for k in (0, 1)]
        return cls(split, base.psnr, max(shares))

    @classmethod
    def for_run(cls, config: Any, val_ds: Any, tests: dict[str, Any], device: torch.device) -> CollapseWatch | None:
        """The watch of a run: its validation split, else its main test split; ``None`` when the
        run never evaluates."""
        split, ds = ("val", val_ds) if val_ds is not None else next(iter(tests.items()), (None, None))
        if split is None or not config.eval_every:
            return None
        from .tasks import TASKS

        return cls.for_split(split, ds, device, TASKS[str(config.task)].y_channel)

    def notice(self, step: int, scores: dict[str, Any], meta: dict[str, Any], last: bool = False) -> bool:
        """Check an evaluation's ``scores`` (:class:`EvalResult` by split; ``last``: the run's last
        evaluation); on the first collapse, warn and write ``meta["collapse"]``. True then."""
        res = scores[self.split]
        note = self.check(step, res.psnr, res.saturated, last)
        if note is None:
            return False
        warnings.warn(note, stacklevel=3)
        meta["collapse"] = self.found
        return True

    def check(self, step: int, psnr: float, saturated: float | None, last: bool = False) -> str | None:
        """A one-line message the first time evaluations after step 0 show a collapse (module
        docstring; step 0, the untrained network, is recorded as the start)."""
        if step == 0:
            self.start = (psnr, saturated)
            return None
        if self.found is not None:
            return None
        floor = min(self.input_psnr, self.start[0]) if self.start else self.input_psnr
        ceiling = max(self.baseline_saturated, (self.start[1] or 0.0) if self.start else 0.0)
        reasons = []
        if psnr < floor - COLLAPSE_MARGIN_DB:
            reasons.append(f"{self.split} PSNR {psnr:.2f} dB is {self.input_psnr - psnr:.1f} dB below the "
                           f"degraded input's ({self.input_psnr:.2f} dB)" + (
                               f" and {self.start[0] - psnr:.1f} dB below the untrained network's "
                               f"({self.start[0]:.2f} dB)" if self.start else ""))
        if saturated is not None and ceiling < 1 and (saturated - ceiling) / (1 - ceiling) > SATURATED_SHARE:
            reasons.append(f"{saturated:.0%} of the output values sit at 0 or 1, against at most {ceiling:.0%} "
                           f"for the clean images, the degraded inputs"
                           f"{' or the untrained network' if self.start else ''}")
        self.streak = self.streak + 1 if reasons else 0
        if not reasons or (self.streak < PATIENCE and not last):
            return None
        self.found = {"step": step, "split": self.split, "reason": "; ".join(reasons)}
        since = "" if self.streak == 1 else f" ({self.streak} evaluations in a row)"
        return (f"the run collapsed at step {step}{since}: {self.found['reason']}. A lower gamma (or gamma='auto' "
                "with a lower rho) usually avoids it; stop_on_collapse=True (--stop-on-collapse) stops there")
