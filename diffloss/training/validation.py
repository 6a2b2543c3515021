"""A run's evaluations: every ``eval_every`` steps (and at its last step) the network is scored
on its test splits and validation (:class:`RunEvaluation`); validation alone selects ``best.pt``,
and the collapse watch (:class:`CollapseWatch`) reads each evaluation.

**Collapse.** A run that collapses is noticed once, reported, and stopped on request.

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
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..tasks import TASKS
from .distributed import barrier
from .evaluation import check_finite_scores, evaluate, saturated_share
from .setup import Run

if TYPE_CHECKING:
    from .checkpoint import Checkpointer

__all__ = ["COLLAPSE_MARGIN_DB", "PATIENCE", "SATURATED_SHARE", "CollapseWarning", "CollapseWatch",
           "RunEvaluation", "saturated_share"]

#: A restoration this many dB below the degraded input is a collapse.
COLLAPSE_MARGIN_DB: float = 3.0
#: The share of the output values free at the start that, gone to the clamp, is a collapse.
SATURATED_SHARE: float = 0.5
#: Evaluations in a row that must show a sign (the run's last evaluation alone also counts).
PATIENCE: int = 2


class CollapseWarning(UserWarning):
    """The run collapsed (once per run; ``history.meta["collapse"]`` holds the same). Its own class,
    so that a caller that reports collapses itself (the chapters' comparisons, whose workers
    train in other processes) can leave it out of a notebook's output."""


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
        return cls.for_split(split, ds, device, TASKS[str(config.task)].y_channel)

    def notice(self, step: int, scores: dict[str, Any], meta: dict[str, Any], last: bool = False) -> bool:
        """Check an evaluation's ``scores`` (:class:`EvalResult` by split; ``last``: the run's last
        evaluation); on the first collapse, warn and write ``meta["collapse"]``. True then."""
        res = scores[self.split]
        note = self.check(step, res.psnr, res.saturated, last)
        if note is None:
            return False
        warnings.warn(note, CollapseWarning, stacklevel=3)
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


class RunEvaluation:
    """The evaluations of a run and the choice of ``best.pt`` (model selection on validation).

    ``evaluation(step, row)`` scores the network the run reports (the EMA weights when it has
    them) on each test split, then validation, writes PSNR/SSIM into the history ``row`` and
    ``history.evals``, and keeps the step of highest validation PSNR as ``best.pt`` (after step
    0; never on a non-finite score). The collapse watch reads every evaluation;
    ``stop_requested`` turns true at a collapse when the run has ``stop_on_collapse``. Only the
    main process evaluates; every process waits for it.
    """

    def __init__(self, run: Run, checkpoints: Checkpointer, accelerator: Any) -> None:
        self.run, self.checkpoints, self.accelerator = run, checkpoints, accelerator
        self.splits = [*run.tests.items(), *((("val", run.val_ds),) if run.val_ds is not None else ())]
        self.y_channel = TASKS[str(run.config.task)].y_channel
        self.stop_requested = False
        self.watch = CollapseWatch.for_run(run.config, run.val_ds, run.tests, run.device) \
            if run.main_proc else None

    def due(self, step: int) -> bool:
        """Every ``eval_every`` steps and at the run's last step (``eval_every=0``: never)."""
        every = self.run.config.eval_every
        return bool(every) and (step % every == 0 or step == self.run.iterations)

    def __call__(self, step: int, row: dict[str, Any]) -> None:
        run, config, history = self.run, self.run.config, self.run.history
        if run.main_proc:
            scores = {}
            for split, ds in self.splits:
                res = evaluate(run.eval_model, ds, tile=config.eval_tile, overlap=config.eval_overlap,
                               device=run.device, y_channel=self.y_channel)
                row.update({f"{split}_psnr": res.psnr, f"{split}_ssim": res.ssim})
                history.evals.append({"step": step, "split": split, **res.to_dict()})
                scores[split] = res
                check_finite_scores(res, split, step, self.checkpoints.last_good)  # NaN: never a best.pt
            watch = self.watch
            if watch is not None and watch.notice(step, scores, history.meta, step >= run.iterations):
                self.stop_requested = config.stop_on_collapse
            v = scores.get("val")
            if v is not None and step > 0 and (history.best is None or v.psnr > history.best["val_psnr"]):
                history.best = {"step": step, "val_psnr": v.psnr, "val_ssim": v.ssim,
                                **{f"{s}_{m}": getattr(scores[s], m) for s in run.tests for m in ("psnr", "ssim")}}
                self.checkpoints.save_best(step)
        barrier(self.accelerator)
