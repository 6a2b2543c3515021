"""Several training runs at once, each in a process of its own (CPU profiles).

A CPU run of a narrow restorer on small crops keeps about one core busy: a second torch thread
buys little (chapter 04 runs with one), while a second *process* trains a second run in the
same wall time (``benchmarks/bench_parallel.py``). :func:`train_in_processes` gives each run to
one of ``processes`` spawned workers that use this process's number of torch threads, so a run
computes the same bits as it would here: same code, same seeds, same kernels, same threads.

Results come back in the order of the configs, as each is ready; an error in a worker is
raised here, naming the run; a worker that dies (e.g. killed for memory) stops them all.
Leaving the loop early (an error, Ctrl-C) sets a stop event: every running run ends at its next
step with ``last.pt`` written (the trainer's ``callback``), and runs not yet started never start,
so their folders are left as they were.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from .training import History, TrainConfig, train

__all__ = ["available_cores", "expected_cost", "timed_train", "train_in_processes"]

_WORKER_PRIOR: Any = None  # set once per worker by _start_worker
_WORKER_STOP: Any = None  # the pool's stop event, likewise
_STOP_GRACE_S = 60.0  # how long a stopped worker may take to end its step before it is killed


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def train_in_processes(configs: Sequence[TrainConfig], prior: Any = None, processes: int = 2,
                       threads: int | None = None) -> Iterator[tuple[History, float]]:
    """Train every config afresh (``overwrite=True``) in up to ``processes`` worker processes
    (never more than :func:`available_cores` or runs); yield ``(history, seconds)`` in the
    order of ``configs``. ``prior`` (a frozen :class:`~diffloss.priors.DiffusionPrior`) is sent
    to each worker once; ``threads`` defaults to this process's ``torch.get_num_threads()``.

    The runs start longest first, as far as the config tells (:func:`expected_cost`: more loss
    terms, more steps), so that the workers finish close together.
    """
    configs = list(configs)
    if not configs:
        return
    processes = max(1, min(int(processes), available_cores(), len(configs)))
    threads = torch.get_num_threads() if threads is None else int(threads)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()  # set: every worker ends its run at the next step, last.pt saved
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=context,
                               initializer=_start_worker, initargs=(threads, prior, stop))
    longest_first = sorted(range(len(configs)), key=lambda i: expected_cost(configs[i]), reverse=True)
    submitted = {i: pool.submit(_train_one, configs[i]) for i in longest_first}
    futures: list[Future] = [submitted[i] for i in range(len(configs))]
    finished = False
    try:
        for cfg, future in zip(configs, futures):
            try:
                outcome = future.result()
            except BrokenProcessPool:
                raise RuntimeError(
                    f"a worker process died while training {cfg.out} (killed for memory?); "
                    "run the comparison with parallel=1 to see the error, or free memory") from None
            if isinstance(outcome, BaseException):
                outcome.add_note(f"(raised in the worker process that trained {cfg.out})")
                raise outcome
            yield outcome
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:  # an error, Ctrl-C or an abandoned loop: stop the runs still going
            workers = list((getattr(pool, "_processes", None) or {}).values())
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:
                proc.join(timeout=_STOP_GRACE_S)
                if proc.is_alive():
                    proc.kill()
                    proc.join()


def expected_cost(cfg: TrainConfig) -> tuple[int, int]:
    """A sort key for a run's length: its loss terms (``"l1+diffloss"``: 2), then its steps."""
    return len(cfg.loss.split("+")), int(cfg.iterations or 0)


def _start_worker(threads: int, prior: Any, stop: Any) -> None:
    global _WORKER_PRIOR, _WORKER_STOP
    torch.set_num_threads(threads)
    _WORKER_PRIOR, _WORKER_STOP = prior, stop
    # Ctrl-C in a notebook reaches the whole process group: between runs a worker ignores it
    # (the parent stops the pool); during a run the trainer's own handler saves last.pt
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_requested(row: dict[str, Any], history: History) -> bool:
    return not _WORKER_STOP.is_set()  # False ends the run at this step, last.pt written


def timed_train(cfg: TrainConfig, prior: Any = None, callback: Any = None) -> tuple[History, float]:
    """One run of a comparison, started afresh: its history and wall seconds (in this process)."""
    t0 = time.perf_counter()
    h = train(cfg, overwrite=True, prior=prior, progress=False, callback=callback)
    return h, time.perf_counter() - t0


def _train_one(cfg: TrainConfig) -> tuple[History, float] | BaseException | None:
    """One run in a worker (``None``: not started, the pool is stopping); an exception is
    returned, as itself when it survives pickling, so that the parent raises it."""
    if _WORKER_STOP.is_set():
        return None
    try:
        return timed_train(cfg, _WORKER_PRIOR, callback=_stop_requested)
    except BaseException as exc:  # errors and Ctrl-C alike go back to the parent
        try:
            return pickle.loads(pickle.dumps(exc))
        except Exception:  # e.g. an exception with its own constructor
            return RuntimeError(f"{type(exc).__name__}: {exc}")
