"""The synthetic degradations: each model's stated properties, one interface, the same splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffloss.data import (
    SyntheticHaze,
    SyntheticLowLight,
    SyntheticRain,
    sample_images,
    synthetic_dataset,
)
from diffloss.data.lowlight import (
    LOWLIGHT_RANGES,
    LowLightParams,
    add_low_light,
    linear_to_srgb,
    sensor_noise,
    srgb_to_linear,
)
from diffloss.data.rain import RAIN_RANGES, RainParams, add_rain, line_kernel, streak_layer


# ---------------------------------------------------------------------------------- low light
def test_srgb_transfer_function_and_its_inverse():
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    # IEC 61966-2-1 reference points: mid-grey 0.5 is 21.4 % linear light; the linear toe
    assert float(srgb_to_linear(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(0.214041, abs=1e-6)
    assert float(srgb_to_linear(torch.tensor(0.04, dtype=torch.float64))) == pytest.approx(0.04 / 12.92)


@pytest.mark.parametrize("signal,full_well,read", [(0.02, 500.0, 2e-3), (0.005, 3000.0, 5e-4),
                                                   (0.2, 300.0, 3e-3)])
def test_sensor_noise_variance_is_linear_in_the_signal(signal, full_well, read):
    """Poisson–Gaussian: mean E, variance E/n_sat + σ_r² (Foi et al. 2008)."""
    y = sensor_noise(torch.full((400_000,), signal, dtype=torch.float64), full_well, read,
                     np.random.default_rng(0))
    expected = signal / full_well + read ** 2
    assert float(y.mean()) == pytest.approx(signal, abs=4 * math.sqrt(expected / y.numel()))
    assert float(y.var()) == pytest.approx(expected, rel=0.02)


def test_low_light_images_are_dark_8_bit_and_drawn_from_their_ranges():
    images = [s.image for s in sample_images("all", max_size=96)]
    rng = np.random.default_rng(0)
    means = []
    for i in range(24):
        p = LowLightParams.draw(rng)
        for name, value in vars(p).items():
            lo, hi = LOWLIGHT_RANGES[name]
            assert lo <= value <= hi, (name, value)
        clean = images[i % len(images)]
        low = add_low_light(clean, p, rng)
        assert low.shape == clean.shape and 0 <= float(low.min()) and float(low.max()) <= 1
        assert torch.equal(torch.round(low * 255) / 255, low)  # on the 8-bit grid
        means.append(float(low.mean()))
        assert float(low.mean()) < 0.45 * float(clean.mean())
    # LOL-like: the mean brightness is a few percent of full scale
    assert 0.02 < float(np.median(means)) < 0.15 and max(means) < 0.25, means


# --------------------------------------------------------------------------------------- rain
def _upwards_angle(dx: float, dy: float) -> float:
    """Degrees from vertical of the direction (dx, dy) (image rows grow downwards), taken
    pointing up: positive when the top leans right."""
    if dy > 0:
        dx, dy = -dx, -dy
    return math.degrees(math.atan2(dx, -dy))


def _orientation(layer: torch.Tensor) -> float:
    """Angle of the streaks in ``layer``: the direction along which it changes least, the
    smaller eigenvector of its structure tensor, on the layer blurred by a Gaussian of σ = 2 px
    (the gradients of a thin, pixel-sampled line are biased towards the axes by its staircase)."""
    from torchvision.transforms.functional import gaussian_blur

    smooth = gaussian_blur(layer[None].to(torch.float64), [13, 13], [2.0, 2.0])[0]
    gy, gx = torch.gradient(smooth)
    j = torch.tensor([[float((gx * gx).sum()), float((gx * gy).sum())],
                      [float((gx * gy).sum()), float((gy * gy).sum())]])
    vecs = torch.linalg.eigh(j).eigenvectors
    return _upwards_angle(float(vecs[0, 0]), float(vecs[1, 0]))


def _principal_axis(kernel: torch.Tensor) -> float:
    """Angle of the longer principal axis of the kernel's mass (its second moments)."""
    k = kernel.to(torch.float64)
    ys, xs = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in k.shape), indexing="ij")
    m = k.sum()
    x, y = xs - (k * xs).sum() / m, ys - (k * ys).sum() / m
    cov = torch.tensor([[float((k * x * x).sum()), float((k * x * y).sum())],
                        [float((k * x * y).sum()), float((k * y * y).sum())]]) / float(m)
    vecs = torch.linalg.eigh(cov).eigenvectors
    return _upwards_angle(float(vecs[0, 1]), float(vecs[1, 1]))


@pytest.mark.parametrize("angle", [-18.0, -5.0, 0.0, 7.0, 15.0])
def test_streaks_fall_at_the_drawn_angle(angle):
    p = RainParams(angle=angle, length=0.15, width=1.5, density=0.008, intensity=0.8, veil=0.0,
                   airlight=0.8)
    layer = streak_layer((160, 160), p, np.random.default_rng(1))
    assert _orientation(layer) == pytest.approx(angle, abs=1.5)
    k = line_kernel(30, angle, 1.0)
    assert _principal_axis(k) == pytest.approx(angle, abs=0.1) and float(k.sum()) == pytest.approx(1)


def test_rain_brightens_by_screen_blending_denser_rain_covers_more_and_the_veil_greys():
    clean = sample_images("train", max_size=96)[0].image
    base = dict(angle=5.0, length=0.15, width=1.5, intensity=0.8, veil=0.0, airlight=0.8)
    covered = []
    for density in (0.002, 0.006, 0.012):
        rainy, s = add_rain(clean, RainParams(density=density, **base), np.random.default_rng(0))
        assert bool((rainy >= clean - 1e-6).all())  # light adds: never darker without a veil
        assert torch.allclose(rainy, 1 - (1 - clean) * (1 - s), atol=1e-6)
        assert 0.7 <= float(s.max()) <= 0.8 + 1e-6
        covered.append(float((s > 0.1).float().mean()))
    assert covered[0] < covered[1] < covered[2]
    veiled, _ = add_rain(clean, RainParams(density=0.0, **{**base, "veil": 0.3}),
                         np.random.default_rng(0))
    assert torch.allclose(veiled, 0.7 * clean + 0.3 * 0.8, atol=1e-6)


def test_rain_parameters_are_drawn_from_their_ranges():
    rng = np.random.default_rng(0)
    for _ in range(50):
        for name, value in vars(RainParams.draw(rng)).items():
            lo, hi = RAIN_RANGES[name]
            assert lo <= value <= hi, (name, value)


# ------------------------------------------------------------------ one interface, same splits
@pytest.mark.parametrize("task", ["dehaze", "lowlight", "derain"])
def test_every_task_has_the_same_splits_and_is_deterministic(task):
    kw = dict(max_size=96)
    haze_train = SyntheticHaze("train", crop=32, n=6, **kw)
    for split, extra in (("train", dict(crop=32, n=6)), ("id_test", {}), ("ood_test", {})):
        ds = synthetic_dataset(task, split, **extra, **kw)
        ref = SyntheticHaze(split, **extra, **kw) if split != "train" else haze_train
        assert len(ds) == len(ref)
        for i in range(len(ds)):
            a, b = ds[i], synthetic_dataset(task, split, **extra, **kw)[i]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
            assert a[2] == ref[i][2] and ds.params(i).box == ref.params(i).box
            assert torch.equal(a[1], ref[i][1])  # the same clean window as the haze split
            assert a[0].shape == a[1].shape and not torch.equal(a[0], a[1])
    other = synthetic_dataset(task, "train", crop=32, n=6, seed=1, **kw)
    assert not torch.equal(other[0][0], haze_train[0][0])


def test_the_task_classes_and_a_clear_error_for_an_unknown_task():
    assert isinstance(synthetic_dataset("lowlight", "test", max_size=64), SyntheticLowLight)
    assert isinstance(synthetic_dataset("derain", "test", max_size=64), SyntheticRain)
    with pytest.raises(ValueError, match="unknown task 'denoise'. Valid values: dehaze, lowlight, derain"):
        synthetic_dataset("denoise")
