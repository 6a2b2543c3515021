"""γ from a rule instead of a sweep: an extra term's weight set by the pull it has on the restorer.

The pull of a term at weight γ is how hard it moves the network's weights θ compared with the
pixel loss (:func:`~diffloss.training.terms.gradient_ratio`, the yardstick chapter 05 compares
losses with)::

    pull(γ) = γ · ‖∇θ term‖ / ‖∇θ fidelity‖

The rule picks the γ whose pull is a target ρ, measured on ``K`` training batches b_k at the
initial weights θ₀::

    γ = ρ / median_k ( ‖∇θ term(b_k)‖ / ‖∇θ fidelity(b_k)‖ )

The median, not the mean: DiffLoss's gradient over its (t, ε) draws is heavy-tailed (on IAT one
batch in four gave a ratio 15–75 times the others'), and one such draw would set γ alone.

**Measured once, not adapted.** VQGAN sets its discriminator's weight anew at every step from
the two gradients at the last layer; here γ is measured once, before step 1, and then fixed,
because (1) the run then minimises one fixed objective, ``fidelity + γ·term``, that a reader can
write down, report and repeat (``config.json`` holds γ; a resume reuses it); (2) an adaptive γ
grows as the fidelity gradient shrinks while the network converges, handing the end of training
to the term just when the pixels are nearly right — the phase where a prior's pull on a tiny
model collapsed IAT in chapter 06; (3) it costs ``K`` extra forward/backward passes once, not two
extra gradient norms at every step. What the rule transfers is the *relative* strength of the
term: one ρ for a 91 k-parameter IAT and a 0.9 M-parameter MSBDN, whose raw gradients differ by
orders of magnitude.

The trainer applies it for ``TrainConfig(gamma="auto", rho=...)`` (:func:`resolve_auto_gamma`,
which records what it measured); in your own loop, call :func:`balance_gamma` once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AUTO_BATCHES", "DEFAULT_RHO", "GammaBalance", "balance_gamma", "initial_pull",
           "resolve_auto_gamma"]

#: The default target pull ρ. Chosen on haze validation only (chapter 04's knob sweep, small
#: profile, MSBDN-small, the FFDNet judge, λ = 30, t ≤ 167): the mean over three seeds of the pull
#: that the sweep's best γ = 1 has at the initial weights (:data:`RHO_SOURCE`,
#: results/rho_small_ffdnet.json), to one significant digit. (With the tiny prior as the judge,
#: the same procedure gave 5: results/rho_small.json.)
DEFAULT_RHO: float = 30.0
#: Where :data:`DEFAULT_RHO` comes from (recorded in every run that uses it).
RHO_SOURCE = ("haze validation: the pull of the knob sweep's best gamma (1, lambda 30, t <= 167) at the "
              "initial weights of MSBDN-small (small profile, FFDNet judge), tools/experiments.py rho")
#: The stream of the rule's own (t, ε) draws (``mix_seed(seed, 0, 0, RULE_STREAM)``).
RULE_STREAM: int = 0xBA1
#: Batches the rule measures on: the run's first training batches.
AUTO_BATCHES: int = 8


@dataclass
class GammaBalance:
    """What :func:`balance_gamma` measured: ``gamma`` = ρ / median(``ratios``), where each ratio is
    ‖∇θ term‖ / ‖∇θ fidelity‖ on one batch (the pull at γ = 1)."""

    gamma: float
    rho: float
    ratios: list[float] = field(default_factory=list)

    def pull(self, gamma: float) -> float:
        """The pull γ·median(ratios) that the weight ``gamma`` has on these batches."""
        return float(gamma * statistics.median(self.ratios))

    def to_dict(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "rho": self.rho, "ratios": self.ratios}


def _value(out: Any, name: str | None) -> Tensor:
    """The scalar a term returned: a tensor, a dict's ``name`` entry, or an output's ``.loss``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        if name is None or name not in out:
            raise ValueError(f"the term returned a dict with keys {sorted(out)}: pass name= to say which "
                             "of them is weighted by γ")
        return out[name]
    loss = getattr(out, "loss", None)  # DiffLossOutput
    if isinstance(loss, Tensor):
        return loss
    raise TypeError(f"the term returned {type(out).__name__}; it must return a scalar tensor, a dict "
                    "of them (with name=) or an object with a .loss tensor (DiffLoss)")


def balance_gamma(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                  term: Callable[..., Any], rho: float = DEFAULT_RHO, *, fidelity: str = "l1",
                  name: str | None = None,
                  generator: torch.Generator | None = None) -> GammaBalance:
    """The γ at which ``term`` pulls on ``model`` ρ times as hard as the fidelity does, measured
    at the model's current weights on ``(degraded, clean)`` batches (module docstring).

    ``term(restored, clean)`` (with ``generator=`` when given, e.g. DiffLoss's (t, ε) draws)
    returns a scalar tensor, a dict of them (``name`` picks the weighted one) or a
    :class:`~diffloss.loss.DiffLossOutput`. The weights are not changed and nothing is left in
    their ``.grad``. In your own loop::

        to_prior = lambda z: prior_input(z, "st-clamp")  # [0, 1], gradient straight through
        gamma = balance_gamma(net, [next(batches) for _ in range(4)],
                              lambda z, x: diffloss(to_prior(z), x)).gamma
        z = net(y)
        loss = F.l1_loss(z, x) + gamma * diffloss(to_prior(z), x).loss  # L1 on the raw output

    Raises ``ValueError`` for ρ ≤ 0 or not finite, no batch, a fidelity or term gradient that is
    zero or not finite (γ cannot be set relative to it).
    """
    from ..loss import fidelity_loss
    from .terms import grad_norm_of

    if not isinstance(rho, (int, float)) or isinstance(rho, bool) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"rho must be a finite number > 0 (the term's pull relative to the fidelity's), "
                         f"got {rho!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: there is no pull to balance")
    kwargs = {} if generator is None else {"generator": generator}
    ratios: list[float] = []
    for k, (degraded, clean) in enumerate(batches):
        restored = model(degraded)
        g_fid = grad_norm_of(fidelity_loss(restored.float(), clean, fidelity), params)
        g_term = grad_norm_of(_value(term(restored, clean, **kwargs), name), params)
        if not (math.isfinite(g_fid) and g_fid > 0):
            raise ValueError(f"the fidelity's gradient on batch {k} is {g_fid}: γ cannot be set relative "
                             "to it (does the output depend on the weights? is it already exact?); "
                             "give gamma a number instead")
        if not math.isfinite(g_term):
            raise ValueError(f"the term's gradient on batch {k} is not finite ({g_term}); give gamma a "
                             "number instead")
        ratios.append(g_term / g_fid)
    if not ratios:
        raise ValueError("balance_gamma needs at least one (degraded, clean) batch")
    typical = statistics.median(ratios)
    if typical <= 0:
        raise ValueError("the term's gradient is zero on most batches (e.g. DiffLoss on outputs that "
                         "are all clamped, with prior_input='clamp'): no γ gives it a pull; give "
                         "gamma a number, or use prior_input='st-clamp'")
    return GammaBalance(gamma=float(rho / typical), rho=float(rho), ratios=ratios)


def resolve_auto_gamma(config: Any, model: nn.Module, train_ds: Any, terms: dict[str, nn.Module],
                       device: torch.device, saved: dict[str, Any] | None = None, rank: int = 0,
                       world: int = 1) -> tuple[Any, dict[str, Any] | None]:
    """``config`` with ``auto_gamma`` set when ``gamma="auto"``, and what to record in
    ``history.meta["gamma_rule"]`` (``None`` when nothing was measured).

    The γ comes from, in order: the config's own ``auto_gamma`` (given, or a resume's saved
    config, ``saved``), else :func:`balance_gamma` per term on ``batches()`` (the run's first
    :data:`AUTO_BATCHES` training batches) at the initial weights. The global random state is
    restored afterwards, so measuring changes neither the weights nor the run's draws: a run
    with ``gamma="auto"`` equals one given the γ it recorded.
    """
    if config.gamma != "auto" or not terms:
        return config, None
    if config.auto_gamma is None and saved and saved.get("auto_gamma"):
        config = config.replace(auto_gamma=dict(saved["auto_gamma"]))
    if config.auto_gamma is not None and set(terms) <= set(config.auto_gamma):
        return config, None
    from .checkpoint import rng_state, set_rng_state
    from .data import first_batches, mix_seed

    rho = config.rho if config.rho is not None else DEFAULT_RHO
    state = rng_state()
    was_training = model.training
    model.to(device).train()
    try:
        data = [(y.to(device), x.to(device))
                for y, x in first_batches(train_ds, config, AUTO_BATCHES, rank, world)]
        found = {}
        for name, term in terms.items():
            gen = torch.Generator().manual_seed(mix_seed(config.seed, 0, 0, RULE_STREAM))
            found[name] = balance_gamma(model, data, term, rho, fidelity=config.fidelity, name=name,
                                        generator=gen)
    except ValueError as exc:
        raise ValueError(f"gamma='auto': {exc}") from None
    finally:
        model.train(was_training)
        set_rng_state(state)
    config = config.replace(auto_gamma={k: b.gamma for k, b in found.items()})
    return config, {"rule": "gamma = rho / median(|grad term| / |grad fidelity|), once, at step 0",
                    "rho": rho, "rho_source": RHO_SOURCE if config.rho is None else "given",
                    "batches": len(data), **{k: b.to_dict() for k, b in found.items()}}


def initial_pull(config: Any, prior: Any = None, term: str = "diffloss") -> GammaBalance:
    """What ``gamma="auto"`` would measure for ``config``'s run, without training it: its initial
    weights (``seed``), its first :data:`AUTO_BATCHES` batches, the same draws. ``.gamma`` is the
    rule's γ at ``config.rho`` (default :data:`DEFAULT_RHO`); ``.pull(γ)`` the pull of any γ."""
    from .build import build_model
    from .checkpoint import seed_all
    from .data import build_datasets, first_batches, mix_seed
    from .terms import build_terms

    seed_all(config.seed)
    model = build_model(config.model, config.model_kwargs)  # the run's initial weights
    module = build_terms(config.replace(loss=f"{config.fidelity}+{term}", gamma=None, rho=None), prior)[term]
    batches = first_batches(build_datasets(config).train, config, AUTO_BATCHES)
    gen = torch.Generator().manual_seed(mix_seed(config.seed, 0, 0, RULE_STREAM))
    rho = config.rho if config.rho is not None else DEFAULT_RHO
    return balance_gamma(model, batches, module, rho, fidelity=config.fidelity, name=term, generator=gen)
