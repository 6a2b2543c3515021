"""The comparison losses of the seed's supplement, Section 3: perceptual (Eq. 5) and adversarial
(Eq. 7), against which DiffLoss is measured (chapter 05).

- :class:`PerceptualLoss`: feature reconstruction with a frozen VGG16 (torchvision's ImageNet
  weights, :func:`diffloss.weights.fetch_vgg16_weights`), or random weights as a control;
- :class:`LitePerceptualLoss`: the same recipe on a frozen ImageNet EfficientNet-Lite0
  (:mod:`diffloss.classifier`), the perceptual loss available offline;
- :class:`AdversarialLoss` with a :class:`PatchDiscriminator` (pix2pix's PatchGAN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import fetch_vgg16_weights

__all__ = ["AdversarialLoss", "IMAGENET_MEAN", "IMAGENET_STD", "LITE0_LAYERS", "LitePerceptualLoss",
           "PatchDiscriminator", "PerceptualLoss", "VGG16_LAYERS", "vgg16_features"]

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


#: The stages of EfficientNet-Lite0 (timm's ``blocks``) whose outputs :class:`LitePerceptualLoss`
#: compares: output stride 2, 4, 8, 16 and 16 px, 16, 24, 40, 80 and 112 channels.
LITE0_LAYERS: dict[str, int] = {"stage1": 0, "stage2": 1, "stage3": 2, "stage4": 3, "stage5": 4}


class LitePerceptualLoss(nn.Module):
    """The perceptual loss of Eq. 5 on a frozen ImageNet **EfficientNet-Lite0** instead of VGG16:

        L_per(z, x) = Σ_j 1/(C_j·H_j·W_j) · ‖φ_j(z) − φ_j(x)‖²₂

    φ_j = the outputs of the network's stages ``layers`` (default the three shallowest, at output
    strides 2, 4 and 8: like VGG16's relu1_2, relu2_2 and relu3_3, low- and mid-level features),
    computed at full resolution on inputs normalised the way the weights were trained,
    ``(x − 0.5)/0.5`` (:mod:`diffloss.classifier`). The network and its ImageNet weights are
    :func:`diffloss.classifier.imagenet_classifier`'s (installed with ``diffloss[semantics]``,
    never downloaded), so this is a perceptual loss with *real* ImageNet features offline. It is
    not VGG16: its features are those of a different, much smaller classifier (4.7 M parameters
    against VGG16's 138 M), and a result with it says so.
    """

    def __init__(self, layers: tuple[str, ...] = ("stage1", "stage2", "stage3")) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in LITE0_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown EfficientNet-Lite0 stage(s) {unknown}; valid: {', '.join(LITE0_LAYERS)}")
        from .classifier import imagenet_classifier

        net = imagenet_classifier()
        self.layers = tuple(layers)
        self.indices = tuple(LITE0_LAYERS[name] for name in layers)
        last = max(self.indices)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = nn.Sequential(*list(net.blocks)[:last + 1])
        self.eval().requires_grad_(False)

    def extra_repr(self) -> str:
        return f"layers={self.layers}, pretrained=ImageNet (EfficientNet-Lite0)"

    def train(self, mode: bool = True) -> LitePerceptualLoss:
        """The network stays in eval mode (frozen batch-norm statistics) whatever the caller asks."""
        super().train(mode)
        self.stem.eval()
        self.blocks.eval()
        return self

    def feature_maps(self, img: Tensor) -> list[Tensor]:
        """φ_j(img) for each chosen stage; ``img`` is B×3×H×W in [0, 1]."""
        h = self.stem((img - 0.5) / 0.5)
        out: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks):
            h = block(h)
            out[i] = h
        return [out[i] for i in self.indices]

    def forward(self, restored: Tensor, target: Tensor) -> Tensor:
        """L_per(restored, target) (Eq. 5 on EfficientNet-Lite0); gradients flow to ``restored`` only."""
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
