"""DiffLoss (Tan et al., ACCV 2024): a frozen diffusion prior as a training constraint.

With the restored image z = g(y) and the ground truth x (both mapped to [-1, 1]), one shared
noise ε ~ N(0, I) and one shared timestep t per sample (seed Eq. 2):

    z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε,        x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε

    L_nat = MSE(ε_θ(z_t, t), ε_θ(x_t, t))           naturalness, noise-prediction space
    L_sem = MSE(h(z_t, t),  h(x_t, t))              semantics, h-space (U-Net middle block)
    L_DiffLoss = nat_weight·L_nat + λ·L_sem
    L_total    = fidelity(z, x) + γ·L_DiffLoss      (:func:`restoration_loss`)

The gradient of L_nat and L_sem flows *through the frozen U-Net* into the restoration network.
The authors' released code runs both U-Net calls under ``torch.no_grad()``, which makes both
terms constants: there only the pixel loss trains (see :class:`NoGradDiffLoss` and chapter 03).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prior import DiffusionPrior

#: Values beyond this margin outside [0, 1] are treated as a caller error (wrong range).
RANGE_MARGIN = 0.5


@dataclass
class DiffLossOutput:
    """``loss = nat_weight·nat + lambda_sem·sem``; ``t`` are the timesteps drawn per sample."""

    loss: Tensor
    nat: Tensor
    sem: Tensor
    t: Tensor


@dataclass
class RestorationLossOutput:
    """``total = fidelity + gamma·diffloss.loss`` (``diffloss`` is None without a prior)."""

    total: Tensor
    fidelity: Tensor
    diffloss: DiffLossOutput | None = None


def check_images(restored: Tensor, target: Tensor) -> None:
    """Clear errors for what callers get wrong: shapes, non-finite values, the value range."""
    for name, x in (("restored", restored), ("target", target)):
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a B×3×H×W image tensor in [0, 1], got {shape}")
    if restored.shape != target.shape:
        raise ValueError(
            f"restored {tuple(restored.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    restored, target = restored.detach(), target.detach()
    for name, x in (("restored", restored), ("target", target)):
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); check the network/data")
    for name, x in (("restored", restored), ("target", target)):
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_MARGIN or hi > 1 + RANGE_MARGIN:
            raise ValueError(
                f"{name} has values in [{lo:.3g}, {hi:.3g}], but images in [0, 1] are expected "
                "(DiffLoss maps them to the prior's [-1, 1] itself). Did you pass [-1, 1] or 0..255 images?"
            )


class DiffLoss(nn.Module):
    """DiffLoss with a frozen :class:`~diffloss.prior.DiffusionPrior`.

    Args:
        prior: the frozen diffusion prior (its parameters never receive gradients).
        lambda_sem: λ, weight of the h-space term (the authors' code: 1e-3 relative to L_nat).
        nat_weight: weight of the ε-space term; 0 runs only the U-Net's down path (``prior.hspace``).
        t_range: inclusive ``(t_min, t_max)`` for the uniform per-sample t; default all T steps.
        prior_size: side of the square region shown to the prior; default its native size.
        size_policy: how images that are larger than ``prior_size`` (or whose sides are not
            multiples of the U-Net's downsampling factor) are brought to the prior, identically for
            both images: ``"crop"`` (default) takes one aligned random ``prior_size`` crop per sample
            from the same place in ``restored`` and ``target``; ``"resize"`` resizes both
            (bilinear, antialiased) to ``prior_size``×``prior_size``.
        autocast: run the prior in bfloat16 autocast on CUDA (default True there; CPU stays float32).
        channels_last: use channels-last memory format for the prior on CUDA (default True there).
    """

    def __init__(self, prior: DiffusionPrior, lambda_sem: float = 1e-3, nat_weight: float = 1.0,
                 t_range: tuple[int, int] | None = None, prior_size: int | None = None,
                 size_policy: str = "crop", autocast: bool | None = None,
                 channels_last: bool | None = None) -> None:
        super().__init__()
        if not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a diffloss.DiffusionPrior, got {type(prior).__name__}")
        if lambda_sem < 0 or nat_weight < 0 or (lambda_sem == 0 and nat_weight == 0):
            raise ValueError("lambda_sem and nat_weight must be >= 0 and not both 0")
        if size_policy not in ("crop", "resize"):
            raise ValueError(f"size_policy must be 'crop' or 'resize', got {size_policy!r}")
        T = prior.schedule.T
        t_min, t_max = (0, T - 1) if t_range is None else (int(t_range[0]), int(t_range[1]))
        if not 0 <= t_min <= t_max <= T - 1:
            raise ValueError(f"t_range must satisfy 0 <= t_min <= t_max <= {T - 1}, got {t_range}")
        size = int(prior_size or prior.sample_size)
        f = prior.downsampling_factor
        if size % f:
            raise ValueError(f"prior_size {size} must be a multiple of the U-Net's downsampling factor {f}")
        self.prior = prior
        self.lambda_sem = float(lambda_sem)
        self.nat_weight = float(nat_weight)
        self.t_range = (t_min, t_max)
        self.prior_size = size
        self.size_policy = size_policy
        self.autocast = autocast
        self.channels_last = channels_last

    def extra_repr(self) -> str:
        return (f"lambda_sem={self.lambda_sem}, nat_weight={self.nat_weight}, t_range={self.t_range}, "
                f"prior_size={self.prior_size}, size_policy={self.size_policy!r}")

    # ------------------------------------------------------------------ pieces
    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """One t per sample, uniform over ``t_range`` (CPU LongTensor)."""
        lo, hi = self.t_range
        return torch.randint(lo, hi + 1, (batch,), generator=generator)

    def fit_to_prior(self, restored: Tensor, target: Tensor,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Apply the size policy to *both* images identically (same crop window per sample)."""
        h, w = restored.shape[-2:]
        s, f = self.prior_size, self.prior.downsampling_factor
        if h <= s and w <= s and h % f == 0 and w % f == 0:
            return restored, target
        if self.size_policy == "resize":
            def resize(x: Tensor) -> Tensor:
                return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            return resize(restored), resize(target)
        ch, cw = min(s, h // f * f), min(s, w // f * f)
        if ch == 0 or cw == 0:
            raise ValueError(f"images of {h}×{w} are smaller than the prior's downsampling factor {f}")
        ys = torch.randint(0, h - ch + 1, (restored.shape[0],), generator=generator).tolist()
        xs = torch.randint(0, w - cw + 1, (restored.shape[0],), generator=generator).tolist()

        def crop(x: Tensor) -> Tensor:
            return torch.stack([x[i, :, y:y + ch, xx:xx + cw] for i, (y, xx) in enumerate(zip(ys, xs))])

        return crop(restored), crop(target)

    def _context(self, device: torch.device):
        use = self.autocast if self.autocast is not None else device.type == "cuda"
        if use and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _prepare(self, x: Tensor) -> Tensor:
        use = self.channels_last if self.channels_last is not None else x.device.type == "cuda"
        if use:
            self.prior.unet.to(memory_format=torch.channels_last)
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _branch(self, xt: Tensor, t: Tensor) -> tuple[Tensor | None, Tensor]:
        with self._context(xt.device):
            if self.nat_weight == 0:
                return None, _at_least_fp32(self.prior.hspace(xt, t))
            out = self.prior(xt, t)
            return _at_least_fp32(out.eps), _at_least_fp32(out.hspace)

    # ------------------------------------------------------------------ forward
    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> DiffLossOutput:
        """DiffLoss of ``restored`` (with gradients) against ``target`` (constant); both in [0, 1].

        ``generator`` (a CPU ``torch.Generator``) makes t, ε and the crop reproducible.
        """
        check_images(restored, target)
        restored, target = self.fit_to_prior(restored, target, generator)
        b = restored.shape[0]
        t = self.sample_t(b, generator).to(restored.device)
        dtype = self.prior.dtype  # float32 normally (bf16 comes from autocast), float64 for gradcheck
        noise = torch.randn(restored.shape, generator=generator, dtype=torch.float32).to(restored.device, dtype)
        schedule = self.prior.schedule
        # The ground-truth branch is a constant target: no autograd graph, half the memory.
        with torch.no_grad():
            x_t = self._prepare(schedule.q_sample(target.to(dtype) * 2 - 1, t, noise))
            eps_x, h_x = self._branch(x_t, t)
        # The restored branch keeps its graph: gradients flow through the frozen U-Net to z.
        z_t = self._prepare(schedule.q_sample(restored.to(dtype) * 2 - 1, t, noise))
        eps_z, h_z = self._branch(z_t, t)
        sem = F.mse_loss(h_z, h_x)
        nat = F.mse_loss(eps_z, eps_x) if eps_z is not None else sem.new_zeros(())
        loss = self.nat_weight * nat + self.lambda_sem * sem
        return DiffLossOutput(loss=loss, nat=nat, sem=sem, t=t)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class NoGradDiffLoss(DiffLoss):
    """DiffLoss as the authors' released code computes it: both U-Net calls under
    ``torch.no_grad()``. The value is the same, but it is a constant with respect to the
    restored image, so ∂L/∂z = 0 and only the pixel loss trains the network. Shipped only to
    demonstrate that flaw (chapter 03 and the tests); do not train with it."""

    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> DiffLossOutput:
        with torch.no_grad():
            out = super().forward(restored, target, generator)
        # Re-attach to the graph as the authors' loss does (a constant added to the pixel loss).
        zero = (restored * 0).sum()
        return DiffLossOutput(loss=out.loss + zero, nat=out.nat + zero, sem=out.sem + zero, t=out.t)


def fidelity_loss(restored: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """The pixel fidelity term: ``l1`` (the seed paper's baseline) or ``mse`` (the authors' code)."""
    if kind == "l1":
        return F.l1_loss(restored, target)
    if kind == "mse":
        return F.mse_loss(restored, target)
    raise ValueError(f"fidelity must be 'l1' or 'mse', got {kind!r}")


def restoration_loss(restored: Tensor, target: Tensor, fidelity: str = "l1", gamma: float = 1e-3,
                     diffloss: DiffLoss | None = None,
                     generator: torch.Generator | None = None) -> RestorationLossOutput:
    """L_total = fidelity(z, x) + γ·L_DiffLoss (seed Eq. 8); without ``diffloss``, fidelity only."""
    fid = fidelity_loss(restored, target, fidelity)
    if diffloss is None or gamma == 0:
        return RestorationLossOutput(total=fid, fidelity=fid, diffloss=None)
    out = diffloss(restored, target, generator=generator)
    return RestorationLossOutput(total=fid + gamma * out.loss, fidelity=fid, diffloss=out)
