"""Image quality metrics with paper-comparable definitions: PSNR and SSIM.

Both take ``pred`` and ``target`` as float tensors ``B × 3 × H × W`` (or one image ``3 × H × W``)
with values in ``[0, data_range]`` (``[0, 1]`` throughout this project), work on any device and
under ``torch.no_grad()``, and return a tensor: the mean over images (``reduction="mean"``) or
one value per image (``reduction="none"``, shape ``(B,)``; a 3-D input counts as ``B = 1``).
Inputs are *not* clamped or quantised: clamp network outputs to ``[0, 1]`` first (and round to
``k/255`` if you want to match evaluations that save 8-bit PNGs before scoring).

Which definition papers use, and how these functions relate
-----------------------------------------------------------
**Colour space.** Dehazing papers (MSBDN-DFF, Dense-Haze/NTIRE, DiffLoss on Dense-Haze) and most
low-light papers compute PSNR/SSIM on **RGB**, which is the default here. Super-resolution and
most deraining papers (Rain100H, Rain13K, following MATLAB evaluation scripts) use the **Y channel
of YCbCr** (ITU-R BT.601, ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` for RGB in
``[0, 1]``); pass ``y_channel=True`` for that. Y-channel PSNR is typically 1–2 dB higher than RGB
PSNR on the same images, so never compare numbers across the two.

**Averaging.** PSNR here is computed per image, from that image's MSE over all pixels and
channels, and then averaged over images (**mean of per-image PSNR**), which is what nearly all
restoration code does (including the DiffLoss and MSBDN evaluation loops). Some code instead
pools the MSE over the whole test set and converts once (``10·log10(1 / mean MSE)``); by Jensen's
inequality that is lower than or equal to the mean of per-image PSNRs. Averaging per-channel
PSNRs is a third variant, also different. With ``reduction="none"`` you get the per-image values
and can aggregate as you need.

**SSIM window.** ``ssim`` follows Wang et al. (2004): an 11 × 11 Gaussian window with
``σ = 1.5``, ``K1 = 0.01``, ``K2 = 0.03``, ``C1 = (K1·L)²``, ``C2 = (K2·L)²``, population (not
sample) variances, computed per channel and averaged over channels, averaged over the "valid"
region where the window fits inside the image (a border of 5 pixels is left out). This equals
scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=...)`` (tested to 1e-4). Note that
scikit-image's *defaults* (a 7 × 7 uniform window with sample covariance) give different, usually
lower, values; MATLAB's ``ssim`` uses the same Gaussian window but pads the border instead of
cropping it, and the original MATLAB ``ssim_index.m`` additionally downsamples large images; these
choices move SSIM by up to a few thousandths.

**Identical images.** PSNR of identical images is ``+inf`` (the MSE is 0), as in scikit-image;
a mean over images that includes one is ``+inf`` too — use ``reduction="none"`` and filter if
that can happen. SSIM of identical images is exactly 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "rgb_to_y"]

Reduction = Literal["mean", "none"]

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_SIGMA = 1.5
SSIM_WIN_SIZE = 11  # 2 * int(3.5 * sigma + 0.5) + 1, scikit-image's truncate = 3.5


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB in ``[0, 1]``, in ``[16/255, 235/255]`` (as MATLAB's ``rgb2ycbcr``).

    ``img`` is ``... × 3 × H × W``; returns ``... × 1 × H × W``.
    """
    if img.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects 3 channels, got shape {tuple(img.shape)}")
    r, g, b = img.unbind(dim=-3)
    y = (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    return y.unsqueeze(-3)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 where the backend supports it (CPU, CUDA), for agreement with scikit-image.
    return torch.float64 if x.device.type in ("cpu", "cuda") else torch.float32


def _prepare(
    pred: torch.Tensor, target: torch.Tensor, y_channel: bool, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    for label, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(
                f"{name}: {label} must be a floating-point tensor in [0, data_range], got "
                f"{t.dtype} (convert 8-bit images with .float() / 255)"
            )
        if t.dim() not in (3, 4):
            raise ValueError(
                f"{name}: {label} must be B×C×H×W or C×H×W, got shape {tuple(t.shape)}"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: shape mismatch, pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
        )
    if pred.device != target.device:
        raise ValueError(f"{name}: pred on {pred.device}, target on {target.device}")
    if pred.dim() == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    dtype = _work_dtype(pred)
    return pred.to(dtype), target.to(dtype)


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    reduction: Reduction = "mean",
    y_channel: bool = False,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image, ``10 · log10(data_range² / MSE)``.

    The MSE of an image is taken over all its channels and pixels (RGB by default, the BT.601 Y
    channel with ``y_channel=True``); ``reduction="mean"`` averages the per-image PSNRs, ``"none"``
    returns them (shape ``(B,)``). Matches scikit-image's ``peak_signal_noise_ratio`` per image.
    Identical images give ``+inf``. See the module docstring for the definitions papers use.
    """
    pred, target = _prepare(pred, target, y_channel, "psnr")
    mse = (pred - target).pow(2).flatten(1).mean(dim=1)
    values = 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 -> +inf
    return _reduce(values.float(), reduction)


def _gaussian_window(
    size: int, sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (coords / sigma) ** 2)
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    reduction: Reduction = "mean",
    y_channel: bool = False,
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004), per image, averaged over channels.

    Gaussian 11 × 11 window with ``σ = 1.5``, ``K1 = 0.01``, ``K2 = 0.03``, population
    statistics; the SSIM map is averaged over the region where the window lies inside the image
    (scikit-image crops ``(11 − 1) // 2 = 5`` pixels per border before averaging). Equals
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=...)``. Images must be at
    least 11 × 11. ``reduction`` and ``y_channel`` as in :func:`psnr`.
    """
    pred, target = _prepare(pred, target, y_channel, "ssim")
    b, c, h, w = pred.shape
    if h < SSIM_WIN_SIZE or w < SSIM_WIN_SIZE:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WIN_SIZE}×{SSIM_WIN_SIZE} for the Gaussian "
            f"window, got {h}×{w}"
        )
    g = _gaussian_window(SSIM_WIN_SIZE, SSIM_SIGMA, pred.dtype, pred.device)
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def filt(x: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian, no padding: exactly the valid region skimage averages over.
        return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = filt(pred), filt(target)
    var_x = filt(pred * pred) - mu_x * mu_x
    var_y = filt(target * target) - mu_y * mu_y
    cov_xy = filt(pred * target) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = num / den
    values = ssim_map.flatten(2).mean(dim=2).mean(dim=1)  # per channel, then over channels
    return _reduce(values.float(), reduction)
