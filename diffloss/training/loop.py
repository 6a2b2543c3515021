"""The training loop: :func:`train` sets a run up (:func:`~.setup.set_up`: folder, network, data,
terms, optimizer, resume), then repeats *batch → train_step → record → (evaluate) → (save) →
(stop?)*, on one screen in :func:`_train`. The step itself is :func:`train_step` (:mod:`.step`:
z = g(y), L = fidelity + Σ γ·term, ∇θ L, Adam); each concern around it is one object:

==========================  ===========================================================
:class:`~.checkpoint.Checkpointer`      ``last.pt``/``best.pt`` and the rescue rule on a failure
:class:`~.validation.RunEvaluation`     evaluations, the choice of ``best.pt``, the collapse watch
:class:`~.guards.DeferredReads`         the step values read back from the device (one sync)
:class:`~.guards.Stopping`              signals, collapse, the callback; agreed by every process
:class:`~.step.AdversarialStep`         the discriminator's own update
:class:`~.history.ProgressBar`          the live bar
==========================  ===========================================================

On the CPU every step's values are read and checked before Adam runs; on CUDA they are read
every ``log_every`` steps (each read is a host–device synchronisation), and in between the
:class:`~diffloss.training.guards.DeviceGuard` stops Adam on the device after a NaN.

Around it :func:`train` does what a run needs: ``accelerate`` for devices, mixed precision,
gradient accumulation and several processes; batches that are a pure function of the step
(:mod:`.data`); evaluations of validation (which alone selects ``best.pt``) and test splits
(:mod:`.evaluation`); atomic, checksummed checkpoints and a bit-identical resume
(:mod:`.checkpoint`); the history (:mod:`.history`); Ctrl-C / SIGTERM save ``last.pt`` first;
an exclusive lock on the run folder for the run's life (:mod:`.lock`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .checkpoint import LAST, Checkpointer
from .config import TrainConfig
from .distributed import barrier, has_scaler, make_accelerator
from .guards import (
    DeferredReads,
    NonFiniteLossError,
    Stopping,
    TrainingInterrupted,
    deferred_signals,
)
from .history import History, ProgressBar
from .rundir import RunLock, lock_run_folder
from .setup import Run, set_up
from .step import AdversarialStep, train_step
from .validation import RunEvaluation

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "train", "train_step"]


def train(config: TrainConfig | dict[str, Any] | str | os.PathLike, progress: bool = True,
          callback: Callable[[dict[str, Any], History], bool | None] | None = None, *,
          resume: bool = False, overwrite: bool = False, prior: Any = None,
          stop_after: int | None = None) -> History:
    """Train the restoration network of ``config`` and return its :class:`History`.

    Args:
        config: a :class:`TrainConfig`, a dict of its fields, or a JSON/YAML file.
        progress: show a tqdm progress bar (``tqdm.auto``) with the live loss and test PSNR.
        callback: called on the main process for every step's row, when the step's values
            are read (``config.log_every``), as ``callback(row, history)``; ``False`` stops
            training at that read (``last.pt`` is written).
        resume: continue from ``<out>/last.pt``; the config must match the saved one except
            for :data:`~diffloss.training.config.RESUMABLE_CHANGES`.
        overwrite: start afresh even if ``out`` already holds a run (its files are deleted).
        prior: a :class:`~diffloss.priors.DiffusionPrior` to use instead of loading ``config.prior``
            (e.g. one loaded once for several runs); its ``source``, if any, is recorded.
        stop_after: stop after this step, ``last.pt`` written (resuming = never stopping).

    Raises:
        NonFiniteLossError: a loss part or ‖∇θ‖ became NaN/inf (names the step and the part);
            no update from that step on is applied, the last good ``last.pt`` is kept.
        TrainingInterrupted: Ctrl-C or SIGTERM; ``last.pt`` of the current step was saved.
        CheckpointError: ``last.pt`` is corrupt on resume, or a new checkpoint failed to verify.
        FileExistsError / FileNotFoundError: ``out`` holds a run and neither ``resume`` nor
            ``overwrite`` is set / ``resume`` of a folder without ``last.pt``.
        RunFolderLocked: another process trains in ``out`` (a ``FileExistsError``).
    """
    if not isinstance(config, TrainConfig):
        config = (TrainConfig.from_dict(config) if isinstance(config, dict)
                  else TrainConfig.load(config))
    if prior is not None and getattr(prior, "source", None) and config.prior != prior.source:
        config = config.replace(prior=str(prior.source))  # provenance: the prior actually used
    accelerator = make_accelerator(config, config.resolved_mixed_precision())
    with lock_run_folder(Path(config.out), resume, accelerator.is_main_process) as lock:
        return _train(config, accelerator, lock, progress, callback, resume, overwrite, prior,
                      stop_after)  # the run folder is ours until this returns or raises


def _train(config: TrainConfig, accelerator: Any, lock: RunLock | None, progress: bool, callback: Any,
           resume: bool, overwrite: bool, prior: Any, stop_after: int | None) -> History:
    r = set_up(config, accelerator, lock, resume, overwrite, prior)  # everything but the loop
    config, history, main_proc = r.config, r.history, r.main_proc
    clock = partial(_elapsed, r.elapsed0, time.perf_counter())  # seconds of training, across resumes
    ckpt = Checkpointer(r.out, config, history, model=r.raw, optimizer=r.optimizer, scheduler=r.scheduler,
                        ema=r.ema, terms={k: r.terms[k] for k in r.stateful}, start=r.start,
                        iterations=r.iterations, last_good=r.last_good, main_proc=main_proc,
                        world=r.world, accelerator=accelerator, clock=clock)
    evaluation = RunEvaluation(r, ckpt, accelerator)
    applied = ("nothing from this step was applied" if not r.deferred else
               "updates stopped on the device from this step on" if r.guard is not None else
               "the loss scaler skipped this step's update")
    reads = DeferredReads(r.deferred, r.log_every, config.grad_accum, has_scaler(accelerator), applied)
    adversary = AdversarialStep(r.terms, r.stateful)
    bar = ProgressBar(progress and main_proc, r.iterations, r.start, config.loss, history.rows,
                      compiling=config.compile_prior and "diffloss" in r.terms)
    end = r.iterations if stop_after is None else min(r.iterations, int(stop_after))
    step = r.start
    try:
        with deferred_signals() as signals:
            stopping = Stopping(signals, callback, main_proc, accelerator, r.world)
            if r.start == 0 and config.eval_every and end > 0:  # step 0: the untrained network
                row0 = history.new_row(step=0, seconds=0.0, lr=r.scheduler.get_last_lr()[0])
                evaluation(0, row0)
                history.record(row0, write=main_proc)
                bar.psnr = row0["test_psnr"]
                if main_proc:
                    history.write_json()
            r.model.train()
            while step < end:
                step += 1
                t_step = time.perf_counter()
                micro = []  # each micro-step's values (gradient accumulation)
                for a in range(config.grad_accum):
                    degraded, clean, gen = r.micro_batch(step, a)
                    with accelerator.accumulate(r.model):
                        vals, restored = train_step(r.model, degraded, clean, config, r.terms, r.optimizer,
                                                    generator=gen, accelerator=accelerator, step=step,
                                                    checkpoint=ckpt.last_good, guard=r.guard)
                    ckpt.begun()  # the weights may be past ckpt.done until this step is complete
                    micro.append((vals, adversary(restored, clean, vals, step, ckpt.last_good)))
                lr = r.scheduler.get_last_lr()[0]
                r.scheduler.step()
                if r.ema is not None:
                    r.ema.update(r.raw)
                if not r.deferred:  # (deferred: once its values are read and checked)
                    ckpt.finished(step)
                if step == r.start + 1:  # includes compiling the prior, when it is compiled
                    history.meta["first_step_seconds"] = round(time.perf_counter() - t_step, 3)
                    bar.first_step(history.meta["first_step_seconds"])
                row = history.new_row(step=step, lr=lr, seconds=clock())
                reads.add(row, micro)
                bar.update()
                evaluating, saving = evaluation.due(step), ckpt.due(step, end)
                if not reads.due(step, evaluating, saving, stopping.signalled):
                    continue  # nothing read back from the device this step
                for row_i in reads.drain(ckpt.last_good):  # one host sync for the pending steps
                    if row_i is row:
                        if evaluating:
                            evaluation(step, row)
                            bar.psnr = row["test_psnr"]
                        row["seconds"] = clock()
                    history.record(row_i, write=main_proc)
                    stopping.consult(row_i, history)
                if r.deferred:  # its values are read and checked only now
                    ckpt.finished(step)
                if main_proc and evaluating:
                    history.write_json()
                bar.show(row)
                stop = stopping.now(collapsed=evaluation.stop_requested)
                if stop or saving:
                    ckpt.save_last(step)
                if stop:
                    break
            stopping.raise_if_signalled(step, history, r.out / LAST)
    except NonFiniteLossError as exc:
        if not r.deferred:  # deferred: the weights are those before the first bad step, unknown here
            ckpt.rescue(exc, step)
        if main_proc:
            history.meta["stopped"] = f"non-finite loss at step {exc.step}"
            history.write_json()
        _hand_over(r)  # the weights of the step before (no update from the bad step was applied)
        exc.history = history  # type: ignore[attr-defined]  # a comparison reports the run as diverged
        raise
    except Exception as exc:  # a bad image, a full disk, the user's network: keep the steps done
        ckpt.rescue(exc, step)
        raise
    finally:
        bar.close()
    return _finish(r, step, accelerator, evaluation.stop_requested)


def _elapsed(before: float, t_start: float) -> float:
    """Seconds of training: those of earlier sessions (a resume) and this one's."""
    return before + time.perf_counter() - t_start


def _hand_over(r: Run) -> History:
    """The trained network into the history (eval mode; the EMA weights when the run has them)."""
    r.raw.eval()
    r.history.raw_model = r.raw
    r.history.model = r.ema.shadow if r.ema is not None else r.raw
    return r.history


def _finish(r: Run, step: int, accelerator: Any, collapsed: bool) -> History:
    """The run's end: what it finished (or why it stopped) into ``history.meta``, and its network."""
    history = r.history
    if r.main_proc:
        history.meta["finished"] = step >= r.iterations
        if collapsed:
            history.meta["stopped"] = f"collapse at step {step} (stop_on_collapse); {r.out / LAST} saved"
        if r.device.type == "cuda":
            history.meta["peak_memory_gib"] = torch.cuda.max_memory_allocated(r.device) / 2**30
        history.write_json()
    _hand_over(r)
    barrier(accelerator)
    return history
