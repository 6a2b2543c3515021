"""Synthetic degraded/clean pairs made from the bundled images: one split geometry, one
interface, three degradations (haze, low light, rain), each a documented physical model.

:class:`SyntheticPairs` holds what is common: which photo and window item ``i`` of a split
shows, and a random generator that is a pure function of ``(seed, split, i)``.
Its subclasses draw their model's parameters from that generator and degrade the window:
:class:`SyntheticHaze` (:mod:`.haze`), :class:`SyntheticLowLight` (:mod:`.lowlight`) and
:class:`SyntheticRain` (:mod:`.rain`). :data:`SYNTHETIC` maps the trainer's tasks to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from .haze import add_haze, depth_map
from .lowlight import LowLightParams, add_low_light
from .paired import _as_hw
from .rain import RainParams, add_rain
from .samples import id_test_columns, sample_images, train_columns

__all__ = ["ID_TEST_DRAWS", "SPLITS", "SYNTHETIC", "HazeParams", "ItemParams", "SyntheticHaze",
           "SyntheticLowLight", "SyntheticPairs", "SyntheticRain", "synthetic_dataset"]

#: The splits of every synthetic dataset; ``"ood_test"`` is another name for ``"test"``.
SPLITS: tuple[str, ...] = ("train", "id_test", "test", "ood_test")
_SPLIT_CODE = {"train": 0, "test": 1, "id_test": 2}  # keys of the per-item random generator
#: Draws per band in the default ``id_test`` split (items = draws × training photos).
ID_TEST_DRAWS = 3


@dataclass(frozen=True)
class ItemParams:
    """How item ``index`` was made: the photo, the window and the model's parameters."""

    index: int
    image: str
    #: Crop window in the (possibly downscaled) source image: top, left, height, width.
    box: tuple[int, int, int, int]
    flipped: bool
    #: The degradation's parameters (:class:`~diffloss.data.lowlight.LowLightParams`, ...).
    model: Any = None


@dataclass(frozen=True)
class HazeParams:
    """How item ``index`` of a :class:`SyntheticHaze` was made."""

    index: int
    image: str
    beta: float
    airlight: tuple[float, float, float]
    #: Crop window in the (possibly downscaled) source image: top, left, height, width.
    box: tuple[int, int, int, int]
    flipped: bool


class SyntheticPairs(Dataset):
    """Degraded/clean pairs ``(degraded, clean, name)`` made from the bundled sample images;
    the degradation is the subclass's (:meth:`draw`, :meth:`degrade`).

    Split geometry. Each of the four :data:`TRAIN_IMAGES` (after ``max_size``, width ``W``) is cut
    into vertical bands, full height::

        columns  [0, ⌊0.75·W⌋)          training region: every training and validation crop
                 [⌊0.75·W⌋, ⌈0.78·W⌉)   guard gap, never used
                 [⌈0.78·W⌉, W)           in-distribution test band (the right ~22 %)

    (:data:`TRAIN_REGION`, :data:`ID_TEST_BAND`, :func:`train_columns`, :func:`id_test_columns`).
    The gap, 3 % of the width, is wider than the reach of the antialiasing kernel of the
    downscaling (one pixel of the downscaled image on each side of a pixel centre) whenever the
    downscaled widths are 34 px or more, so no source pixel feeds both a training crop and a
    test band, even when training and evaluation downscale to different sizes
    (``tests/test_splits.py`` checks this in the original photos' coordinates). The four :data:`TEST_IMAGES` are never used at
    all except by the out-of-distribution split.

    - ``split="train"``: ``n`` (default 256) random ``crop`` windows (with a random horizontal
      flip) inside the training region of the training photos. The trainer's validation split,
      which selects ``best.pt``, is this split with another ``seed`` (its own windows and draws).
    - ``split="id_test"`` (**in-distribution** test): the whole test band of each training photo,
      degraded afresh, ``ID_TEST_DRAWS`` (3) draws per band by default: item ``i`` is the band of
      photo ``i mod 4`` with draw ``i div 4`` (``n`` sets the number of items; ``crop`` is ignored).
    - ``split="test"`` or ``"ood_test"`` (**out-of-distribution** test): the whole
      :data:`TEST_IMAGES`, one item per image by default (``n`` > 4 cycles through them with new
      draws; ``crop`` is ignored).

    ``max_size`` downscales the source images first (longer side). Reproducible: item ``i`` is
    a pure function of ``(seed, split, i)`` (``numpy.random.default_rng((seed, split, i))``),
    whatever the order of access or the number of workers; see :meth:`params`.
    """

    #: Name of the degradation, for messages.
    kind = "synthetic"
    #: The model's parameters: a dataclass with ``draw(rng, ranges)`` (e.g. ``RainParams``).
    params_cls: Any = None

    def __init__(self, split: str = "train", crop: int | tuple[int, int] | None = 128,
                 n: int | None = None, seed: int = 0, max_size: int | None = None, *,
                 ranges: dict[str, tuple[float, float]] | None = None, flip: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        split = "test" if split == "ood_test" else split
        self.split, self.seed, self.ranges = split, int(seed), ranges
        self.flip = bool(flip) and split == "train"
        self.crop = _as_hw(crop) if split == "train" else None
        self.samples = sample_images("test" if split == "test" else "train", max_size)
        default_n = {"train": 256, "id_test": ID_TEST_DRAWS * len(self.samples)}
        self.n = int(n) if n is not None else default_n.get(split, len(self.samples))
        if self.crop is not None:
            for s in self.samples:
                h, w = s.image.shape[-2:]
                lo, hi = train_columns(w)
                if h < self.crop[0] or hi - lo < self.crop[1]:
                    raise ValueError(
                        f"crop {self.crop[0]}×{self.crop[1]} is larger than image {s.name!r} "
                        f"({h}×{w}, H×W, max_size={max_size}; training region {h}×{hi - lo})"
                    )

    @property
    def image_names(self) -> list[str]:
        return [s.name for s in self.samples]

    def __len__(self) -> int:
        return self.n

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        return np.random.default_rng((self.seed, _SPLIT_CODE[self.split], index))

    def _window(self, index: int,
                rng: np.random.Generator) -> tuple[int, tuple[int, int, int, int], bool]:
        """(photo, box, flipped) of item ``index``: the first draws of its generator."""
        k = int(rng.integers(len(self.samples))) if self.split == "train" else index % len(self.samples)
        h, w = self.samples[k].image.shape[-2:]
        if self.split == "train":
            lo, hi = train_columns(w)
            ch, cw = self.crop if self.crop is not None else (h, hi - lo)
            top = int(rng.integers(h - ch + 1))
            left = lo + int(rng.integers(hi - lo - cw + 1))
        elif self.split == "id_test":
            lo, hi = id_test_columns(w)
            top, left, ch, cw = 0, lo, h, hi - lo
        else:
            top, left, ch, cw = 0, 0, h, w
        flipped = bool(rng.random() < 0.5) and self.flip
        return k, (top, left, ch, cw), flipped

    def params(self, index: int) -> Any:
        """The random choices of item ``index`` (a pure function of ``seed``, split, index)."""
        rng = self._rng(index)
        k, box, flipped = self._window(index, rng)
        return ItemParams(index, self.samples[k].name, box, flipped, self.draw(rng))

    def draw(self, rng: np.random.Generator) -> Any:
        """The degradation's parameters for one item, drawn from ``rng`` within ``ranges``
        (:attr:`params_cls`'s defaults where a range is not given)."""
        return self.params_cls.draw(rng, self.ranges)

    def degrade(self, clean: Tensor, p: Any, k: int, rng: np.random.Generator) -> Tensor:
        """The degraded version of the window ``clean`` of photo ``k`` with parameters ``p``;
        ``rng`` continues the item's generator (for noise, streak seeds)."""
        raise NotImplementedError

    def _clean(self, k: int, box: tuple[int, int, int, int], flipped: bool) -> Tensor:
        top, left, ch, cw = box
        clean = self.samples[k].image[:, top:top + ch, left:left + cw]
        return clean.flip(-1) if flipped else clean

    def _name(self, index: int, image: str) -> str:
        if self.split == "train":
            return f"{image}_{index:05d}"
        if self.split == "id_test":
            return f"{image}_band{index // len(self.samples)}"
        return f"{image}_{index:05d}" if self.n > len(self.samples) else image

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        if index < 0:
            index += self.n
        rng = self._rng(index)
        k, box, flipped = self._window(index, rng)
        p = self.draw(rng)
        clean = self._clean(k, box, flipped)
        degraded = self.degrade(clean, p, k, rng).clamp_(0, 1)
        return degraded.contiguous(), clean.contiguous(), self._name(index, self.samples[k].name)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, n={self.n}, crop={self.crop}, "
                f"seed={self.seed}, images={self.image_names})")


class SyntheticHaze(SyntheticPairs):
    """Hazy/clean pairs ``(hazy, clean, name)`` made from the bundled sample images
    (split geometry: :class:`SyntheticPairs`).

    Haze follows the atmospheric scattering model, ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``
    (:func:`add_haze`), with ``d`` from :func:`depth_map`: the real disparity of
    ``motorcycle_left`` (``d ∝ 1/disparity``), the documented :func:`depth_proxy` for the
    others. Per item, ``β ~ U(beta_range)`` and a grey level ``a ~ U(airlight_range)`` are
    drawn, and ``A = clip(a·(1 + τ), 0, 1)`` with a per-channel tint ``τ ~ U(−tint, tint)³``.
    The defaults (``β ∈ [1, 2.5]``, ``a ∈ [0.7, 1]``) give dense haze: ``t`` falls to
    0.08–0.37 at the farthest point, as in Dense-Haze.
    """

    kind = "haze"

    def __init__(self, split: str = "train", crop: int | tuple[int, int] | None = 128,
                 n: int | None = None, seed: int = 0,
                 beta_range: tuple[float, float] = (1.0, 2.5),
                 airlight_range: tuple[float, float] = (0.7, 1.0),
                 max_size: int | None = None, *, tint: float = 0.05, flip: bool = True) -> None:
        if not 0 <= beta_range[0] <= beta_range[1]:
            raise ValueError(f"beta_range must be 0 ≤ low ≤ high, got {beta_range}")
        if not 0 <= airlight_range[0] <= airlight_range[1] <= 1:
            raise ValueError(f"airlight_range must lie in [0, 1], got {airlight_range}")
        super().__init__(split, crop, n, seed, max_size, flip=flip)
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.airlight_range = (float(airlight_range[0]), float(airlight_range[1]))
        self.tint = float(tint)
        self.depths = [depth_map(s) for s in self.samples]

    def draw(self, rng: np.random.Generator) -> tuple[float, tuple[float, float, float]]:
        """(β, A): ``β ~ U(beta_range)``, ``A = clip(a·(1 + τ), 0, 1)``, ``a ~ U(airlight_range)``,
        ``τ ~ U(−tint, tint)³``."""
        beta = float(rng.uniform(*self.beta_range))
        grey = rng.uniform(*self.airlight_range)
        tint = rng.uniform(-self.tint, self.tint, size=3)
        return beta, tuple(float(v) for v in np.clip(grey * (1 + tint), 0.0, 1.0))

    def params(self, index: int) -> HazeParams:
        """The random choices of item ``index`` (a pure function of ``seed``, split, index)."""
        rng = self._rng(index)
        k, box, flipped = self._window(index, rng)
        beta, airlight = self.draw(rng)
        return HazeParams(index, self.samples[k].name, beta, airlight, box, flipped)

    def degrade(self, clean: Tensor, p: Any, k: int, rng: np.random.Generator) -> Tensor:
        """Haze needs the window's depth as well: :meth:`__getitem__` calls :func:`add_haze`."""
        raise NotImplementedError("SyntheticHaze degrades with the window's depth (__getitem__)")

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        if index < 0:
            index += self.n
        p = self.params(index)
        k = self.image_names.index(p.image)
        clean, depth = self._clean(k, p.box, p.flipped), self.depth(index)
        hazy = add_haze(clean, depth, p.beta, p.airlight).clamp_(0, 1)
        return hazy.contiguous(), clean.contiguous(), self._name(index, p.image)

    def depth(self, index: int) -> Tensor:
        """The depth map ``d`` (H×W) used for item ``index`` (cropped and flipped like it)."""
        p = self.params(index)
        top, left, ch, cw = p.box
        d = self.depths[self.image_names.index(p.image)][top:top + ch, left:left + cw]
        return d.flip(-1) if p.flipped else d


class SyntheticLowLight(SyntheticPairs):
    """Low-light/clean pairs: a short exposure through a noisy sensor, saved as 8 bits
    (:func:`~diffloss.data.lowlight.add_low_light`; exposure ratio, full-well capacity and read
    noise drawn per item from ``ranges``, default
    :data:`~diffloss.data.lowlight.LOWLIGHT_RANGES`). Split geometry: :class:`SyntheticPairs`."""

    kind = "low light"
    params_cls = LowLightParams

    def degrade(self, clean: Tensor, p: LowLightParams, k: int, rng: np.random.Generator) -> Tensor:
        return add_low_light(clean, p, rng)


class SyntheticRain(SyntheticPairs):
    """Rainy/clean pairs: a streak layer screen-blended over the image, with the veil of rain
    accumulation (:func:`~diffloss.data.rain.add_rain`; angle, length, width, density,
    intensity and veil drawn per item from ``ranges``, default
    :data:`~diffloss.data.rain.RAIN_RANGES`). Streak lengths are fractions of the whole photo's
    shorter side, so a crop shows streaks as long as the whole image does. Split geometry:
    :class:`SyntheticPairs`."""

    kind = "rain"
    params_cls = RainParams

    def degrade(self, clean: Tensor, p: RainParams, k: int, rng: np.random.Generator) -> Tensor:
        scale = min(self.samples[k].image.shape[-2:])
        return add_rain(clean, p, rng, scale=scale)[0]


#: The synthetic dataset of each task (``TrainConfig.task``).
SYNTHETIC: dict[str, type[SyntheticPairs]] = {
    "dehaze": SyntheticHaze, "lowlight": SyntheticLowLight, "derain": SyntheticRain}


def synthetic_dataset(task: str, split: str = "train", **kwargs: Any) -> SyntheticPairs:
    """The synthetic dataset of ``task`` (``"dehaze"``, ``"lowlight"``, ``"derain"``)."""
    if task not in SYNTHETIC:
        raise ValueError(f"unknown task {task!r}. Valid values: {', '.join(SYNTHETIC)}")
    return SYNTHETIC[task](split, **kwargs)
