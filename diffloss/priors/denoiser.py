"""A noise-level-conditioned Gaussian denoiser D(y, σ) as a diffusion prior.

A Gaussian denoiser trained on natural images *is* a diffusion model: Tweedie's formula ties
the minimum-MSE denoiser to the score of the noisy image distribution,
``E[x | y] = y + σ²·∇_y log p_σ(y)``, and Karras et al. (EDM, 2022) write every diffusion model
as such a denoiser with a preconditioning. For the variance-preserving schedule of DDPM,
``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε`` with ``x_0`` in [-1, 1], dividing by ``√ᾱ_t`` and mapping to
[0, 1] gives an image with additive white Gaussian noise::

    y   = (x_t / √ᾱ_t + 1) / 2  =  x_0' + σ_t·ε,     x_0' = (x_0 + 1)/2 ∈ [0, 1]
    σ_t = √(1−ᾱ_t) / (2·√ᾱ_t)                          (noise level in [0, 1] units)

so a denoiser of that noise level estimates ``x_0'``, and the noise prediction follows from
the forward process (seed Eq. 2 solved for ε)::

    x̂_0 = 2·D(y, σ_t) − 1
    ε̂(x_t, t) = (x_t − √ᾱ_t·x̂_0) / √(1−ᾱ_t)

That is :meth:`DenoiserPrior.forward`'s ``eps``; its ``hspace`` is the output of one named
layer in the middle of the denoiser (the analogue of the U-Net's bottleneck). A denoiser knows
only the noise levels it was trained on: the timesteps whose σ_t lies in its
``[sigma_min, sigma_max]`` are :attr:`DenoiserPrior.valid_t_range`, and a timestep outside
them is refused (by the prior at each call, by :class:`~diffloss.loss.DiffLoss` at
construction).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from ..device import to_device
from ..schedule import NoiseSchedule
from .wrapper import NAMED_PRIORS, DiffusionPrior, PriorOutput, _StopAfterMidBlock


def noise_level(schedule: NoiseSchedule) -> Tensor:
    """σ_t = √(1−ᾱ_t) / (2·√ᾱ_t) for every t (float64, length T): the Gaussian noise level, in
    [0, 1] image units, of ``y = (x_t/√ᾱ_t + 1)/2``."""
    ab = schedule.alphas_cumprod.double()
    return (1 - ab).sqrt() / (2 * ab.sqrt())


def t_range_for_sigma(schedule: NoiseSchedule, sigma_min: float, sigma_max: float) -> tuple[int, int]:
    """The timesteps ``(t_lo, t_hi)`` whose σ_t (:func:`noise_level`) lies in
    ``[sigma_min, sigma_max]`` (σ_t grows with t). ``ValueError`` when no timestep does."""
    sigma = noise_level(schedule)
    tol = 1e-9
    inside = ((sigma >= sigma_min - tol) & (sigma <= sigma_max + tol)).nonzero().flatten()
    if inside.numel() == 0:
        raise ValueError(f"no timestep of this schedule has a noise level σ_t in [{sigma_min:.4g}, "
                         f"{sigma_max:.4g}] (σ_t runs from {float(sigma[0]):.3g} to {float(sigma[-1]):.3g})")
    return int(inside[0]), int(inside[-1])


class DenoiserPrior(DiffusionPrior):
    """A frozen Gaussian denoiser ``D(y, σ)`` (images in [0, 1], σ in [0, 1] units) used as a
    diffusion prior: ``prior(x_t, t)`` returns ε̂ by Tweedie (module docstring) and the output
    of ``hspace_layer`` as h-space. Everything that takes a :class:`DiffusionPrior` takes it:
    :class:`~diffloss.loss.DiffLoss`, the trainer's ``prior=``, ``balance_gamma``, the precision
    rule, :meth:`compile_unet` (which compiles the denoiser, :attr:`network`).

    Args:
        denoiser: a module called as ``denoiser(y, sigma)`` with ``y`` B×3×H×W and ``sigma``
            B×1×1×1 (both in [0, 1] units), returning the denoised image B×3×H×W.
        sigma_max, sigma_min: the noise levels it was trained on, in [0, 1] units (FFDNet:
            0 to 75/255). They fix :attr:`valid_t_range`.
        hspace_layer: the name (``denoiser.named_modules()``) of the layer whose output is h.
        schedule: the variance-preserving schedule DiffLoss noises with (default: DDPM's
            linear 1e-4..0.02, T = 1000, as every pixel prior here).
        sample_size: the side DiffLoss crops to by default (the denoiser is fully convolutional;
            this is a size well above its receptive field, not a training resolution).
        downsampling: image sides must be multiples of this (FFDNet: 2, its pixel unshuffle).
    """

    def __init__(self, denoiser: nn.Module, *, sigma_max: float, hspace_layer: str,
                 sigma_min: float = 0.0, schedule: NoiseSchedule | None = None,
                 sample_size: int = 64, downsampling: int = 1) -> None:
        nn.Module.__init__(self)  # not DiffusionPrior's: there is no U-Net to wrap
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"denoiser must be a torch.nn.Module called as denoiser(y, sigma), "
                            f"got {type(denoiser).__name__}")
        if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 <= sigma_min < sigma_max):
            raise ValueError(f"the denoiser's noise levels must satisfy 0 <= sigma_min < sigma_max "
                             f"(in [0, 1] units), got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
        layers = dict(denoiser.named_modules())
        if hspace_layer not in layers or hspace_layer == "":
            names = [n for n in layers if n][:12]
            raise ValueError(f"hspace_layer {hspace_layer!r} is not a layer of the denoiser; its layers "
                             f"include: {', '.join(names)}")
        self.denoiser = denoiser
        self.schedule = schedule if schedule is not None else NoiseSchedule.linear()
        self.prediction_type = "epsilon"
        self.source: str | None = None
        self.vae = None
        self.register_buffer("encoder_hidden_states", None, persistent=False)
        self.register_buffer("text_embeds", None, persistent=False)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.hspace_layer = hspace_layer
        self._valid = t_range_for_sigma(self.schedule, self.sigma_min, self.sigma_max)
        self._sample_size, self._downsampling = int(sample_size), int(downsampling)
        self._freeze(layers[hspace_layer])

    # ------------------------------------------------------------------ what differs from a U-Net
    @property
    def network(self) -> nn.Module:
        """The frozen network: the denoiser."""
        return self.denoiser

    @property
    def valid_t_range(self) -> tuple[int, int]:
        """The timesteps whose noise level σ_t lies in the denoiser's ``[sigma_min, sigma_max]``."""
        return self._valid

    @property
    def unet_downsampling(self) -> int:
        return self._downsampling

    @property
    def unet_sample_size(self) -> int:
        return self._sample_size

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def learned_variance(self) -> bool:
        return False

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    def extra_repr(self) -> str:
        return (f"sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}], valid t={self._valid}, "
                f"hspace_layer={self.hspace_layer!r}")

    # ------------------------------------------------------------------ checks and calls
    def check_input(self, xt: Tensor, t: Tensor) -> Tensor:
        """As :meth:`DiffusionPrior.check_input`, and every t within :attr:`valid_t_range`."""
        t = super().check_input(xt, t)
        lo, hi = self._valid
        if t.numel() and t.device.type == "cpu" and (int(t.min()) < lo or int(t.max()) > hi):
            raise ValueError(
                f"t in [{int(t.min())}, {int(t.max())}] is outside this denoiser's range: it was trained "
                f"for noise levels σ ≤ {self.sigma_max * 255:.4g}/255, which are timesteps {lo}..{hi} of "
                f"the schedule (σ_t = √(1−ᾱ_t)/(2√ᾱ_t)). Use DiffLoss(t_range=({lo}, {hi})) or narrower.")
        return t

    def _denoise(self, xt: Tensor, t: Tensor, compiled: bool) -> tuple[Tensor, Tensor]:
        """(x̂_0 in [-1, 1], √ᾱ_t, √(1−ᾱ_t)) pieces: y and σ_t from x_t, then D(y, σ_t)."""
        abar = self.schedule.extract("alphas_cumprod", t, xt)
        sqrt_ab, sqrt_1mab = abar.sqrt(), (1 - abar).sqrt()
        y = (xt / sqrt_ab + 1) / 2                          # y = x_0' + σ_t·ε, in [0, 1] units
        sigma = sqrt_1mab / (2 * sqrt_ab)                   # σ_t = √(1−ᾱ_t) / (2√ᾱ_t)
        net = self._compiled[0] if compiled and self._compiled else self.denoiser
        x0 = 2 * net(y, sigma) - 1                          # x̂_0 = 2·D(y, σ_t) − 1
        return x0, sqrt_ab, sqrt_1mab

    def forward(self, xt: Tensor, t: Tensor, *, compiled: bool = False) -> PriorOutput:
        """ε̂(x_t, t) = (x_t − √ᾱ_t·x̂_0)/√(1−ᾱ_t) and h(x_t, t) from ONE denoiser call."""
        t = self.check_input(xt, t)
        self._captured = []
        try:
            x0, sqrt_ab, sqrt_1mab = self._denoise(xt, to_device(t, xt.device), compiled)
            hspace = self._captured[0]
        finally:
            self._captured = None
        eps = (xt - sqrt_ab * x0) / sqrt_1mab                # ε̂ by the forward process, seed Eq. 2
        return PriorOutput(eps=eps, hspace=hspace)

    def hspace(self, xt: Tensor, t: Tensor) -> Tensor:
        """h(x_t, t) only: the denoiser runs up to ``hspace_layer`` and stops there."""
        t = self.check_input(xt, t)
        self._stop_after_mid = True
        try:
            self._denoise(xt, to_device(t, xt.device), compiled=False)
        except _StopAfterMidBlock as stop:
            return stop.hspace
        finally:
            self._stop_after_mid = False
        raise RuntimeError("the denoiser returned without running its h-space layer")  # pragma: no cover

    def save_pretrained(self, folder: Any) -> None:
        raise NotImplementedError(
            "a denoiser prior is not saved as a diffusers folder: save its network's state_dict, "
            "or name it (TrainConfig.prior='ffdnet') so that a run can load it again")


NAMED_PRIORS["denoiser"] = DenoiserPrior  # DiffusionPrior.from_denoiser
