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
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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
        if t_range is None:
            t_min, t_max = 0, T - 1
        else:
            try:
                t_min, t_max = (_as_int(v) for v in t_range)
            except (TypeError, ValueError):
                t_min, t_max = -1, -1  # reported below
            if not 0 <= t_min <= t_max <= T - 1:
                raise ValueError(f"t_range must be two integers (t_min, t_max) with 0 <= t_min <= t_max "
                                 f"<= {T - 1} (the prior has T = {T} steps), got {t_range!r}")
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
        if not _is_channels_last(self.prior.unet):
            self.prior.unet.to(memory_format=torch.channels_last)
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


# =============================================================================================
# The comparison losses of the seed's supplement, Section 3: perceptual (VGG16) and adversarial.
# =============================================================================================

#: Layers of torchvision's ``vgg16().features`` (indices of the ReLU outputs) used by
#: :class:`PerceptualLoss`, as in Johnson et al. 2016 and the seed's supplement (Eq. 5).
VGG16_LAYERS: dict[str, int] = {
    "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8,
    "relu3_1": 11, "relu3_2": 13, "relu3_3": 15,
    "relu4_1": 18, "relu4_2": 20, "relu4_3": 22,
}
#: VGG16's convolution widths ("configuration D"), "M" = 2×2 max-pooling (torchvision order).
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
#: ImageNet statistics the torchvision VGG16 weights expect (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's ``VGG16_Weights.IMAGENET1K_V1.url`` (the name carries the first 8 hex digits of
#: the file's SHA-256, which ``torch.hub`` checks after downloading).
VGG16_WEIGHTS_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: Set either to 1 and nothing is downloaded (the Makefile sets ``HF_HUB_OFFLINE=1`` for tests):
#: weights already in the torch hub cache are still used, missing ones are a clear error.
OFFLINE_VARS = ("DIFFLOSS_OFFLINE", "HF_HUB_OFFLINE")
#: The one line that fetches the weights into the torch hub cache (torchvision's own mechanism).
VGG16_FETCH_COMMAND = "python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\""


def offline_variable() -> str | None:
    """The name of the first of :data:`OFFLINE_VARS` set to a true value (1/true/yes/on), else ``None``."""
    for name in OFFLINE_VARS:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def _vgg16_missing_message(path: Path, reason: str) -> str:
    return (
        f"The ImageNet VGG16 weights (IMAGENET1K_V1) for PerceptualLoss are not available locally "
        f"(looked for {path}) and {reason}. Fetch them once, on a machine with internet access, with\n"
        f"    {VGG16_FETCH_COMMAND}\n"
        f"(it caches them at that path: the checkpoints/ folder of torch.hub.get_dir(); TORCH_HOME moves "
        f"it), or copy {path.name} from such a machine into {path.parent}. "
        "Pass weights=None to use random weights on purpose (tests; that is NOT the perceptual loss)."
    )


def vgg16_features(last: int) -> nn.Sequential:
    """The first ``last + 1`` modules of torchvision's ``vgg16().features`` (same indices, so the
    same ``features.<i>.weight`` keys), randomly initialised; without the 120 M-parameter
    classifier that ``torchvision.models.vgg16()`` would allocate."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(v)
        if len(layers) > last:
            break
    return nn.Sequential(*layers[:last + 1])


def vgg16_weights_path(url: str = VGG16_WEIGHTS_URL) -> Path:
    """Where torchvision caches ``VGG16_Weights.IMAGENET1K_V1`` (it may not exist):
    ``<torch.hub.get_dir()>/checkpoints/<file name of url>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def vgg16_weights_available() -> bool:
    """True when the ImageNet VGG16 weights are in the local torch hub cache (no download)."""
    return vgg16_weights_path().is_file()


def fetch_vgg16_weights(url: str = VGG16_WEIGHTS_URL, progress: bool = True) -> dict[str, Tensor]:
    """The state dict of torchvision's VGG16 at ``url``, the way torchvision gets it: from the torch
    hub cache (:func:`vgg16_weights_path`) when it is there, else downloaded once into that cache by
    ``torch.hub.load_state_dict_from_url(url, check_hash=True)`` (the file name's hash prefix is
    checked). With one of :data:`OFFLINE_VARS` set, or when the download fails (no network, an
    HTTP error, a wrong hash), a missing file is one clear ``FileNotFoundError`` naming the path
    and the command that fetches it."""
    path = vgg16_weights_path(url)
    if not path.is_file():
        var = offline_variable()
        if var is not None:
            raise FileNotFoundError(_vgg16_missing_message(
                path, f"downloads are off ({var}={os.environ[var]}; unset it to let PerceptualLoss "
                "download them)"))
    new_dirs = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        # torchvision's file is in the legacy (non-zip) format; weights only, on the CPU.
        return torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), map_location="cpu",
                                                  progress=progress, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        if path.is_file():  # the file is there: a problem reading it, not a download problem
            raise
        for folder in new_dirs:  # leave no empty cache folders behind a failed download
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise FileNotFoundError(_vgg16_missing_message(
            path, f"downloading them from {url} failed ({type(err).__name__}: {err})")) from err


class PerceptualLoss(nn.Module):
    """Perceptual (feature reconstruction) loss with a frozen VGG16 (supplement Eq. 5):

        L_per(z, x) = Σ_j 1/(C_j·H_j·W_j) · ‖φ_j(z) − φ_j(x)‖²₂

    φ_j = VGG16 activations at ``layers`` (default relu1_2, relu2_2, relu3_3), computed on
    ImageNet-normalised inputs ``(img − mean)/std`` from images in [0, 1]. Each term is the
    squared L2 distance divided by the feature map's size C_j·H_j·W_j, averaged over the batch
    (= ``F.mse_loss`` of the feature maps). The network is frozen (``requires_grad=False``, eval).

    Args:
        weights: ``"IMAGENET1K_V1"`` (default; torchvision's ImageNet weights, from the torch hub
            cache, downloaded into it the first time like ``torchvision.models.vgg16(weights=...)``
            does; offline (``DIFFLOSS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) or without network a clear
            ``FileNotFoundError`` says how to get them: :func:`fetch_vgg16_weights`) or ``None``:
            random weights, on purpose (tests; a random-feature *control*, not the perceptual loss).
        layers: names from :data:`VGG16_LAYERS`.
    """

    def __init__(self, weights: str | None = "IMAGENET1K_V1",
                 layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3")) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}; valid: {', '.join(VGG16_LAYERS)}")
        if weights not in (None, "IMAGENET1K_V1", "DEFAULT"):
            raise ValueError(f"weights must be 'IMAGENET1K_V1' or None, got {weights!r}")
        self.layers = tuple(layers)
        self.indices = tuple(VGG16_LAYERS[name] for name in layers)
        self.features = vgg16_features(max(self.indices))
        self.pretrained = weights is not None
        if self.pretrained:
            state = fetch_vgg16_weights()
            mine = self.features.state_dict()
            self.features.load_state_dict({k: state[f"features.{k}"] for k in mine})
        self.features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"layers={self.layers}, pretrained={self.pretrained}"

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The VGG stays in eval mode whatever the caller asks (it is frozen)."""
        super().train(mode)
        self.features.eval()
        return self

    def feature_maps(self, img: Tensor) -> list[Tensor]:
        """φ_j(img) for each chosen layer; ``img`` is B×3×H×W in [0, 1]."""
        h = (img - self.mean) / self.std
        out: list[Tensor] = []
        wanted = set(self.indices)
        for i, module in enumerate(self.features):
            h = module(h)
            if i in wanted:
                out.append(h)
        return [out[sorted(self.indices).index(i)] for i in self.indices]

    def forward(self, restored: Tensor, target: Tensor) -> Tensor:
        """L_per(restored, target) (supplement Eq. 5); gradients flow to ``restored`` only."""
        with torch.no_grad():
            target_feats = self.feature_maps(target)
        feats = self.feature_maps(restored)
        return sum((F.mse_loss(f, t) for f, t in zip(feats, target_feats)), restored.new_zeros(()))


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator (pix2pix, Isola et al. 2017): strided 4×4 convolutions with
    LeakyReLU(0.2), ending in one logit per overlapping patch (a 70×70 receptive field with the
    default 3 strided layers). Normalisation is instance norm (no running statistics, so the
    same inputs give the same outputs in train and eval mode).

    Args:
        channels: width of the first layer (64 in pix2pix); doubled per layer up to 8×.
        n_layers: strided layers after the first one.
    """

    def __init__(self, channels: int = 64, n_layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, n_layers + 1):
            c_out = channels * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride=stride, padding=1, bias=False),
                       nn.InstanceNorm2d(c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, img: Tensor) -> Tensor:
        """Patch logits B×1×h×w for images in [0, 1] (mapped to [-1, 1] inside)."""
        return self.net(img * 2 - 1)


class AdversarialLoss(nn.Module):
    """Adversarial loss with a PatchGAN discriminator D and its own Adam optimizer.

    Generator term (supplement Eq. 7, the non-saturating form): ``L_adv = −log D(z)``, averaged
    over patches and images, computed as ``BCEWithLogits(D(z), 1)``; D's parameters receive no
    gradient from it. Discriminator loss (standard GAN): ``½·[−log D(x) − log(1 − D(z))]`` =
    ``½·[BCE(D(x), 1) + BCE(D(z), 0)]`` with ``z`` detached, minimised by :meth:`discriminator_step`
    (the trainer calls it after each generator step: alternating updates).

    ``state_dict`` holds D's weights *and* its optimizer state (module extra state), so a
    checkpoint of this module resumes both.

    Args:
        discriminator: default :class:`PatchDiscriminator` ``(channels)``.
        lr, betas: D's Adam (2e-4, (0.5, 0.999) in pix2pix; the trainer passes its ``lr``).
    """

    def __init__(self, discriminator: nn.Module | None = None, channels: int = 64, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999)) -> None:
        super().__init__()
        self.discriminator = discriminator if discriminator is not None else PatchDiscriminator(channels)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)

    def generator_loss(self, restored: Tensor) -> Tensor:
        """−log D(z) (supplement Eq. 7); gradients reach ``restored`` but not D's parameters."""
        params = list(self.discriminator.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            logits = self.discriminator(restored)
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def discriminator_loss(self, restored: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"d_loss", "d_real", "d_fake"}``: D's loss and its mean probabilities D(x), D(z)."""
        real = self.discriminator(target)
        fake = self.discriminator(restored.detach())
        loss = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return {"d_loss": loss, "d_real": torch.sigmoid(real).mean().detach(),
                "d_fake": torch.sigmoid(fake).mean().detach()}

    def discriminator_step(self, restored: Tensor, target: Tensor,
                           check: Callable[[dict[str, float]], None] | None = None) -> dict[str, Tensor]:
        """One Adam step of D on ``(target: real, restored: fake)``; returns the detached parts.

        ``check(values)`` (optional) runs before the update and may raise (e.g. a non-finite loss):
        then D is left untouched. Under ``torch.distributed`` with several processes, D's
        gradients are averaged over the processes so every copy of D stays identical.
        """
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.discriminator_loss(restored, target)
        if check is not None:
            check({k: float(v.detach()) for k, v in parts.items()})
        parts["d_loss"].backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            world = torch.distributed.get_world_size()
            for p in self.discriminator.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in parts.items()}

    def forward(self, restored: Tensor, target: Tensor | None = None) -> Tensor:
        """The generator term −log D(z) (``target`` is unused; accepted for a common signature)."""
        return self.generator_loss(restored)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())
