"""DiffLoss (Tan et al., ACCV 2024): a frozen diffusion prior as a training constraint.

With the restored image z = g(y) and the ground truth x (both mapped to [-1, 1]), one shared
noise ε ~ N(0, I) and one shared timestep t per sample (seed Eq. 2):

    z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε,        x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε

    L_nat = MSE(ε_θ(z_t, t), ε_θ(x_t, t))           naturalness, noise-prediction space
    L_sem = MSE(h(z_t, t),  h(x_t, t))              semantics, h-space (U-Net middle block)
    L_DiffLoss = nat_weight·L_nat + λ·L_sem
    L_total    = fidelity(z, x) + γ·L_DiffLoss      (:func:`restoration_loss`)

With a latent prior (Stable Diffusion class) both images are first encoded by its frozen VAE,
z ↦ s·μ_φ(2z−1) (:meth:`~diffloss.priors.DiffusionPrior.encode`), and everything above happens on
the latents; a v- or x̂_0-predicting U-Net's output is turned into ε first. The gradient of L_nat
and L_sem flows *through the frozen U-Net* (and VAE encoder) into the restoration network.
The authors' released code runs both U-Net calls under ``torch.no_grad()``, which makes both
terms constants: there only the pixel loss trains (see :class:`NoGradDiffLoss` and chapter 03).
"""

from __future__ import annotations

import contextlib
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import to_device
from .precision import autocast_dtype
from .priors import DiffusionPrior

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


def check_weight(name: str, value: Any) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name``: a loss weight must be a real
    number, finite (not NaN or ±inf) and ≥ 0 (a negative weight would maximise its term)."""
    if isinstance(value, bool):
        ok = False
    else:
        try:
            value = float(value)
            ok = math.isfinite(value) and value >= 0
        except (TypeError, ValueError, RuntimeError):
            ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_pair(restored: Tensor, target: Tensor, channels: int | None = None) -> None:
    """Shape checks shared by every loss (no device synchronisation): both are floating-point
    B×C×H×W tensors of the *same* shape (no silent broadcasting of a 1-channel or 1-image
    target), on one device, with B, H, W ≥ 1 (an empty batch has no mean), and C = ``channels``
    when given. Raises ``ValueError`` saying which argument is wrong."""
    what = "B×3×H×W" if channels == 3 else "B×C×H×W"
    for name, x in (("restored", restored), ("target", target)):
        if not isinstance(x, Tensor) or x.ndim != 4 or (channels is not None and x.shape[1] != channels):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a {what} image tensor in [0, 1], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point image in [0, 1], got dtype {x.dtype} "
                             "(for 8-bit images use x.float() / 255)")
    if restored.shape != target.shape:
        raise ValueError(
            f"restored {tuple(restored.shape)} and target {tuple(target.shape)} must have the same "
            "shape (they are not broadcast)"
        )
    if restored.numel() == 0:
        raise ValueError(f"restored and target are empty ({tuple(restored.shape)}): a loss needs a batch "
                         "of at least one image with H, W >= 1")
    if restored.device != target.device:
        raise ValueError(f"restored is on {restored.device} but target on {target.device}; "
                         "move both to one device")


def check_images(restored: Tensor, target: Tensor) -> None:
    """Clear errors for what callers get wrong: shapes (:func:`check_pair` with 3 channels),
    non-finite values, the value range."""
    check_pair(restored, target, channels=3)
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
    """DiffLoss with a frozen :class:`~diffloss.priors.DiffusionPrior` (pixel or latent).

    Args:
        prior: the frozen diffusion prior (its parameters never receive gradients).
        lambda_sem: λ, weight of the h-space term (the authors' code: 1e-3 relative to L_nat).
        nat_weight: weight of the ε-space term; 0 runs only the U-Net's down path (``prior.hspace``).
        t_range: inclusive ``(t_min, t_max)`` for the uniform per-sample t, integers with
            ``0 <= t_min <= t_max <= T-1``; default all T steps.
        prior_size: side of the square region shown to the prior, in pixels (also for latent
            priors), a positive multiple of the prior's downsampling factor (U-Net × VAE);
            default (``None``) its native size (512 for Stable Diffusion 1.5).
        size_policy: how images that are larger than ``prior_size`` (or whose sides are not
            multiples of the U-Net's downsampling factor) are brought to the prior, identically for
            both images: ``"crop"`` (default) takes one aligned random ``prior_size`` crop per sample
            from the same place in ``restored`` and ``target``; ``"resize"`` resizes both
            (bilinear, antialiased) to ``prior_size``×``prior_size``.
        autocast: the prior's precision (:func:`diffloss.precision.autocast_dtype`): ``None``
            (default) bf16 autocast on a CUDA card with bf16 hardware, fp16 on an older one
            (T4, V100), float32 on the CPU; ``False``/``"no"``: float32; ``"bf16"``, ``"fp16"`` or a
            dtype: that one. In fp16 the first call checks the prior's outputs: if they overflow,
            the prior falls back to float32 with one warning.
        channels_last: run the prior in channels-last memory format (default True: on the CPU its
            convolutions are about 10 % faster so, on an H100 within the spread of eager timings).
        check_values: check at each call that the images are finite and in [0, 1] (default).
            Those checks read values back from the device, a host–device synchronisation per
            call; the trainer, whose images cannot be out of range (its prior input is clamped)
            and which checks the loss for NaN itself, turns them off (``False``).

    Checked at construction (``ValueError`` naming the argument and its valid range): the
    weights are finite and ≥ 0 and not both 0, ``t_range`` and ``prior_size`` as above.
    At each call: the images (:func:`check_images`), and their size against the prior's. The
    U-Net was trained at ``prior.sample_size``; a region of less than half that side (after
    the size policy) is out of its training distribution, so a ``UserWarning`` naming both
    sizes is issued once per ``DiffLoss``; a side smaller than the downsampling factor cannot
    go through the U-Net at all and is a ``ValueError``.
    """

    def __init__(self, prior: DiffusionPrior, lambda_sem: float = 1e-3, nat_weight: float = 1.0,
                 t_range: tuple[int, int] | None = None, prior_size: int | None = None,
                 size_policy: str = "crop", autocast: bool | str | torch.dtype | None = None,
                 channels_last: bool | None = None, check_values: bool = True) -> None:
        super().__init__()
        if not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a diffloss.DiffusionPrior, got {type(prior).__name__}")
        lambda_sem = check_weight("lambda_sem", lambda_sem)
        nat_weight = check_weight("nat_weight", nat_weight)
        if lambda_sem == 0 and nat_weight == 0:
            raise ValueError("lambda_sem and nat_weight are both 0: DiffLoss would be a constant 0")
        if size_policy not in ("crop", "resize"):
            raise ValueError(f"size_policy must be 'crop' or 'resize', got {size_policy!r}")
        T = prior.schedule.T
        valid = prior.valid_t_range
        if t_range is None:
            t_min, t_max = valid
        else:
            try:
                t_min, t_max = (_as_int(v) for v in t_range)
            except (TypeError, ValueError):
                t_min, t_max = -1, -1  # reported below
            if not 0 <= t_min <= t_max <= T - 1:
                raise ValueError(f"t_range must be two integers (t_min, t_max) with 0 <= t_min <= t_max "
                                 f"<= {T - 1} (the prior has T = {T} steps), got {t_range!r}")
            if not valid[0] <= t_min <= t_max <= valid[1]:
                raise ValueError(f"t_range {t_range!r} goes beyond the timesteps this prior knows, "
                                 f"{valid[0]}..{valid[1]} (a denoiser prior knows only its training "
                                 f"noise levels): use t_range=({valid[0]}, {valid[1]}) or narrower")
        f = prior.downsampling_factor
        size = prior.sample_size if prior_size is None else _as_int(prior_size, -1)
        if size < f or size % f:
            raise ValueError(f"prior_size must be a positive multiple of {f} (the U-Net's downsampling "
                             f"factor), or None for the prior's native {prior.sample_size}; got {prior_size!r}")
        self.prior = prior
        self.lambda_sem = lambda_sem
        self.nat_weight = nat_weight
        self.t_range = (t_min, t_max)
        self.prior_size = size
        self.size_policy = size_policy
        autocast_dtype("cpu", autocast)  # a bad value: a ValueError now, not at the first call
        self.autocast = autocast
        self._fp16_checked = False  # fp16: the first call's outputs are checked for overflow
        self.channels_last = channels_last
        self.check_values = bool(check_values)
        self._warned_small = False

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
            raise ValueError(
                f"images of {h}×{w} are smaller than the prior's downsampling factor {f}: the U-Net "
                f"cannot process them (its native size is {self.prior.sample_size}×{self.prior.sample_size}); "
                "use larger crops, or size_policy='resize'"
            )
        ys = torch.randint(0, h - ch + 1, (restored.shape[0],), generator=generator).tolist()
        xs = torch.randint(0, w - cw + 1, (restored.shape[0],), generator=generator).tolist()

        def crop(x: Tensor) -> Tensor:
            return torch.stack([x[i, :, y:y + ch, xx:xx + cw] for i, (y, xx) in enumerate(zip(ys, xs))])

        return crop(restored), crop(target)

    def autocast_dtype(self, device: torch.device | str) -> torch.dtype | None:
        """The dtype the prior runs in on ``device`` (``None``: float32)."""
        return autocast_dtype(device, self.autocast)

    def _context(self, device: torch.device):
        dtype = self.autocast_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def _prepare(self, x: Tensor) -> Tensor:
        if self.channels_last is False:
            return x
        if not _is_channels_last(self.prior.network):
            self.prior.network.to(memory_format=torch.channels_last)
        return x.contiguous(memory_format=torch.channels_last)

    def _encode(self, images: Tensor) -> Tensor:
        if not self.prior.latent:
            return self.prior.encode(images)
        with self._context(images.device):
            return self.prior.encode(images).to(self.prior.dtype)

    def _branch(self, xt: Tensor, t: Tensor) -> tuple[Tensor | None, Tensor]:
        with self._context(xt.device):
            if self.nat_weight == 0:
                return None, _at_least_fp32(self.prior.hspace(xt, t))
            out = self.prior(xt, t, compiled=True)  # the compiled U-Net, if compile_unet() was called
            return _at_least_fp32(out.eps), _at_least_fp32(out.hspace)

    # ------------------------------------------------------------------ forward
    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> DiffLossOutput:
        """DiffLoss of ``restored`` (with gradients) against ``target`` (constant); both in [0, 1].

        ``generator`` (a CPU ``torch.Generator``) makes t, ε and the crop reproducible.
        """
        if isinstance(restored, Tensor) and restored.device != self.prior.device:
            raise ValueError(f"the images are on {restored.device} but the prior on {self.prior.device}; "
                             "move the loss with diffloss.to(device)")
        if self.check_values:
            check_images(restored, target)
        else:
            check_pair(restored, target, channels=3)
        given, drawn = (restored, target), generator.get_state() if generator is not None else None
        restored, target = self.fit_to_prior(restored, target, generator)
        self._warn_if_small(*restored.shape[-2:])
        b, device = restored.shape[0], restored.device
        # t and ε are drawn on the CPU generator (the same on every device) and copied without a
        # host sync; t stays on the CPU for the schedule's and the prior's range checks.
        t = self.sample_t(b, generator)
        prior = self.prior
        dtype = prior.dtype  # float32 normally (bf16 comes from autocast), float64 for gradcheck
        noise = to_device(torch.randn(prior.space_shape(restored.shape), generator=generator,
                                      dtype=torch.float32), device).to(dtype)
        schedule = prior.schedule
        # The ground-truth branch is a constant target: no autograd graph, half the memory.
        # prior.encode: x ↦ 2x−1 (pixel prior) or the VAE's scaled latent mean (latent prior).
        with torch.no_grad():
            x_t = self._prepare(schedule.q_sample(self._encode(target.to(dtype)), t, noise))
            eps_x, h_x = self._branch(x_t, t)
        # The restored branch keeps its graph: gradients flow through the frozen U-Net (and the
        # frozen VAE encoder of a latent prior) to z.
        z_t = self._prepare(schedule.q_sample(self._encode(restored.to(dtype)), t, noise))
        eps_z, h_z = self._branch(z_t, t)
        if not self._fp16_checked and self.autocast_dtype(device) == torch.float16:
            self._fp16_checked = True  # one host sync, at the first call only
            if not all(bool(torch.isfinite(v).all()) for v in (eps_x, h_x, eps_z, h_z) if v is not None):
                warnings.warn("the prior's outputs overflow in float16 (inf/NaN at the first call): "
                              "it runs in float32 from now on (DiffLoss(autocast=False))", stacklevel=2)
                self.autocast = False
                if generator is not None:
                    generator.set_state(drawn)  # the same t, ε and crop, in float32
                return self.forward(*given, generator=generator)
        sem = F.mse_loss(h_z, h_x)
        nat = F.mse_loss(eps_z, eps_x) if eps_z is not None else sem.new_zeros(())
        loss = self.nat_weight * nat + self.lambda_sem * sem
        return DiffLossOutput(loss=loss, nat=nat, sem=sem, t=to_device(t, device))


    def _warn_if_small(self, h: int, w: int) -> None:
        native = self.prior.sample_size
        if 2 * min(h, w) < native and not self._warned_small:
            self._warned_small = True
            warnings.warn(
                f"DiffLoss shows the prior {h}×{w} images, less than half its native "
                f"{native}×{native}: a diffusion U-Net's ε and h-space are out of distribution at "
                "that scale, so the loss may mean little. Use crops of at least "
                f"{native // 2}×{native // 2}, or a prior trained at this size. (Warned once per "
                "DiffLoss.)",
                UserWarning, stacklevel=2,
            )


def _as_int(value: Any, default: int | None = None) -> int:
    """``value`` as an int if it is an integer (int, NumPy or 0-d integer tensor; not bool, not a
    float); else ``default``, or ``TypeError`` when there is none."""
    try:
        if isinstance(value, bool):
            raise TypeError("bool")
        return operator.index(value)
    except TypeError:
        if default is None:
            raise
        return default


def _is_channels_last(unet: nn.Module) -> bool:
    """Whether the U-Net's first 4-D weight is stored channels-last (then all of them are)."""
    w = next((p for p in unet.parameters() if p.ndim == 4), None)
    return w is None or w.is_contiguous(memory_format=torch.channels_last)


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
    """The pixel fidelity term: ``l1`` (the seed paper's baseline) or ``mse`` (the authors' code).

    ``restored`` and ``target`` must be B×C×H×W of one shape, B ≥ 1 (:func:`check_pair`)."""
    check_pair(restored, target)
    if kind == "l1":
        return F.l1_loss(restored, target)
    if kind == "mse":
        return F.mse_loss(restored, target)
    raise ValueError(f"fidelity must be 'l1' or 'mse', got {kind!r}")


def restoration_loss(restored: Tensor, target: Tensor, fidelity: str = "l1", gamma: float = 1e-3,
                     diffloss: DiffLoss | None = None,
                     generator: torch.Generator | None = None) -> RestorationLossOutput:
    """L_total = fidelity(z, x) + γ·L_DiffLoss (seed Eq. 8); without ``diffloss``, fidelity only.

    ``gamma`` must be finite and ≥ 0; the images are checked by :func:`check_pair` and
    :func:`check_images` (3 channels in [0, 1], finite) with or without ``diffloss``, so that the
    fidelity-only path refuses what the DiffLoss path refuses."""
    gamma = check_weight("gamma", gamma)
    fid = fidelity_loss(restored, target, fidelity)
    if diffloss is None or gamma == 0:
        check_images(restored, target)  # (``diffloss`` checks them itself)
        return RestorationLossOutput(total=fid, fidelity=fid, diffloss=None)
    out = diffloss(restored, target, generator=generator)
    return RestorationLossOutput(total=fid + gamma * out.loss, fidelity=fid, diffloss=out)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())
