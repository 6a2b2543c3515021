"""The offline default data of DESIGN.md: natural colour images that ship inside installed
packages (scikit-image, matplotlib and scikit-learn), so every chapter runs without a download,
and their splits.

Four scenes (:data:`TEST_IMAGES`) are held out whole, from the tiny diffusion prior and the
restorers: the out-of-distribution test split (scikit-image's ``rocket`` and ``motorcycle_left``,
scikit-learn's ``china`` and ``flower``, BSD-licensed). Of the four training photos, the restorers train
on the left 75 % only; the right 22 % of each is the in-distribution test band
(:class:`~diffloss.data.SyntheticHaze` documents the geometry).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

#: Images used for training (the tiny prior's crops, the restorers' crops).
TRAIN_IMAGES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "grace_hopper")
#: Whole images held out for testing. ``motorcycle_left`` carries a real disparity map;
#: ``china`` and ``flower`` ship in scikit-learn's wheel (``sklearn/datasets/images``).
TEST_IMAGES: tuple[str, ...] = ("rocket", "motorcycle_left", "china", "flower")
#: The photos that scikit-learn ships (the rest come with scikit-image, ``grace_hopper`` with matplotlib).
SKLEARN_IMAGES: tuple[str, ...] = ("china", "flower")
#: Columns of each training photo, as fractions of its width, from which the restorers'
#: training and validation crops are drawn (:class:`SyntheticHaze`).
TRAIN_REGION: tuple[float, float] = (0.0, 0.75)
#: Columns of each training photo, as fractions of its width, held out as the
#: in-distribution test band (``SyntheticHaze("id_test")``); 0.75–0.78 is a guard gap.
ID_TEST_BAND: tuple[float, float] = (0.78, 1.0)


def train_columns(width: int) -> tuple[int, int]:
    """Pixel columns ``[start, stop)`` of the training region of a ``width``-wide training photo:
    ``[0, ⌊0.75·width⌋)`` (:data:`TRAIN_REGION`)."""
    return math.ceil(TRAIN_REGION[0] * width), math.floor(TRAIN_REGION[1] * width)


def id_test_columns(width: int) -> tuple[int, int]:
    """Pixel columns ``[start, stop)`` of the in-distribution test band of a ``width``-wide
    training photo: ``[⌈0.78·width⌉, width)`` (:data:`ID_TEST_BAND`)."""
    return math.ceil(ID_TEST_BAND[0] * width), math.floor(ID_TEST_BAND[1] * width)


@dataclass(frozen=True)
class SampleImage:
    """One bundled image: ``image`` is a 3×H×W float tensor in [0, 1]."""

    name: str
    image: Tensor
    split: str
    #: Stereo disparity (H×W, pixels; larger is nearer; NaN where unknown), only for
    #: ``motorcycle_left``. Depth is proportional to 1/disparity.
    disparity: Tensor | None = None


def _skimage_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def _image_path(name: str) -> Path:
    if name in SKLEARN_IMAGES:
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        if spec is None or spec.origin is None:  # not imported: sklearn's import costs ~1 s
            raise FileNotFoundError(f"Bundled sample image {name!r} ships with scikit-learn, which is "
                                    "not installed: pip install scikit-learn")
        return Path(spec.origin).parent / "datasets" / "images" / f"{name}.jpg"
    if name == "grace_hopper":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    folder = _skimage_dir()
    for ext in (".png", ".jpg"):
        path = folder / f"{name}{ext}"
        if path.exists():
            return path
    return folder / f"{name}.png"


def _read_rgb(path: Path) -> Tensor:
    if not path.exists():
        raise FileNotFoundError(
            f"Bundled sample image not found: {path}. It ships with scikit-image/matplotlib/scikit-learn; "
            "reinstall them (pip install --force-reinstall scikit-image matplotlib scikit-learn)."
        )
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    return decode_image(data, mode=ImageReadMode.RGB).float().div_(255.0)


def _read_disparity() -> Tensor:
    with np.load(_skimage_dir() / "motorcycle_disp.npz") as npz:
        disp = np.asarray(npz[npz.files[0]], dtype=np.float32)
    disp[~np.isfinite(disp)] = np.nan
    return torch.from_numpy(disp)


@functools.cache
def _load(name: str) -> SampleImage:
    image = _read_rgb(_image_path(name))
    disparity = _read_disparity() if name == "motorcycle_left" else None
    split = "train" if name in TRAIN_IMAGES else "test"
    return SampleImage(name=name, image=image, split=split, disparity=disparity)


def _resize_to(img: SampleImage, max_size: int) -> SampleImage:
    h, w = img.image.shape[-2:]
    scale = max_size / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = F.interpolate(img.image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    disparity = None
    if img.disparity is not None:
        # Nearest keeps NaN holes as holes; disparity (pixels) scales with the image.
        disparity = F.interpolate(img.disparity[None, None], size=size, mode="nearest")[0, 0] * scale
    return SampleImage(img.name, image.clamp_(0, 1), img.split, disparity)


def sample_images(split: str = "all", max_size: int | None = None) -> list[SampleImage]:
    """The bundled natural images as :class:`SampleImage` (3×H×W float tensors in [0, 1]).

    ``split``: ``"train"`` (:data:`TRAIN_IMAGES`), ``"test"`` (:data:`TEST_IMAGES`) or ``"all"``.
    ``max_size``: if given, images whose longer side exceeds it are downscaled (antialiased).
    """
    names = {"train": TRAIN_IMAGES, "test": TEST_IMAGES, "all": TRAIN_IMAGES + TEST_IMAGES}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    images = [_load(n) for n in names[split]]
    if max_size is not None:
        images = [_resize_to(img, max_size) for img in images]
    return images


def prior_training_images(images: list[SampleImage] | None = None) -> list[Tensor]:
    """The pixels the tiny prior may learn from: of each training photo (default: the bundled
    ones, at full size), only the restorers' training region, columns
    ``[0, ⌊0.75·width⌋)`` (:func:`train_columns`). The guard gap, the in-distribution test
    band and the out-of-distribution scenes are cut away *before* any resizing, so that not
    even an antialiasing filter reaches a test pixel."""
    images = sample_images("train") if images is None else images
    return [s.image[..., : train_columns(s.image.shape[-1])[1]] for s in images]


def sample_image(name: str, max_size: int | None = None) -> Tensor:
    """One bundled image by name, as a 3×H×W float tensor in [0, 1]."""
    valid = TRAIN_IMAGES + TEST_IMAGES
    if name not in valid:
        raise ValueError(f"Unknown sample image {name!r}; available: {', '.join(valid)}")
    img = _load(name)
    return (_resize_to(img, max_size) if max_size else img).image
