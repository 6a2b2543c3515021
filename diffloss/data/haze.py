"""The haze model: the atmospheric scattering model and the depth maps of the bundled images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .samples import SampleImage


def transmission(depth: Tensor, beta: float | Tensor) -> Tensor:
    """Transmission ``t = exp(−β·d)`` of the atmospheric scattering model (Koschmieder's law).

    ``depth``: ``d``, a normalised depth (…×H×W, any shape); ``beta``: the scattering
    coefficient ``β`` (a number, or a tensor that broadcasts against ``depth``).
    """
    beta = torch.as_tensor(beta, dtype=depth.dtype, device=depth.device)
    return torch.exp(-beta * depth)


def add_haze(
    clean: Tensor,
    depth: Tensor,
    beta: float | Tensor,
    airlight: float | tuple[float, float, float] | Tensor,
) -> Tensor:
    """Haze a clean image with the atmospheric scattering model (Koschmieder; McCartney 1976):

    ``I = J·t + A·(1 − t)``,  ``t = exp(−β·d)``

    ``clean`` = ``J``: 3×H×W or B×3×H×W in [0, 1]. ``depth`` = ``d``: H×W, 1×H×W, B×H×W or
    B×1×H×W, a normalised depth (0 near, 1 far). ``beta`` = ``β`` ≥ 0: a number, or a tensor
    of shape (B,) for one value per image. ``airlight`` = ``A``, the colour of the haze: a
    number (grey), 3 numbers (RGB), or a tensor of shape (3,) or (B, 3).

    ``I`` is a convex combination of ``J`` and ``A`` (``0 < t ≤ 1``), so it stays in [0, 1]
    when both are. Returns ``I`` with the shape of ``clean``.
    """
    if clean.dim() not in (3, 4) or clean.shape[-3] != 3:
        raise ValueError(f"clean must be 3×H×W or B×3×H×W, got {tuple(clean.shape)}")
    batched = clean.dim() == 4
    d = depth.to(clean.dtype)
    if d.dim() == clean.dim() - 1:  # no channel axis: H×W or B×H×W
        d = d.unsqueeze(-3)
    if d.shape[-2:] != clean.shape[-2:]:
        raise ValueError(f"depth {tuple(depth.shape)} does not match image {tuple(clean.shape)}")
    b = torch.as_tensor(beta, dtype=clean.dtype, device=clean.device)
    if b.dim() == 1:  # one β per image
        if not batched:
            raise ValueError("a per-image beta needs a batched B×3×H×W image")
        b = b.view(-1, 1, 1, 1)
    a = torch.as_tensor(airlight, dtype=clean.dtype, device=clean.device)
    if a.dim() >= 1:  # (3,) or (B, 3)
        if a.shape[-1] != 3:
            raise ValueError(f"airlight must be a number, 3 values or B×3, got {tuple(a.shape)}")
        a = a[..., :, None, None]
    t = transmission(d, b)
    return clean * t + a * (1 - t)


def _normalise(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Min-max rescale to [0, 1]; a (nearly) constant map, range < ``eps``, becomes 0."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi - lo > eps else torch.zeros_like(x)


def depth_from_disparity(disparity: Tensor) -> Tensor:
    """Normalised depth in [0, 1] from a stereo disparity map (H×W, NaN where unknown).

    Depth is inversely proportional to disparity, ``Z = f·B / disparity``, so ``d ∝ 1/disp``.
    Holes (NaN or ≤ 0) take the value of the nearest valid pixel (Euclidean distance
    transform), then ``d`` is min-max normalised to [0, 1] (0 nearest, 1 farthest).
    """
    disp = disparity.detach().cpu().to(torch.float64).numpy()
    valid = np.isfinite(disp) & (disp > 0)
    if not valid.any():
        raise ValueError("the disparity map has no valid pixel")
    if not valid.all():
        from scipy import ndimage

        _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
        disp = disp[iy, ix]
    return _normalise(torch.from_numpy(1.0 / disp).float())


def depth_proxy(image: Tensor, ramp_weight: float = 0.7) -> Tensor:
    """A plausible normalised depth (H×W in [0, 1]) for an image without a depth map.

    A proxy, not a measurement: ``d = normalise(w·r + (1 − w)·Ŷ)`` with

    - ``r(y) = 1 − y/(H − 1)``, a vertical ramp: the top of a photo (sky, background) is
      usually farther than the bottom (the ground at the camera's feet);
    - ``Ŷ``, the Rec. 601 luminance ``0.299R + 0.587G + 0.114B`` low-passed at about 1/16 of
      the image size and min-max normalised: large bright regions (sky, walls behind the
      subject) count as farther, a cue in the spirit of the dark-channel prior;
    - ``w = ramp_weight`` (0.7), and ``normalise`` the min-max rescale to [0, 1].

    The result is smooth, so the haze varies slowly across objects; edges of the haze do not
    follow object boundaries as they would with true depth.
    """
    h, w = image.shape[-2:]
    lum = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None, None]
    small = (max(1, round(h * 32 / max(h, w))), max(1, round(w * 32 / max(h, w))))
    low = F.interpolate(lum, size=small, mode="area")
    low = F.avg_pool2d(F.pad(low, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    low = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    ramp = torch.linspace(1.0, 0.0, h).view(h, 1).expand(h, w)
    return _normalise(ramp_weight * ramp + (1 - ramp_weight) * _normalise(low))


def depth_map(sample: SampleImage) -> Tensor:
    """Normalised depth (H×W in [0, 1]) of a bundled image: :func:`depth_from_disparity` when it
    has a disparity map (``motorcycle_left``), else :func:`depth_proxy`."""
    if sample.disparity is not None:
        return depth_from_disparity(sample.disparity)
    return depth_proxy(sample.image)
