"""DiffLoss: gradient flow through the frozen prior, the authors' no_grad flaw, shared ε and t,
the size policy, and its input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_prior
from torch import nn

from diffloss.loss import DiffLoss, NoGradDiffLoss, restoration_loss


def restorer() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(), nn.Conv2d(8, 3, 3, padding=1))


def images(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    y = (x * 0.6 + 0.3 + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return y, x


def test_diffloss_alone_trains_every_restorer_parameter(tiny_prior):
    net = restorer()
    y, x = images()
    out = DiffLoss(tiny_prior)(net(y), x, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert out.nat > 0 and out.sem > 0


def test_no_grad_variant_gives_exactly_zero_gradients(tiny_prior):
    """The authors' released code wraps both U-Net calls in no_grad: DiffLoss then trains nothing."""
    net = restorer()
    y, x = images()
    g = torch.Generator().manual_seed(0)
    flawed = NoGradDiffLoss(tiny_prior)(net(y), x, generator=g)
    flawed.loss.backward()
    for p in net.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    correct = DiffLoss(tiny_prior)(net(y), x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(flawed.loss, correct.loss)  # same value, no gradient


def test_gradcheck_float64():
    prior = make_tiny_prior()
    prior.unet.double()
    loss = DiffLoss(prior, lambda_sem=0.5)
    _, x = images(b=1, size=4)
    x = x.double()
    z = (x + 0.1).clamp(0, 1).requires_grad_(True)

    def f(z):
        return loss(z, x, generator=torch.Generator().manual_seed(3)).loss

    # fast_mode checks random directional derivatives against finite differences (cheap on a CPU)
    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_identical_images_give_zero_and_different_positive(tiny_prior):
    loss = DiffLoss(tiny_prior, lambda_sem=1.0)
    y, x = images()
    same = loss(x, x.clone(), generator=torch.Generator().manual_seed(0))
    assert same.nat.abs() < 1e-10 and same.sem.abs() < 1e-10 and same.loss.abs() < 1e-10
    diff = loss(y, x, generator=torch.Generator().manual_seed(0))
    assert diff.nat > 0 and diff.sem > 0 and diff.loss > 0


def test_same_generator_same_loss_and_shared_eps_and_t(tiny_prior):
    loss = DiffLoss(tiny_prior)
    y, x = images(b=3)
    a = loss(y, x, generator=torch.Generator().manual_seed(7))
    b = loss(y, x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.t, b.t)
    c = loss(y, x, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a.loss, c.loss)

    calls = []
    hook = tiny_prior.unet.register_forward_pre_hook(lambda m, args: calls.append((args[0].detach(), args[1])))
    out = loss(y, x, generator=torch.Generator().manual_seed(7))
    hook.remove()
    (xt_target, t_target), (xt_restored, t_restored) = calls
    assert torch.equal(t_target, t_restored) and torch.equal(t_target, out.t)
    abar = tiny_prior.schedule.extract("alphas_cumprod", out.t, x)
    # Both x_t carry the same noise: x_t − √ᾱ·x0 is identical in both branches.
    noise_target = xt_target - abar.sqrt() * (x * 2 - 1)
    noise_restored = xt_restored - abar.sqrt() * (y * 2 - 1)
    assert torch.allclose(noise_target, noise_restored, atol=1e-6)
    assert noise_target.abs().max() > 0.01


def test_t_range_and_default(tiny_prior):
    assert DiffLoss(tiny_prior).t_range == (0, 999)
    loss = DiffLoss(tiny_prior, t_range=(100, 120))
    ts = loss.sample_t(1000, torch.Generator().manual_seed(0))
    assert ts.min() >= 100 and ts.max() <= 120 and len(ts.unique()) == 21
    with pytest.raises(ValueError, match="t_range"):
        DiffLoss(tiny_prior, t_range=(10, 1000))


def test_prior_unchanged_and_grad_free_after_training_steps(tiny_prior):
    net = restorer()
    before = {k: v.clone() for k, v in tiny_prior.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = DiffLoss(tiny_prior)
    y, x = images()
    w0 = net[0].weight.clone()
    for i in range(3):
        out = restoration_loss(net(y), x, gamma=1.0, diffloss=loss, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        out.total.backward()
        opt.step()
    for k, v in tiny_prior.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in tiny_prior.parameters())
    assert not torch.equal(net[0].weight, w0)


def test_crop_policy_identical_for_both_images(tiny_prior):
    loss = DiffLoss(tiny_prior)  # native size 16
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 40, 52, generator=g)
    z, xx = loss.fit_to_prior(x.clone(), x.clone() * 0.5, torch.Generator().manual_seed(1))
    assert z.shape == (4, 3, 16, 16)
    assert torch.equal(z * 0.5, xx)  # the same window in both images
    # the crops really come from different places per sample / per seed
    z2, _ = loss.fit_to_prior(x, x, torch.Generator().manual_seed(2))
    assert not torch.equal(z, z2)
    # every crop is a window of its own image
    for i in range(4):
        windows = x[i].unfold(1, 16, 1).unfold(2, 16, 1)  # 3×25×37×16×16
        assert (windows - z[i][:, None, None]).abs().amax(dim=(0, 3, 4)).min() == 0


def test_resize_policy_and_small_images(tiny_prior):
    loss = DiffLoss(tiny_prior, size_policy="resize")
    x = torch.rand(2, 3, 40, 52)
    z, xx = loss.fit_to_prior(x, x.clone())
    assert z.shape == (2, 3, 16, 16) and torch.equal(z, xx)
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(z, ref)
    # a smaller image whose sides divide the downsampling factor is used as it is
    small = torch.rand(2, 3, 8, 12)
    z, _ = DiffLoss(tiny_prior).fit_to_prior(small, small)
    assert z.shape == small.shape
    # not divisible: cropped to the largest multiple of the factor (2 here)
    odd = torch.rand(2, 3, 9, 13)
    z, _ = DiffLoss(tiny_prior).fit_to_prior(odd, odd, torch.Generator().manual_seed(0))
    assert z.shape == (2, 3, 8, 12)
    out = DiffLoss(tiny_prior)(odd, odd * 0.9)
    assert torch.isfinite(out.loss)


def test_nat_weight_zero_uses_hspace_only(tiny_prior):
    ups = []
    tiny_prior.unet.up_blocks[0].register_forward_hook(lambda *a: ups.append(1))
    y, x = images()
    out = DiffLoss(tiny_prior, nat_weight=0.0, lambda_sem=1.0)(y, x, generator=torch.Generator().manual_seed(0))
    assert ups == [] and out.nat == 0 and out.sem > 0
    full = DiffLoss(tiny_prior, lambda_sem=1.0)(y, x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(full.sem, out.sem) and len(ups) == 2
    zero_sem = DiffLoss(tiny_prior, lambda_sem=0.0)(y, x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(zero_sem.loss, full.nat) and torch.allclose(zero_sem.sem, full.sem)


def test_restoration_loss_parts(tiny_prior):
    y, x = images()
    l1 = restoration_loss(y, x)
    assert torch.allclose(l1.total, (y - x).abs().mean()) and l1.diffloss is None
    mse = restoration_loss(y, x, fidelity="mse")
    assert torch.allclose(mse.total, ((y - x) ** 2).mean())
    both = restoration_loss(y, x, gamma=0.5, diffloss=DiffLoss(tiny_prior),
                            generator=torch.Generator().manual_seed(0))
    assert torch.allclose(both.total, both.fidelity + 0.5 * both.diffloss.loss)
    with pytest.raises(ValueError, match="fidelity must be"):
        restoration_loss(y, x, fidelity="l2")


def test_bad_inputs(tiny_prior):
    loss = DiffLoss(tiny_prior)
    y, x = images()
    with pytest.raises(ValueError, match="same shape"):
        loss(y, x[:, :, :8])
    with pytest.raises(ValueError, match="B×3×H×W"):
        loss(y[0], x[0])
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="restored contains 1 non-finite"):
        loss(bad, x)
    with pytest.raises(ValueError, match="target contains 1 non-finite"):
        loss(y, bad)
    with pytest.raises(ValueError, match=r"target has values in \[0, 255\].*\[0, 1\] are expected"):
        loss(y, (x * 255).round().clamp(0, 255).index_fill(0, torch.tensor([0]), 255.0) * 0 + torch.linspace(0, 255, 16))
    with pytest.raises(ValueError, match=r"restored has values in \[-1"):
        loss(y * 2 - 1 - (y.min() * 2 - 1) - 1, x)
    with pytest.raises(ValueError, match="size_policy"):
        DiffLoss(tiny_prior, size_policy="pad")
    with pytest.raises(ValueError, match="multiple"):
        DiffLoss(tiny_prior, prior_size=15)
    with pytest.raises(TypeError, match="DiffusionPrior"):
        DiffLoss(nn.Identity())
