"""PSNR and SSIM against scikit-image, edge cases and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffloss.metrics import psnr, rgb_to_y, ssim

TOL = 1e-4


def _sk_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return peak_signal_noise_ratio(target.double().numpy(), pred.double().numpy(), data_range=1.0)


def _sk_ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    return structural_similarity(
        target.double().numpy(),
        pred.double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )


def _natural_pairs(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(pred, target) pairs: crops of a natural image, degraded in several ways, and noise."""
    g = torch.Generator().manual_seed(seed)
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255.0
    pairs = []
    for h, w, top, left in [(64, 64, 30, 200), (37, 50, 120, 180), (80, 45, 300, 100)]:
        target = img[:, top : top + h, left : left + w]
        noisy = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
        hazy = 0.6 * target + 0.4 * 0.9
        pairs += [(noisy, target), (hazy, target)]
    a = torch.rand(3, 23, 31, generator=g)
    b = torch.rand(3, 23, 31, generator=g)
    pairs.append((a, b))
    return pairs


@pytest.mark.parametrize("k", range(7))
def test_psnr_matches_skimage(k: int) -> None:
    pred, target = _natural_pairs()[k]
    ours = psnr(pred, target).item()
    assert ours == pytest.approx(_sk_psnr(pred, target), abs=TOL)
    assert psnr(pred.unsqueeze(0), target.unsqueeze(0)).item() == pytest.approx(ours, abs=1e-6)


@pytest.mark.parametrize("k", range(7))
def test_ssim_matches_skimage(k: int) -> None:
    pred, target = _natural_pairs()[k]
    ours = ssim(pred, target).item()
    assert ours == pytest.approx(_sk_ssim(pred, target), abs=TOL)


def test_batch_is_mean_of_per_image() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.rand(4, 3, 33, 29, generator=g)
    noise_levels = torch.tensor([0.02, 0.05, 0.1, 0.3]).view(4, 1, 1, 1)
    pred = (target + noise_levels * torch.randn(target.shape, generator=g)).clamp(0, 1)

    p_none = psnr(pred, target, reduction="none")
    s_none = ssim(pred, target, reduction="none")
    assert p_none.shape == (4,) and s_none.shape == (4,)
    sk_p = [_sk_psnr(pred[i], target[i]) for i in range(4)]
    sk_s = [_sk_ssim(pred[i], target[i]) for i in range(4)]
    np.testing.assert_allclose(p_none.numpy(), sk_p, atol=TOL)
    np.testing.assert_allclose(s_none.numpy(), sk_s, atol=TOL)
    assert psnr(pred, target).item() == pytest.approx(float(np.mean(sk_p)), abs=TOL)
    assert ssim(pred, target).item() == pytest.approx(float(np.mean(sk_s)), abs=TOL)
    # Mean of per-image PSNR >= PSNR of the pooled MSE (Jensen).
    pooled = 10 * math.log10(1.0 / (pred - target).pow(2).mean().item())
    assert psnr(pred, target).item() >= pooled


def test_identical_images() -> None:
    x = torch.rand(2, 3, 20, 24)
    assert torch.isinf(psnr(x, x)) and psnr(x, x) > 0
    assert torch.isinf(psnr(x, x, reduction="none")).all()
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    y = x.clone()
    y[1] = (y[1] + 0.05).clamp(0, 1)
    per = psnr(y, x, reduction="none")
    assert torch.isinf(per[0]) and torch.isfinite(per[1])


def test_y_channel_matches_skimage() -> None:
    pred, target = _natural_pairs()[0]
    y_p = color.rgb2ycbcr(pred.permute(1, 2, 0).double().numpy())[..., 0] / 255.0
    y_t = color.rgb2ycbcr(target.permute(1, 2, 0).double().numpy())[..., 0] / 255.0
    ours_y = rgb_to_y(pred)[0].double().numpy()
    np.testing.assert_allclose(ours_y, y_p, atol=1e-6)
    sk_p = peak_signal_noise_ratio(y_t, y_p, data_range=1.0)
    sk_s = structural_similarity(
        y_t, y_p, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert psnr(pred, target, y_channel=True).item() == pytest.approx(sk_p, abs=TOL)
    assert ssim(pred, target, y_channel=True).item() == pytest.approx(sk_s, abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_y_channel_psnr_matches_skimage_to_a_millionth_of_a_db(seed) -> None:
    """Deraining's metric (Rain100H): PSNR of the BT.601 luma, as scikit-image's rgb2ycbcr
    computes it, on random images in float64."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(3, 40, 56, generator=g, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(3, 40, 56, generator=g, dtype=torch.float64)).clamp(0, 1)
    y_p = color.rgb2ycbcr(pred.permute(1, 2, 0).numpy())[..., 0] / 255.0
    y_t = color.rgb2ycbcr(target.permute(1, 2, 0).numpy())[..., 0] / 255.0
    sk = peak_signal_noise_ratio(y_t, y_p, data_range=1.0)
    assert psnr(pred, target, y_channel=True).item() == pytest.approx(sk, abs=1e-6)


def test_data_range_255() -> None:
    pred, target = _natural_pairs()[1]
    p255, t255 = pred * 255, target * 255
    assert psnr(p255, t255, data_range=255.0).item() == pytest.approx(
        psnr(pred, target).item(), abs=TOL
    )
    assert ssim(p255, t255, data_range=255.0).item() == pytest.approx(
        ssim(pred, target).item(), abs=TOL
    )


def test_no_grad_dtypes_and_grad() -> None:
    pred, target = _natural_pairs()[0]
    with torch.no_grad():
        a = psnr(pred.double(), target.double())
        b = ssim(pred.half().float(), target)
    assert a.dtype == torch.float32 and a.dim() == 0 and torch.isfinite(b)
    p = pred.clone().requires_grad_(True)
    (-ssim(p, target) - psnr(p, target)).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_errors() -> None:
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(x, torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(x, torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="B×C×H×W"):
        psnr(torch.rand(16, 16), torch.rand(16, 16))
    with pytest.raises(ValueError, match="B×C×H×W"):
        ssim(torch.rand(1, 1, 3, 16, 16), torch.rand(1, 1, 3, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        psnr(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))
    with pytest.raises(ValueError, match="reduction"):
        psnr(x, x, reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 channels"):
        psnr(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), y_channel=True)
