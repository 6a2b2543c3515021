"""A Gaussian denoiser D(y, σ) as a diffusion prior: Tweedie's ε, its valid timesteps, gradients."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from diffloss import DiffusionPrior
from diffloss.loss import DiffLoss
from diffloss.priors import DenoiserPrior, FFDNet, noise_level, t_range_for_sigma
from diffloss.schedule import NoiseSchedule


class Oracle(nn.Module):
    """A denoiser that knows the clean image: D(y, σ) = x_0' whatever y (the ideal denoiser at σ → 0)."""

    def __init__(self, clean01: torch.Tensor) -> None:
        super().__init__()
        self.mid = nn.Identity()
        self.register_buffer("clean", clean01)
        self.w = nn.Parameter(torch.ones(()))  # a parameter, for device/dtype

    def forward(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.mid(self.clean * self.w + 0 * y)


def test_a_denoiser_that_returns_x0_gives_the_noise_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    prior = DenoiserPrior(Oracle(x01).double(), sigma_max=1.0, hspace_layer="mid")
    eps = torch.randn(x01.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 40, prior.valid_t_range[1]])
    xt = prior.schedule.q_sample(prior.encode(x01), t, eps)
    out = prior(xt, t)
    torch.testing.assert_close(out.eps, eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(out.hspace, x01)


def test_the_noise_level_of_the_schedule_matches_diffusers() -> None:
    """σ_t = √(1−ᾱ_t)/(2√ᾱ_t), with ᾱ_t from diffusers' own DDPMScheduler (an independent table)."""
    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()
    expected = (1 - ab).sqrt() / (2 * ab.sqrt())
    # diffusers keeps ᾱ in float32: agreement to its precision (σ_0 is the most sensitive)
    torch.testing.assert_close(noise_level(NoiseSchedule.linear()), expected, rtol=2e-4, atol=0)
    # y = (x_t/√ᾱ_t + 1)/2 has exactly that noise: x_0' + σ_t·ε
    lo, hi = t_range_for_sigma(NoiseSchedule.linear(), 0.0, 75 / 255)
    assert (lo, hi) == (0, 167)
    assert expected[167] <= 75 / 255 < expected[168]


def test_gradcheck_through_a_denoiser_prior_in_diffloss() -> None:
    torch.manual_seed(0)
    net = FFDNet(width=4, depth=3).double()
    prior = DenoiserPrior(net, sigma_max=75 / 255, hspace_layer="model.1", sample_size=8, downsampling=2)
    loss = DiffLoss(prior, lambda_sem=0.5)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    z = (x * 0.9 + 0.05).requires_grad_(True)

    def f(z: torch.Tensor) -> torch.Tensor:
        return loss(z, x, generator=torch.Generator().manual_seed(3)).loss

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    assert not any(p.requires_grad for p in prior.parameters())


def test_timesteps_beyond_the_denoisers_noise_levels_are_refused_in_one_line() -> None:
    prior = DenoiserPrior(FFDNet(width=4, depth=3), sigma_max=75 / 255, hspace_layer="model.1",
                          downsampling=2)
    assert prior.valid_t_range == (0, 167)
    xt = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"outside this denoiser's range.*0\.\.167") as err:
        prior(xt, torch.tensor([10, 400]))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"t_range \(0, 200\) goes beyond.*0\.\.167"):
        DiffLoss(prior, t_range=(0, 200))
    assert DiffLoss(prior).t_range == (0, 167)  # the default is the denoiser's own range
    assert DiffLoss(prior, t_range=(0, 50)).t_range == (0, 50)


def test_hspace_alone_is_the_same_tensor_as_in_the_full_call() -> None:
    torch.manual_seed(0)
    prior = DenoiserPrior(FFDNet(width=8, depth=5), sigma_max=0.3, hspace_layer="model.5",
                          downsampling=2)
    xt, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 60])
    torch.testing.assert_close(prior.hspace(xt, t), prior(xt, t).hspace)
    assert prior(xt, t).hspace.shape == (2, 8, 4, 4)


def test_bad_construction_is_one_clear_error() -> None:
    net = FFDNet(width=4, depth=3)
    with pytest.raises(ValueError, match="hspace_layer 'nope' is not a layer"):
        DenoiserPrior(net, sigma_max=0.3, hspace_layer="nope")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        DenoiserPrior(net, sigma_max=0.0, hspace_layer="model.1")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DenoiserPrior(lambda y, s: y, sigma_max=0.3, hspace_layer="model.1")  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="state_dict"):
        DenoiserPrior(net, sigma_max=0.3, hspace_layer="model.1").save_pretrained("x")


def test_from_denoiser_is_a_diffusion_prior_the_trainer_takes() -> None:
    prior = DiffusionPrior.from_denoiser(FFDNet(width=4, depth=3), sigma_max=0.3,
                                         hspace_layer="model.1", downsampling=2)
    assert isinstance(prior, DiffusionPrior) and not prior.latent
    assert prior.sample_size == 64 and prior.downsampling_factor == 2
    prior.train()
    assert not prior.training  # frozen stays frozen
