"""Several training runs at once, each in a process of its own (CPU profiles).

A CPU run of a narrow restorer on small crops keeps about one core busy: a second torch thread
buys little (chapter 04 runs with one), while a second *process* trains a second run
alongside: two runs in two one-thread processes took ×0.60–0.70 of their sequential wall time
(``benchmarks/bench_parallel.py``, ``benchmarks/RESULTS.md``). :func:`train_in_processes` gives each run to
one of ``processes`` spawned workers that use this process's number of torch threads, so a run
computes the same bits as it would here: same code, same seeds, same kernels, same threads.

Results come back in the order of the configs, as each is ready; an error in a worker is
raised here, naming the run; a worker that dies (e.g. killed for memory) stops them all.
Leaving the loop early (an error, Ctrl-C) sets a stop event: every running run ends at its next
step with ``last.pt`` written (the trainer's ``callback``), and runs not yet started never start,
so their folders are left as they were.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .training import History, NonFiniteLossError, TrainConfig, train

__all__ = ["available_cores", "expected_cost", "timed_train", "train_in_processes"]

_WORKER_PRIOR: Any = None  # set once per worker by _worker
_WORKER_STOP: Any = None  # the stop event, likewise
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
    terms, more steps), so that the workers finish close together. This function starts the
    workers itself and keeps their handles: however it ends (all done, an error, ``close()``),
    every worker it started has ended and been joined when it returns.
    """
    configs = list(configs)
    if not configs:
        return
    processes = max(1, min(int(processes), available_cores(), len(configs)))
    threads = torch.get_num_threads() if threads is None else int(threads)
    if processes * threads > available_cores():
        warnings.warn(f"{processes} processes × {threads} torch threads on {available_cores()} cores: the "
                      "threads compete, and a run can be ten times slower (measured: IAT + DiffLoss, "
                      "4.3 s/step against 0.43 s/step one after the other). Call "
                      f"torch.set_num_threads({max(1, available_cores() // processes)}) first, or use "
                      "parallel=1", stacklevel=2)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()  # set: every worker ends its run at the next step, last.pt saved
    tasks, results = context.Queue(), context.Queue()
    for i in sorted(range(len(configs)), key=lambda i: expected_cost(configs[i]), reverse=True):
        tasks.put((i, configs[i]))
    for _ in range(processes):
        tasks.put(None)  # one "no more runs" per worker
    workers = [context.Process(target=_worker, args=(k, threads, prior, stop, tasks, results),
                               name=f"diffloss-run-{k}", daemon=True) for k in range(processes)]
    for proc in workers:
        proc.start()
    ready: set[int] = set()  # workers that got past their start (imports, the prior)
    outcomes: dict[int, Any] = {}
    finished = False
    try:
        for i, cfg in enumerate(configs):
            while i not in outcomes:
                _receive(results, workers, ready, outcomes, cfg)
            outcome = outcomes.pop(i)
            if isinstance(outcome, BaseException):
                outcome.add_note(f"(raised in the worker process that trained {cfg.out})")
                raise outcome
            yield outcome
        finished = True
    finally:
        if not finished:  # an error, Ctrl-C or an abandoned loop: stop the runs still going
            stop.set()
        _end_workers(workers, results, grace=None if finished else _STOP_GRACE_S)
        for q in (tasks, results):
            q.close()
            q.join_thread()


def _receive(results: Any, workers: list[Any], ready: set[int], outcomes: dict[int, Any],
             waiting_for: TrainConfig) -> None:
    """Wait for one message from a worker (``("ready", k)`` or ``(index, outcome)``); a worker
    that died without reporting is a clear error."""
    try:
        message = results.get(timeout=0.5)
    except queue.Empty:
        for k, proc in enumerate(workers):
            if proc.exitcode is not None and proc.exitcode != 0:
                if k not in ready:
                    raise RuntimeError(
                        f"a worker process failed to start (exit status {proc.exitcode}). Runs are "
                        "trained in spawned processes, which import the calling script again: "
                        "from a script, put the call under `if __name__ == \"__main__\":`, or use "
                        "parallel=1") from None
                raise RuntimeError(
                    f"a worker process died (exit status {proc.exitcode}) while training, e.g. "
                    f"{waiting_for.out} (killed for memory?); run the comparison with parallel=1 to "
                    "see the error, or free memory") from None
        if all(proc.exitcode is not None for proc in workers):  # all ended, nothing to read
            with contextlib.suppress(queue.Empty):
                message = results.get(timeout=1.0)
                _file(message, ready, outcomes)
                return
            raise RuntimeError(f"every worker process ended before {waiting_for.out} was trained; "
                               "run the comparison with parallel=1 to see why") from None
        return
    _file(message, ready, outcomes)


def _file(message: tuple[Any, Any], ready: set[int], outcomes: dict[int, Any]) -> None:
    key, value = message
    if key == "ready":
        ready.add(int(value))
    else:
        outcomes[int(key)] = pickle.loads(value)


def _end_workers(workers: list[Any], results: Any, grace: float | None) -> None:
    """Join every worker (``grace`` seconds at most, then kill it), reading their queue
    meanwhile: a worker cannot end while what it put on the queue is still unread."""
    deadline = None if grace is None else time.monotonic() + grace
    while any(proc.is_alive() for proc in workers):
        if deadline is not None and time.monotonic() > deadline:
            break
        with contextlib.suppress(queue.Empty):
            results.get(timeout=0.1)
    for proc in workers:
        if proc.is_alive():
            proc.kill()
        proc.join()
        proc.close()


def expected_cost(cfg: TrainConfig) -> tuple[int, int]:
    """A sort key for a run's length: its loss terms (``"l1+diffloss"``: 2), then its steps."""
    return len(cfg.loss.split("+")), int(cfg.iterations or 0)


def _worker(k: int, threads: int, prior: Any, stop: Any, tasks: Any, results: Any) -> None:
    """A worker's life: set up once, then train runs from ``tasks`` until a ``None``."""
    global _WORKER_PRIOR, _WORKER_STOP
    torch.set_num_threads(threads)
    _WORKER_PRIOR, _WORKER_STOP = prior, stop
    # Ctrl-C in a notebook reaches the whole process group: between runs a worker ignores it
    # (the parent stops the pool); during a run the trainer's own handler saves last.pt
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A collapse is in each run's history.meta, which the comparison reports (diffloss.experiments);
    # the trainer's warning from a worker would reach the notebook as raw stderr with this
    # machine's paths and a source line.
    from .training.validation import CollapseWarning

    warnings.filterwarnings("ignore", category=CollapseWarning)
    threading.Thread(target=_end_with_parent, args=(stop,), daemon=True).start()
    results.put(("ready", k))
    while (task := _next_task(tasks, stop)) is not None:
        i, cfg = task
        # by value (plain pickle): torch's queue pickler would share tensors through this
        # process's file descriptors, gone once the worker has ended
        results.put((i, pickle.dumps(_train_one(cfg))))


def _end_with_parent(stop: Any) -> None:
    """A worker whose parent died (a killed kernel or script) would train on forever: stop its
    run at the next step (``last.pt`` saved), then end the process if it has not ended by then."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()  # returns when the parent process has gone
    stop.set()
    time.sleep(_STOP_GRACE_S)
    os._exit(1)


def _next_task(tasks: Any, stop: Any) -> Any:
    """The next task, or ``None`` once there are no more or the parent has gone."""
    while True:
        try:
            return tasks.get(timeout=1.0)
        except queue.Empty:
            parent = multiprocessing.parent_process()
            if stop.is_set() and parent is not None and not parent.is_alive():
                return None


def _stop_requested(row: dict[str, Any], history: History) -> bool:
    return not _WORKER_STOP.is_set()  # False ends the run at this step, last.pt written


def timed_train(cfg: TrainConfig, prior: Any = None, callback: Any = None) -> tuple[History, float]:
    """One run of a comparison, started afresh: its history and wall seconds (in this process).

    A run that stops on a non-finite value is returned, not raised: its history (rows up to the
    last good step, ``model`` with the weights of the step before) carries
    ``meta["diverged"] = {"step", "message", "checkpoint"}``."""
    t0 = time.perf_counter()
    try:
        h = train(cfg, overwrite=True, prior=prior, progress=False, callback=callback)
    except NonFiniteLossError as exc:
        h = getattr(exc, "history", None)
        if h is None:  # raised before the run had a history (e.g. while building it)
            raise
        h.meta["diverged"] = {"step": exc.step, "message": str(exc),
                              "checkpoint": None if exc.checkpoint is None else str(exc.checkpoint)}
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
