"""The forward (noising) process of DDPM, written out for teaching.

Notation follows Ho et al. (2020) and the seed paper's supplement, Section 1:

* ``betas``            β_t, the variance added at step t                       (Eq. 1)
* ``alphas``           α_t = 1 − β_t
* ``alphas_cumprod``   ᾱ_t = ∏_{s≤t} α_s                                       (Eq. 2)
* ``alphas_cumprod_prev``  ᾱ_{t−1}, with ᾱ_{−1} = 1

Timesteps are 0-based indices ``t ∈ {0, …, T−1}`` exactly as in diffusers: index ``t``
means "after t+1 noising steps", so ``q_sample(x0, t)`` uses ``alphas_cumprod[t]`` and one
``q_step(x, t)`` applies ``betas[t]``.  Tables are kept in float64 and cast to the input's
dtype and device when used. Every formula is tested against diffusers' ``DDPMScheduler``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .device import to_device


class NoiseSchedule:
    """β_1..β_T and the derived tables of the DDPM forward process.

    Build one with :meth:`linear`, :meth:`cosine`, :meth:`from_betas` or
    :meth:`from_diffusers_config`.
    """

    def __init__(self, betas: Tensor, name: str = "custom") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError(f"betas must be a 1-D tensor with at least 2 entries, got {tuple(betas.shape)}")
        if not torch.all((betas > 0) & (betas < 1)):
            raise ValueError("every beta must lie in (0, 1)")
        self.name = name
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) (Ho et al. Eq. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0: the log is clipped to β̃_1 for t = 0, as in DDPM's reference code.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * torch.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * torch.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        )
        self._device_cache: dict[tuple[str, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """Ho et al.'s linear schedule: β_t evenly spaced from ``beta_start`` to ``beta_end``."""
        _check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal (2021) Eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2),
        β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999). diffusers calls it ``squaredcos_cap_v2``."""
        _check_T(T)

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64), name="cosine")

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        return cls(betas)

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        """The schedule described by a diffusers scheduler config (``scheduler_config.json``)."""
        T = int(config.get("num_train_timesteps", 1000))
        if config.get("trained_betas") is not None:
            return cls(torch.tensor(config["trained_betas"], dtype=torch.float64), name="trained")
        kind = config.get("beta_schedule", "linear")
        start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        if kind == "linear":
            return cls.linear(T, start, end)
        if kind == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float64) ** 2
            return cls(betas, name="scaled_linear")
        if kind == "squaredcos_cap_v2":
            return cls.cosine(T)
        raise ValueError(
            f"Unsupported beta_schedule {kind!r} in the scheduler config; "
            "supported: linear, scaled_linear, squaredcos_cap_v2 (or trained_betas)."
        )

    # ------------------------------------------------------------------ helpers
    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return int(self.betas.numel())

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule({self.name}, T={self.T}, beta[0]={self.betas[0].item():.3g}, "
            f"beta[T-1]={self.betas[-1].item():.3g})"
        )

    def check_t(self, t: Tensor, batch: int | None = None) -> Tensor:
        """Validate a per-sample timestep tensor; a clear ``ValueError`` says what is wrong."""
        if not isinstance(t, Tensor):
            raise ValueError(
                f"t must be a LongTensor of shape (B,), got {type(t).__name__}; "
                "use torch.full((B,), t, dtype=torch.long) for one timestep for the whole batch."
            )
        if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"t must hold integer timestep indices (LongTensor), got dtype {t.dtype}.")
        if t.ndim != 1:
            raise ValueError(f"t must have shape (B,), got shape {tuple(t.shape)}.")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"t has {t.shape[0]} entries but the batch has {batch} images: one t per image.")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(
                f"t out of range: found values in [{int(t.min())}, {int(t.max())}], "
                f"valid timesteps are 0..{self.T - 1} (T = {self.T})."
            )
        return t.long()

    def _table(self, name: str, device: torch.device) -> Tensor:
        key = (name, device)
        if key not in self._device_cache:
            self._device_cache[key] = getattr(self, name).to(device)
        return self._device_cache[key]

    def extract(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` cast to ``like``'s dtype/device, shaped (B, 1, 1, …) to broadcast."""
        t = self.check_t(t, like.shape[0])
        table = self._table(name, like.device)
        out = table[to_device(t, like.device)]
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return out.to(dtype).view(-1, *([1] * (like.ndim - 1)))

    @staticmethod
    def _check_noise(x: Tensor, noise: Tensor) -> None:
        if noise.shape != x.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)} but the image has shape {tuple(x.shape)}; "
                "they must match (use torch.randn_like(x))."
            )

    # ------------------------------------------------------------------ the process
    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step, seed Eq. (1): x_t = √(1−β_t)·x_{t−1} + √β_t·ε."""
        self._check_noise(x_prev, noise)
        beta = self.extract("betas", t, x_prev)
        return torch.sqrt(1 - beta) * x_prev + torch.sqrt(beta) * noise

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Closed-form q(x_t | x_0), seed Eq. (2): x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε."""
        self._check_noise(x0, noise)
        abar = self.extract("alphas_cumprod", t, x0)
        return torch.sqrt(abar) * x0 + torch.sqrt(1 - abar) * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0) (Ho et al. Eq. 6–7):

        μ̃_t = β_t√ᾱ_{t−1}/(1−ᾱ_t)·x_0 + (1−ᾱ_{t−1})√α_t/(1−ᾱ_t)·x_t,
        β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t.
        """
        if x0.shape != xt.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must have the same shape.")
        mean = self.extract("posterior_mean_coef1", t, xt) * x0 + self.extract("posterior_mean_coef2", t, xt) * xt
        var = self.extract("posterior_variance", t, xt).expand_as(xt)
        logvar = self.extract("posterior_log_variance_clipped", t, xt).expand_as(xt)
        return mean, var, logvar

    def predict_x0(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Invert Eq. (2) for x_0 given ε: x̂_0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t."""
        self._check_noise(xt, eps)
        abar = self.extract("alphas_cumprod", t, xt)
        return (xt - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t/(1−ᾱ_t) (float64, one value per entry of t)."""
        t = self.check_t(t)
        abar = self.alphas_cumprod[t.cpu()]
        return (abar / (1 - abar)).to(t.device)


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T!r}")
