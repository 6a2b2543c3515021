"""Loss terms: the fidelity and the registry of extra terms the trainer adds to it.

``L_total = fidelity(z, x) + Σ_k γ_k·term_k(z, x)`` (seed Eq. 8 for DiffLoss, with
``z = g(y)`` the restored image and ``x`` the ground truth). ``TrainConfig.loss`` names the
terms, ``"l1+diffloss"``: the fidelity (:data:`FIDELITIES`) then ``+``-separated names from
:data:`LOSS_TERMS` (DiffLoss, the VGG16 perceptual loss of supplement Eq. 5, the PatchGAN
adversarial loss of supplement Eq. 7). Each term is built by its :class:`LossTerm` into a
module that returns a dict of scalar tensors; :func:`loss_parts` sums them into the total.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..device import to_device

__all__ = ["FIDELITIES", "LOSS_TERMS", "PRIOR_INPUTS", "LossTerm", "build_terms",
           "gradient_ratio", "loss_parts", "parse_loss", "prior_input", "register_loss_term",
           "valid_losses"]

#: A :class:`~diffloss.training.config.TrainConfig`. Not imported: ``config.py`` imports this
#: module (to check ``loss`` names), so importing it back would make an import circle.
Config = Any

#: The pixel fidelity terms (the first part of ``loss``).
FIDELITIES: tuple[str, ...] = ("l1", "mse")


@dataclass(frozen=True)
class LossTerm:
    """An extra loss term, added as ``γ·value`` to the fidelity.

    ``build(config, prior)`` returns a module whose call ``term(restored, target, generator)``
    returns a dict of scalar tensors: ``name`` (the value that is weighted by γ) and the other
    ``parts`` (logged only). ``needs_prior``: the term uses the diffusion prior.
    ``default_gamma``: γ when ``TrainConfig.gamma`` is ``None``.

    ``stateful``: the term has trainable state of its own (the adversarial term's
    discriminator). Its module then has ``step(restored, target, check)``, which the trainer
    calls after every generator update with the detached restored image (alternating updates)
    and which returns scalar tensors named in ``parts``; ``check(values)`` raises on a
    non-finite value before anything is updated. The module's ``state_dict`` (weights and
    optimizer state) is saved in ``last.pt`` and restored on resume.
    """

    name: str
    parts: tuple[str, ...]
    build: Callable[[Config, Any], nn.Module]
    needs_prior: bool = False
    description: str = ""
    default_gamma: float = 1e-3
    stateful: bool = False


#: How the restored image is handed to the prior (``TrainConfig.prior_input``).
PRIOR_INPUTS: tuple[str, ...] = ("st-clamp", "clamp", "raw")


def prior_input(restored: Tensor, mode: str) -> Tensor:
    """The restored image as the prior sees it.

    MSBDN has no output activation, and an untrained one returns values far outside [0, 1]
    (about [-2, 0.7] at initialisation), which :class:`~diffloss.loss.DiffLoss` rejects: the
    prior only knows images in [0, 1]. ``"st-clamp"`` (default) clamps to [0, 1] in the forward
    pass and passes the gradient straight through (``z + (clamp(z) − z).detach()``), so DiffLoss
    still trains every pixel; ``"clamp"`` is a plain clamp (no DiffLoss gradient for pixels
    outside [0, 1]); ``"raw"`` passes the output unchanged (DiffLoss raises if it is far out).
    """
    if mode == "raw":
        return restored
    clamped = restored.clamp(0, 1)
    if mode == "clamp":
        return clamped
    if mode == "st-clamp":
        return restored + (clamped - restored).detach()
    raise ValueError(f"unknown prior_input {mode!r}. Valid values: {', '.join(PRIOR_INPUTS)}")


class _DiffLossTerm(nn.Module):
    """Adapter: :class:`~diffloss.loss.DiffLoss` → ``{"diffloss", "nat", "sem"}``, with the
    restored image brought to [0, 1] by :func:`prior_input`.

    Two ways to pay for the prior less often, both unbiased (the expected loss, and so the
    expected gradient, is DiffLoss's on the whole batch at every step):

    - ``fraction`` < 1: DiffLoss on a random ``ceil(fraction·B)`` of the ``B`` images of a batch
      (DiffLoss is a mean over images, so a random subset estimates it without bias);
    - ``every`` = k > 1: DiffLoss on a random 1/k of the steps, multiplied by k there, and 0 on
      the others (the logged ``nat``/``sem`` are then 0 too).

    The random choices come from the step's ``generator``, so a resumed run repeats them.
    """

    def __init__(self, diffloss: nn.Module, mode: str = "st-clamp", fraction: float = 1.0,
                 every: int = 1) -> None:
        super().__init__()
        self.diffloss, self.mode = diffloss, mode
        self.fraction, self.every = float(fraction), int(every)

    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        scale = 1.0
        if self.every > 1:
            if torch.rand((), generator=generator).item() * self.every >= 1.0:
                zero = restored.new_zeros(()) * restored.sum()  # keeps the graph, adds nothing
                return {"diffloss": zero, "nat": zero.detach(), "sem": zero.detach()}
            scale = float(self.every)
        if self.fraction < 1.0:
            b = restored.shape[0]
            keep = torch.randperm(b, generator=generator)[:max(1, math.ceil(self.fraction * b))]
            keep = to_device(keep, restored.device)
            restored, target = restored[keep], target[keep]
        out = self.diffloss(prior_input(restored, self.mode), target, generator=generator)
        return {"diffloss": scale * out.loss, "nat": out.nat, "sem": out.sem}


def _build_diffloss(config: Config, prior: Any) -> nn.Module:
    from ..loss import DiffLoss

    unet = getattr(prior, "unet", None)
    if unet is not None and getattr(unet, "_supports_gradient_checkpointing", False):
        # diffusers recomputes a block's activations in backward when grad is enabled
        (unet.enable_gradient_checkpointing if config.prior_checkpointing
         else unet.disable_gradient_checkpointing)()

    if config.compile_prior and not getattr(prior, "compiled", True):
        prior.compile_unet()  # torch.compile; warns and stays eager where it is unavailable
    # The value checks of DiffLoss read from the device (a host sync per step); the trainer's
    # prior input is clamped to [0, 1] and its own check catches NaN, so only "raw" keeps them.
    return _DiffLossTerm(DiffLoss(prior, lambda_sem=config.lambda_sem, nat_weight=config.nat_weight,
                                  t_range=config.t_range, prior_size=config.prior_size,
                                  size_policy=config.size_policy,
                                  autocast=config.resolved_mixed_precision(),  # the run's precision
                                  check_values=config.prior_input == "raw"), config.prior_input,
                         fraction=config.diffloss_fraction, every=config.diffloss_every)


class _PerceptualTerm(nn.Module):
    """Adapter: :class:`~diffloss.comparison_losses.PerceptualLoss` → ``{"perceptual"}`` (supplement Eq. 5)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"perceptual": self.loss(restored, target)}


def _build_perceptual(config: Config, prior: Any) -> nn.Module:
    from ..comparison_losses import LitePerceptualLoss, PerceptualLoss

    if config.perceptual_net == "efficientnet-lite0":
        return _PerceptualTerm(LitePerceptualLoss())
    return _PerceptualTerm(PerceptualLoss(weights=config.vgg_weights))


class _AdversarialTerm(nn.Module):
    """Adapter: :class:`~diffloss.comparison_losses.AdversarialLoss` → ``{"adversarial"}`` (−log D(z),
    supplement Eq. 7) for the generator, and :meth:`step` (one discriminator update) after it."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"adversarial": self.loss.generator_loss(restored)}

    def step(self, restored: Tensor, target: Tensor,
             check: Callable[[dict[str, float]], None] | None = None) -> dict[str, Tensor]:
        return self.loss.discriminator_step(restored, target, check=check)


def _build_adversarial(config: Config, prior: Any) -> nn.Module:
    from ..comparison_losses import AdversarialLoss

    return _AdversarialTerm(AdversarialLoss(channels=config.disc_channels, lr=config.lr,
                                            betas=(0.5, 0.999)))


#: Registered extra terms, by the name used in ``loss`` (``"l1+<name>"``).
LOSS_TERMS: dict[str, LossTerm] = {
    "diffloss": LossTerm("diffloss", ("nat", "sem"), _build_diffloss, needs_prior=True,
                         description="DiffLoss: nat_weight·L_nat + lambda_sem·L_sem (seed Eq. 8)"),
    "perceptual": LossTerm("perceptual", (), _build_perceptual,
                           description="VGG16 relu1_2/relu2_2/relu3_3 feature loss (supplement Eq. 5)"),
    "adversarial": LossTerm("adversarial", ("d_loss", "d_real", "d_fake"), _build_adversarial,
                            default_gamma=5e-3, stateful=True,
                            description="−log D(z) with a PatchGAN discriminator trained in "
                                        "alternation (supplement Eq. 7)"),
}


def register_loss_term(term: LossTerm) -> None:
    """Make ``"<fidelity>+<term.name>"`` a valid ``loss`` (e.g. perceptual, adversarial)."""
    if "+" in term.name or term.name in FIDELITIES:
        raise ValueError(f"invalid loss term name {term.name!r}")
    LOSS_TERMS[term.name] = term


def valid_losses() -> list[str]:
    """Every valid ``loss`` value with at most one extra term (more may be combined with ``+``)."""
    return [*FIDELITIES, *(f"{f}+{t}" for f in FIDELITIES for t in LOSS_TERMS)]


def parse_loss(loss: str) -> tuple[str, tuple[str, ...]]:
    """``"l1+diffloss"`` → ``("l1", ("diffloss",))``; a clear ``ValueError`` lists valid values."""
    names = [p.strip().lower() for p in str(loss).split("+")]
    if names[0] not in FIDELITIES or any(n not in LOSS_TERMS for n in names[1:]) or \
            len(set(names[1:])) != len(names[1:]):
        raise ValueError(
            f"unknown loss {loss!r}. Valid values: {', '.join(valid_losses())} "
            f"(a fidelity term {'/'.join(FIDELITIES)}, then '+' and any of the registered "
            f"terms: {', '.join(LOSS_TERMS) or 'none'})"
        )
    return names[0], tuple(names[1:])


def loss_parts(restored: Tensor, target: Tensor, config: Config, terms: dict[str, nn.Module],
               generator: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """``{"total", "fidelity", <term>, <term parts>...}`` and the number of non-finite values in
    ``restored``, all as device scalars: nothing here waits for the device (a NaN in
    ``restored`` makes the total NaN, which the caller's finiteness check catches)."""
    from ..loss import fidelity_loss

    restored = restored.float()
    fid = fidelity_loss(restored, target, config.fidelity)
    parts: dict[str, Tensor] = {"fidelity": fid}
    total = fid
    for name, term in terms.items():
        values = term(restored, target, generator=generator)
        parts.update(values)
        total = total + config.gamma_for(name) * values[name]
    bad = (~torch.isfinite(restored.detach())).sum()
    return {"total": total, **parts}, bad


def build_terms(config: Config, prior: Any = None) -> dict[str, nn.Module]:
    """The extra terms of ``config.loss`` as modules, by name (``prior``: for DiffLoss)."""
    if prior is None and any(LOSS_TERMS[t].needs_prior for t in config.terms):
        from .build import load_prior

        prior = load_prior(config.prior)
    return {name: LOSS_TERMS[name].build(config, prior) for name in config.terms}


def grad_norm_of(loss: Tensor, params: list[Tensor]) -> float:
    """‖∇_params loss‖ (summed in float64; the graph is kept, nothing is left in ``.grad``)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))


def gradient_ratio(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], term: nn.Module,
                   name: str, gamma: float = 1.0, fidelity: str = "l1",
                   generator: torch.Generator | None = None) -> list[float]:
    """``γ·‖∇_θ term‖ / ‖∇_θ fidelity‖`` for each ``(degraded, clean)`` batch, at ``model``'s
    current weights θ: how strongly a term at weight γ pulls on the network compared with the
    pixel loss. ``term`` is a built loss term (:func:`build_terms`), ``name`` its value's key."""
    from ..loss import fidelity_loss

    params = [p for p in model.parameters() if p.requires_grad]
    ratios = []
    for degraded, clean in batches:
        restored = model(degraded)
        g_fid = grad_norm_of(fidelity_loss(restored, clean, fidelity), params)
        g_term = grad_norm_of(term(restored, clean, generator=generator)[name], params)
        ratios.append(gamma * g_term / g_fid)
    return ratios
