"""The training loop: :func:`train` sets a run up (:func:`~.setup.set_up`: folder, network, data,
terms, optimizer, resume), then repeats :func:`train_step` (:mod:`.step`, the whole step on one
screen: z = g(y), L = fidelity + Σ γ·term, ∇θ L, Adam).

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
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    BEST,
    LAST,
    nonfinite_count,
    rng_state,
    save_checkpoint,
)
from .config import TrainConfig
from .data import mix_seed
from .distributed import barrier, has_scaler, make_accelerator
from .evaluation import check_finite_scores, evaluate
from .guards import (
    NonFiniteLossError,
    StepValues,
    TrainingInterrupted,
    deferred_signals,
    discriminator_step,
    read_all,
)
from .history import History
from .lock import RunLock
from .rundir import lock_run_folder
from .setup import set_up
from .step import train_step
from .tasks import TASKS

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
    config, out, device, main_proc, world, rank = r.config, r.out, r.device, r.main_proc, r.world, r.rank
    model, raw, optimizer, scheduler, ema, terms = r.model, r.raw, r.optimizer, r.scheduler, r.ema, r.terms
    history, tests, val_ds, iterations, batches = r.history, r.tests, r.val_ds, r.iterations, r.batches
    stateful, deferred, guard, log_every, watch = r.stateful, r.deferred, r.guard, r.log_every, r.watch
    start, elapsed0, last_good, eval_model = r.start, r.elapsed0, r.last_good, r.eval_model
    done, saved, dirty = start, start, False  # last finished step, last saved; a failure saves `done` first
    collapsed = False  # stop_on_collapse: stop at this evaluation
    t_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_start

    def run_eval(step: int, row: dict[str, Any]) -> None:
        if main_proc:
            scores = {}
            for split, ds in (*tests.items(), *((("val", val_ds),) if val_ds is not None else ())):
                res = evaluate(eval_model, ds, tile=config.eval_tile, overlap=config.eval_overlap,
                               device=device, y_channel=TASKS[str(config.task)].y_channel)
                row.update({f"{split}_psnr": res.psnr, f"{split}_ssim": res.ssim})
                history.evals.append({"step": step, "split": split, **res.to_dict()})
                scores[split] = res
                check_finite_scores(res, split, step, last_good)  # NaN: a failure, never a best.pt
            if watch is not None and watch.notice(step, scores, history.meta, step >= iterations):
                nonlocal collapsed
                collapsed = config.stop_on_collapse
            v = scores.get("val")
            if v is not None and step > 0 and (history.best is None or v.psnr > history.best["val_psnr"]):
                history.best = {"step": step, "val_psnr": v.psnr, "val_ssim": v.ssim,
                                **{f"{s}_{m}": getattr(scores[s], m) for s in tests for m in ("psnr", "ssim")}}
                save_checkpoint({"kind": "best", "step": step, "model": raw.state_dict(),
                                 "ema": ema.state_dict() if ema is not None else None,
                                 "config": config.to_dict(), "best": history.best}, out / BEST)
        barrier(accelerator)

    def save_last(step: int) -> None:
        nonlocal last_good, saved
        if main_proc:
            bad = nonfinite_count(raw.state_dict())
            if bad:
                raise NonFiniteLossError(
                    f"the weights became non-finite ({bad} values) by step {step}; last.pt was not "
                    f"overwritten. The last good checkpoint is {last_good}. Try a lower lr.",
                    step, {}, last_good)
            save_checkpoint({
                "kind": "last", "step": step, "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "rng": rng_state(),
                "terms": {name: terms[name].state_dict() for name in stateful},
                "data": {"seed": config.seed, "micro_step": step * config.grad_accum,
                         "world_size": world, "batch": config.batch},
                "config": config.to_dict(), "elapsed": elapsed(), "history": history.rows,
                "evals": history.evals, "best": history.best, "meta": history.meta,
            }, out / LAST)
            history.write_json()
        last_good, saved = out / LAST, step
        barrier(accelerator)

    def rescue(exc: BaseException) -> None:
        """A failure after a finished step: save its ``last.pt`` first (one process), say so in a note."""
        if not main_proc or world > 1 or done <= saved:
            return
        if dirty:  # the weights are part-way into a step: a last.pt of them would lie about its step
            exc.add_note(f"the failure came part-way through step {step}, so no new last.pt was "
                         f"written; the last good checkpoint is {last_good or 'none'}.")
            return
        try:
            save_last(done)
        except Exception as err:  # noqa: BLE001 - the original error is the one to raise
            exc.add_note(f"{out / LAST} could not be saved at step {done} ({err}); the last good "
                         f"checkpoint is {last_good or 'none'}.")
            return
        exc.add_note(f"{out / LAST} of step {done}, the last finished step, was saved first: fix the "
                     "cause, then resume with resume=True (--resume).")
        if isinstance(exc, NonFiniteLossError):
            exc.checkpoint = out / LAST
            if exc.args and isinstance(exc.args[0], str):  # the note names the checkpoint now
                exc.args = (exc.args[0].replace(" No checkpoint had been written yet.", ""), *exc.args[1:])

    from tqdm.auto import tqdm

    bar = tqdm(total=iterations, initial=start, desc=config.loss, dynamic_ncols=True) \
        if progress and main_proc else None
    last_psnr = next((r["test_psnr"] for r in reversed(history.rows)
                      if r.get("test_psnr") is not None), None)
    save_every = config.save_every or config.eval_every or iterations
    end = iterations if stop_after is None else min(iterations, int(stop_after))

    # -- the loop ---------------------------------------------------------------------------
    step = start
    try:
        with deferred_signals() as signals:
            if start == 0 and config.eval_every and end > 0:
                row0: dict[str, Any] = {c: None for c in history.columns}
                row0.update(step=0, seconds=0.0, lr=scheduler.get_last_lr()[0])
                run_eval(0, row0)
                history.rows.append(row0)
                last_psnr = row0["test_psnr"]
                if main_proc:
                    history.append_csv(row0)
                    history.write_json()
            model.train()
            scaler = has_scaler(accelerator)
            compiling = bar is not None and config.compile_prior and "diffloss" in terms
            applied = ("nothing from this step was applied" if not deferred else
                       "updates stopped on the device from this step on" if guard is not None else
                       "the loss scaler skipped this step's update")
            if compiling:
                bar.set_postfix_str("compiling the prior: the first step takes longer", refresh=True)
            pending: list[tuple[dict[str, Any], list[tuple[StepValues, dict[str, float]]]]] = []
            while step < end:
                step += 1
                t_step = time.perf_counter()
                micro: list[tuple[StepValues, dict[str, float]]] = []
                for a in range(config.grad_accum):
                    m = (step - 1) * config.grad_accum + a
                    degraded, clean = (x.to(device, non_blocking=True) for x in next(batches))
                    gen = torch.Generator().manual_seed(mix_seed(config.seed, m, rank, 0xD1F))
                    with accelerator.accumulate(model):
                        vals, restored = train_step(model, degraded, clean, config, terms, optimizer,
                                                    generator=gen, accelerator=accelerator,
                                                    step=step, checkpoint=last_good, guard=guard)
                    dirty = True  # the weights may be past `done` until this step is complete
                    extra: dict[str, float] = {}
                    for name in stateful:  # alternating updates: the discriminator after g
                        extra.update(discriminator_step(terms[name], restored, clean, dict(vals),
                                                        step, last_good))
                    micro.append((vals, extra))
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                if ema is not None:
                    ema.update(raw)
                if not deferred:  # (deferred: once the pending values are read and checked)
                    done, dirty = step, False
                if step == start + 1:  # includes compiling the prior, when it is compiled
                    first = history.meta["first_step_seconds"] = round(time.perf_counter() - t_step, 3)
                    if compiling:
                        bar.set_postfix_str(f"first step {first:.1f} s (compiling the prior)")

                row = {c: None for c in history.columns}
                row.update(step=step, lr=lr, seconds=elapsed())
                pending.append((row, micro))
                if bar is not None:
                    bar.update(1)
                is_eval = bool(config.eval_every) and (step % config.eval_every == 0
                                                       or step == iterations)
                saving = step == end or step % save_every == 0
                if deferred and not (is_eval or saving or step % log_every == 0
                                     or (signals and world == 1)):
                    continue  # nothing read back from the device this step
                # -- read the pending steps' values (one host sync), check, log ----------------
                read_all([v for _, steps in pending for v, _ in steps])
                stop = False
                for row_i, steps in pending:
                    sums: dict[str, float] = {}
                    for v, extra in steps:
                        v.check(last_good, scaler=scaler, applied=applied)
                        for k, x in {**v, **extra}.items():
                            sums[k] = x if k == "grad_norm" else sums.get(k, 0.0) + x / config.grad_accum
                    row_i.update(sums)
                    if row_i is row:
                        if is_eval:
                            run_eval(step, row)
                            last_psnr = row["test_psnr"]
                        row["seconds"] = elapsed()
                    history.rows.append(row_i)
                    if main_proc:
                        history.append_csv(row_i)
                    if callback is not None and main_proc and callback(row_i, history) is False:
                        stop = True
                pending.clear()
                if deferred:
                    done, dirty = step, False
                if main_proc and is_eval:
                    history.write_json()
                if bar is not None:
                    post = {"loss": f"{row['total']:.4f}"}
                    if last_psnr is not None:
                        post["test_psnr"] = f"{last_psnr:.2f}"
                    bar.set_postfix(post, refresh=False)
                stop = stop or bool(signals) or collapsed  # Ctrl-C / SIGTERM: save last.pt, then stop
                if world > 1:
                    flag = torch.tensor([1.0 if stop else 0.0], device=device)
                    stop = bool(accelerator.reduce(flag, "sum").item() > 0)
                if stop or saving:
                    save_last(step)
                if stop:
                    break
            if signals:
                name = signal.Signals(signals[0]).name
                history.meta["stopped"] = f"{name} at step {step}"
                if main_proc:
                    history.write_json()
                raise TrainingInterrupted(f"training interrupted by {name} at step {step}; "
                                          f"{out / LAST} was saved: resume with resume=True "
                                          "(--resume)", step, signals[0])
    except NonFiniteLossError as exc:
        if not deferred:  # deferred: the weights are those before the first bad step, unknown here
            rescue(exc)
        if main_proc:
            history.meta["stopped"] = f"non-finite loss at step {exc.step}"
            history.write_json()
        raw.eval()  # the weights of the step before (no update from the bad step was applied)
        history.raw_model = raw
        history.model = ema.shadow if ema is not None else raw
        exc.history = history  # a comparison reports the run as diverged (diffloss.parallel)
        raise
    except Exception as exc:  # a bad image, a full disk, the user's network: keep the steps done
        rescue(exc)
        raise
    finally:
        if bar is not None:
            bar.close()

    if main_proc:
        history.meta["finished"] = step >= iterations
        if collapsed:
            history.meta["stopped"] = f"collapse at step {step} (stop_on_collapse); {out / LAST} saved"
        if device.type == "cuda":
            history.meta["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        history.write_json()
    raw.eval()
    history.raw_model = raw
    history.model = ema.shadow if ema is not None else raw
    barrier(accelerator)
    return history
