"""Setting up a run, before its first step: the run folder's rules, the network, the data, the
loss terms (γ measured for ``gamma="auto"``), the optimizer and schedule, the history, a resume's
state and the batches. :func:`set_up` returns them as one :class:`Run`; the
loop (:mod:`.loop`) only trains.

The order matters for the user's files: nothing of an old run is deleted (``overwrite``) before
the new one's network, data, prior and one batch are known to work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .balance import resolve_auto_gamma
from .build import build_model, check_restorer
from .checkpoint import LAST, load_weights, seed_all, set_rng_state
from .config import CONFIG_FILE, TrainConfig
from .data import KeyedPairs, StepBatchSampler, build_datasets, mix_seed
from .distributed import barrier, fused_adam
from .ema import EMA
from .guards import DeviceGuard
from .history import History, history_columns, run_meta
from .rundir import RunLock, check_resume_config, clear_old_run, open_run_folder
from .terms import LOSS_TERMS, build_terms

__all__ = ["Run", "lr_factor", "set_up"]


@dataclass
class Run:
    """Everything a run's loop needs, set up (:func:`set_up`)."""

    config: TrainConfig  # as run: gamma="auto" resolved (auto_gamma)
    out: Path
    device: torch.device
    main_proc: bool
    rank: int
    world: int
    model: nn.Module  # prepared by accelerate (DDP, autocast)
    raw: nn.Module  # the unwrapped network: its state_dict is saved
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA | None
    terms: dict[str, nn.Module]
    stateful: list[str]  # terms with state of their own (the discriminator)
    history: History
    tests: dict[str, Any]
    val_ds: Any
    iterations: int
    batches: Iterator[Any]
    deferred: bool  # values read back every log_every steps, not every step
    guard: DeviceGuard | None
    log_every: int
    start: int  # steps already done (a resume)
    elapsed0: float  # seconds already spent (a resume)
    last_good: Path | None  # the last good last.pt
    eval_model: nn.Module  # the EMA weights when the run has EMA

    def micro_batch(self, step: int, a: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """Micro-step ``a`` of ``step``: its ``(degraded, clean)`` batch on the device and the
        generator of its loss terms' noise, a pure function of ``(seed, micro-step, rank)``."""
        m = (step - 1) * self.config.grad_accum + a
        degraded, clean = (x.to(self.device, non_blocking=True) for x in next(self.batches))
        return degraded, clean, torch.Generator().manual_seed(mix_seed(self.config.seed, m, self.rank, 0xD1F))


def set_up(config: TrainConfig, accelerator: Any, lock: RunLock | None, resume: bool, overwrite: bool,
           prior: Any) -> Run:
    """Build the run of ``config`` (``resume``/``overwrite`` as :func:`~.loop.train`)."""
    out = Path(config.out)
    mixed = config.resolved_mixed_precision()
    device, main_proc = accelerator.device, accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    state = open_run_folder(out, resume, overwrite, main_process=main_proc)
    if state is not None:
        check_resume_config(state["config"], config, out / LAST)
    barrier(accelerator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # history.meta["peak_memory_gib"]: this run's

    # -- build ------------------------------------------------------------------------------
    seed_all(config.seed)
    model = build_model(config.model, config.model_kwargs)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"the network {config.model!r} has no trainable parameters (none, or all with "
                         "requires_grad=False): there is nothing to train. Check its __init__ "
                         "(layers assigned as attributes of the module, not kept in a plain list).")
    train_ds, val_ds, tests = build_datasets(config)
    check_restorer(model, str(config.model), lambda: KeyedPairs(train_ds)[(0, 0)][0][None])
    n_train = len(train_ds)  # type: ignore[arg-type]
    iterations = (math.ceil(config.epochs * n_train / (config.batch * world * config.grad_accum))
                  if config.epochs is not None else config.iterations)
    # The frozen prior is only moved to the device (accelerator.prepare would wrap it for nothing).
    terms = {k: t.to(device) for k, t in build_terms(config, prior).items()}
    config, rule = resolve_auto_gamma(config, model, train_ds, terms, device,  # gamma="auto"
                                      state["config"] if state is not None else None, rank, world)
    if state is not None and int(state["step"]) > iterations:
        raise ValueError(f"cannot resume {out} with iterations={iterations}: the run is already at step "
                         f"{int(state['step'])}. Nothing was changed. Pass a larger --iterations to "
                         "train further, or leave it out to finish the run as configured.")
    if overwrite and state is None and main_proc:  # the new run is built: only now the old one goes
        clear_old_run(out)
    stateful = [name for name in terms if LOSS_TERMS[name].stateful]  # the discriminator
    # Values are read every log_every steps (CUDA: 10), a DeviceGuard stopping fused Adam after a
    # NaN meanwhile; not with a discriminator (it reads), nor fp16 (GradScaler owns found_inf).
    log_every = config.resolved_log_every(device)
    deferred = log_every > 1 and not stateful
    guard = DeviceGuard(device) if deferred and mixed != "fp16" else None
    # Fused Adam wherever the device has it, guard or not: log_every never changes the run
    # (foreach and fused Adam differ in the last bits, which Adam's first steps amplify to ±lr).
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay, fused=fused_adam(device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, iterations))
    history = History(columns=history_columns(config, val_ds is not None, list(tests)), config=config,
                      folder=out, meta=run_meta(config, world, device, mixed, iterations, n_train, val_ds, tests))
    if rule:
        history.meta["gamma_rule"] = rule  # what gamma="auto" measured (config.json: auto_gamma)
    if lock is not None and lock.stale is not None:
        history.meta["stale_lock"] = lock.stale  # a crashed run held the folder before
    start, elapsed0, last_good = 0, 0.0, None
    if state is not None:
        load_weights(model, state["model"], f"cannot resume {out}: the weights in {LAST}", repr(config.model))
        history.resume_from(state)
        start, elapsed0 = int(state["step"]), float(state.get("elapsed", 0.0))
        scheduler.load_state_dict(state["scheduler"])
        last_good = out / LAST
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    if config.compile_model:  # the training forward only: evaluation runs `raw`, eagerly
        model = torch.compile(model, backend="inductor" if config.compile_model is True
                              else config.compile_model)
    ema = EMA(raw, config.ema) if config.ema is not None else None  # on the device
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        for name in stateful:
            terms[name].load_state_dict((state.get("terms") or {})[name])
        if ema is not None:
            ema.load_state_dict(state["ema"])
    if main_proc:
        config.save(out / CONFIG_FILE)
        history.write_csv()
        history.write_json()

    sampler = StepBatchSampler(n_train, config.batch, config.seed, start=start * config.grad_accum,
                               rank=rank, world=world)
    batches = iter(DataLoader(KeyedPairs(train_ds), batch_sampler=sampler,
                              num_workers=config.workers, pin_memory=device.type == "cuda"))
    eval_model = ema.shadow if ema is not None else raw
    return Run(config=config, out=out, device=device, main_proc=main_proc, rank=rank, world=world,
               model=model, raw=raw, optimizer=optimizer, scheduler=scheduler, ema=ema, terms=terms,
               stateful=stateful, history=history, tests=tests, val_ds=val_ds,
               iterations=iterations, batches=batches, deferred=deferred, guard=guard,
               log_every=log_every, start=start, elapsed0=elapsed0,
               last_good=last_good, eval_model=eval_model)


def lr_factor(config: Any, iterations: int) -> Callable[[int], float]:
    """The factor on ``config.lr`` after ``step`` optimiser steps (``LambdaLR``): linear warm-up
    over ``warmup`` steps, then 1 (``"constant"``) or the cosine from 1 to ``min_lr / lr``,
    ``r + (1 − r)·½(1 + cos(π·p))`` with ``p`` the share of the post-warm-up steps done."""
    warmup, ratio = config.warmup, config.min_lr / config.lr

    def factor(step: int) -> float:  # step = optimiser steps done so far
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, iterations - warmup))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
