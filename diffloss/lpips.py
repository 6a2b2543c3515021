"""LPIPS, the learned perceptual metric restoration papers report beside PSNR/SSIM.

Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018):

    d(x, y) = Σ_l 1/(H_l W_l) Σ_{h,w} ‖ w_l ⊙ (ŷ^l_{hw} − x̂^l_{hw}) ‖²₂

where ``x̂^l``, ``ŷ^l`` are a backbone's layer-``l`` activations normalised to unit length over
channels and ``w_l`` are the learned per-channel weights ("lin" layers). Lower is more similar; 0
for identical images.

The computation is torchmetrics' (``LearnedPerceptualImagePatchSimilarity``), which ships the
learned ``w_l`` of the official v0.1 release and takes the backbone from torchvision's ImageNet
weights (AlexNet by default, as most papers report). Those backbone weights are downloaded once
into torch's hub cache. Without them the metric is **unavailable** — :class:`LPIPSUnavailable` says
which file is missing and where to put it — and never computed with a random backbone: a number
from random features is not LPIPS.
"""

from __future__ import annotations

import os

import torch

from .weights import hub_checkpoints

__all__ = ["LPIPS", "LPIPSUnavailable", "load_lpips", "BACKBONE_FILES", "MIN_SIDE"]

#: torchvision's checkpoint file for each backbone LPIPS can use (the hub cache's file name).
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
#: The smallest image side each backbone's LPIPS layers accept (measured; pooling needs room).
MIN_SIDE = {"alex": 31, "vgg": 16, "squeeze": 17}


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot be computed here: torchmetrics is missing or the backbone's weights are."""


class LPIPS:
    """Per-image LPIPS of images in ``[0, 1]`` (``B × 3 × H × W``); build with :func:`load_lpips`."""

    def __init__(self, metric: torch.nn.Module, net: str) -> None:
        self.metric = metric
        self.net = net

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One LPIPS value per image (shape ``(B,)``); inputs are clamped to [0, 1]."""
        if pred.dim() == 3:
            pred, target = pred[None], target[None]
        if min(pred.shape[-2:]) < MIN_SIDE[self.net]:
            raise ValueError(
                f"LPIPS ({self.net}) needs images of at least {MIN_SIDE[self.net]} pixels on each "
                f"side, got {tuple(pred.shape[-2:])} (H, W); evaluate at a larger size")
        dev = next(self.metric.parameters()).device
        out = []
        for p, t in zip(pred.clamp(0, 1).float(), target.clamp(0, 1).float()):
            self.metric.reset()
            out.append(self.metric(p[None].to(dev), t[None].to(dev)).reshape(()))
        self.metric.reset()
        return torch.stack(out).cpu()


def load_lpips(net: str = "alex", device: torch.device | str = "cpu") -> LPIPS:
    """The LPIPS metric with ``net``'s pretrained backbone (``alex``, ``vgg`` or ``squeeze``).

    Downloads the torchvision backbone into the hub cache the first time (AlexNet: 233 MB).
    Raises :class:`LPIPSUnavailable` with what to do when torchmetrics is not installed or the
    weights can be neither found nor downloaded (offline).
    """
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except ImportError as exc:
        raise LPIPSUnavailable(
            f"LPIPS needs torchmetrics ({exc}); install it with `pip install torchmetrics`"
        ) from exc
    try:
        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="mean",
                                                       normalize=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad file a RuntimeError
        where = hub_checkpoints() / BACKBONE_FILES[net]
        raise LPIPSUnavailable(
            f"LPIPS is unavailable offline: it needs torchvision's pretrained {net} weights "
            f"({BACKBONE_FILES[net]}), which are neither in the cache nor downloadable here "
            f"({type(exc).__name__}: {str(exc)[:200]}). Run once with internet access, or copy "
            f"the file to {where} (TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')})."
        ) from exc
    return LPIPS(metric.to(device).eval(), net)
