"""One precision decision (issue 35): bf16 on cards with bf16 hardware, fp16 on older ones (a
T4), float32 on the CPU, shared by the trainer, DiffLoss's prior and evaluate; fp16 DiffLoss
agrees with float32; a prior that overflows in fp16 falls back to float32 with one warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffloss import DiffLoss
from diffloss.precision import autocast_dtype, native_half
from diffloss.training import TrainConfig


@pytest.fixture
def card(monkeypatch):
    """A CUDA card of the given compute capability, as far as the precision rule can tell."""
    def set_capability(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    return set_capability


@pytest.mark.parametrize("capability, half", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"),
                                              ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_the_card_decides_bf16_or_fp16(card, capability, half) -> None:
    card(*capability)
    assert native_half("cuda") == half
    assert TrainConfig().resolved_mixed_precision() == half
    expected = torch.bfloat16 if half == "bf16" else torch.float16
    assert autocast_dtype("cuda") == expected


def test_diffloss_follows_the_run(card, tiny_prior) -> None:
    card(7, 5)  # a T4: the trainer picks fp16, and so does the prior
    assert DiffLoss(tiny_prior).autocast_dtype("cuda") == torch.float16
    assert DiffLoss(tiny_prior, autocast="bf16").autocast_dtype("cuda") == torch.bfloat16
    assert DiffLoss(tiny_prior, autocast=False).autocast_dtype("cuda") is None
    assert DiffLoss(tiny_prior, autocast="no").autocast_dtype("cuda") is None
    assert DiffLoss(tiny_prior).autocast_dtype("cpu") is None  # the CPU stays float32
    from diffloss.training import build_terms

    term = build_terms(TrainConfig(loss="l1+diffloss", mixed_precision="no"), tiny_prior)["diffloss"]
    assert term.diffloss.autocast_dtype("cuda") is None  # a float32 run keeps its prior in float32


def test_without_cuda_everything_is_float32() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    assert native_half("cuda") == "no" and autocast_dtype("cuda") is None
    assert TrainConfig().resolved_mixed_precision() == "no"


@pytest.mark.parametrize("bad", ["fp8", 3, torch.int8])
def test_a_bad_autocast_is_one_clear_error(tiny_prior, bad) -> None:
    with pytest.raises(ValueError, match="autocast"):
        DiffLoss(tiny_prior, autocast=bad)


def _loss_and_grad(prior, autocast):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    z = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1).requires_grad_()
    out = DiffLoss(prior, lambda_sem=0.03, t_range=(0, 200), autocast=autocast)(
        z, x, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    return out.loss.detach(), z.grad


def test_fp16_diffloss_agrees_with_float32(tiny_prior) -> None:
    """On the CPU's fp16 autocast: the loss within 1e-3 relative, the gradient within 2 %
    (measured here: 1.6e-4 and 0.55 % with the shipped tiny prior)."""
    ref_loss, ref_grad = _loss_and_grad(tiny_prior, False)
    loss, grad = _loss_and_grad(tiny_prior, torch.float16)
    assert abs(float(loss - ref_loss)) <= 1e-3 * float(ref_loss)
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < 0.02


def test_a_prior_that_overflows_in_fp16_falls_back_to_float32(tiny_prior) -> None:
    with torch.no_grad():
        tiny_prior.unet.conv_out.weight.mul_(1e6)  # ε ~ 1e5: past fp16's 65504
    ref_loss, _ = _loss_and_grad(tiny_prior, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss, grad = _loss_and_grad(tiny_prior, "fp16")
    notes = [w for w in caught if "overflow in float16" in str(w.message)]
    assert len(notes) == 1
    assert torch.isfinite(loss) and torch.equal(loss, ref_loss) and torch.isfinite(grad).all()
