"""The valid range of every number of a :class:`~diffloss.training.config.TrainConfig`."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["RHO_MAX", "check_numbers"]

#: The largest target pull ρ of ``gamma="auto"`` (DiffLoss's gradient ρ times L1's at the start).
RHO_MAX = 1000.0


def check_numbers(config: Any) -> None:
    """Every number in its valid range: a bad value is one clear ``ValueError`` naming the
    field, never a run that trains backwards (``grad_clip < 0``), stands still
    (``grad_clip = 0``) or turns into NaN (``lr = inf``)."""
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {rule}, got {getattr(config, name)!r}")

    def finite(name: str) -> bool:
        value = getattr(config, name)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)

    for name in ("crop", "iterations", "batch", "grad_accum", "disc_channels"):
        need(int(getattr(config, name)) >= 1, name, ">= 1")
    for name in ("eval_every", "warmup", "workers", "eval_overlap", "data_seed", "seed"):
        need(int(getattr(config, name)) >= 0, name, ">= 0")
    for name in ("max_size", "train_items", "eval_max_size", "save_every", "prior_size",
                 "eval_tile"):
        need(getattr(config, name) is None or int(getattr(config, name)) >= 1, name,
             "None or an integer >= 1")
    need(finite("lr") and config.lr > 0, "lr", "a finite number > 0")
    need(finite("min_lr") and 0 <= config.min_lr <= config.lr, "min_lr", "finite, in [0, lr]")
    need(finite("weight_decay") and config.weight_decay >= 0, "weight_decay", "finite and >= 0")
    need(finite("lambda_sem") and config.lambda_sem >= 0, "lambda_sem", "finite and >= 0")
    need(finite("nat_weight") and config.nat_weight >= 0, "nat_weight", "finite and >= 0")
    if isinstance(config.gamma, str):  # the rule: "auto", measured by the trainer
        need(config.gamma.strip().lower() == "auto", "gamma", "None, a finite number >= 0 or 'auto'")
        config.gamma = "auto"
    need(config.gamma in (None, "auto") or (finite("gamma") and config.gamma >= 0), "gamma",
         "None, a finite number >= 0 or 'auto'")
    need(config.rho is None or (finite("rho") and 0 < config.rho <= RHO_MAX), "rho",
         f"None or a number in (0, {RHO_MAX:g}] (a pull of more than {RHO_MAX:g}× L1's leaves L1 no say)")
    need(config.rho is None or config.gamma == "auto", "rho", "None unless gamma='auto' (ρ is its target)")
    need(config.auto_gamma is None or all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                        for v in config.auto_gamma.values()), "auto_gamma",
         "None or finite numbers > 0 by term")
    need(config.grad_clip is None or (finite("grad_clip") and config.grad_clip > 0), "grad_clip",
         "None (no clipping) or a finite max-norm > 0")
    need(all(math.isfinite(b) and 0 <= b < 1 for b in config.betas), "betas",
         "two numbers in [0, 1)")
    need(config.ema is None or (finite("ema") and 0.0 < config.ema < 1.0), "ema",
         "None or a decay in (0, 1)")
    need(config.val is None or int(config.val) >= 0, "val", "None or >= 0")
    need(finite("diffloss_fraction") and 0 < config.diffloss_fraction <= 1, "diffloss_fraction",
         "in (0, 1]")
    need(int(config.diffloss_every) >= 1, "diffloss_every", ">= 1")
    need(config.log_every is None or int(config.log_every) >= 1, "log_every", "None or >= 1")
    need(config.epochs is None or (finite("epochs") and config.epochs > 0), "epochs",
         "None or a finite number > 0")
    if config.stop_on_collapse and int(config.eval_every) == 0:
        raise ValueError("stop_on_collapse needs eval_every > 0: a collapse is detected at an evaluation, "
                         "and eval_every 0 never evaluates")
    if config.eval_tile is not None and config.eval_tile <= 2 * config.eval_overlap:
        raise ValueError(f"eval_tile ({config.eval_tile}) must exceed 2·eval_overlap ({config.eval_overlap})")
