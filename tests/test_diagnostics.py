"""Artefact energy against numpy's FFT, the prior's denoising loss against a by-hand DDPM loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_prior

from diffloss.diagnostics import high_frequency_error, paired_differences, prior_denoising_loss


def test_high_frequency_error_matches_numpy_and_parseval():
    g = torch.Generator().manual_seed(0)
    z, x = torch.rand(2, 3, 24, 20, generator=g), torch.rand(2, 3, 24, 20, generator=g)
    got = high_frequency_error(z, x, cutoff=0.2)
    e = (z - x).numpy().astype(np.float64)
    f = np.fft.fft2(e)
    fy, fx = np.fft.fftfreq(24)[:, None], np.fft.fftfreq(20)[None, :]
    mask = np.sqrt(fy**2 + fx**2) > 0.2
    high = np.real(np.fft.ifft2(f * mask))  # ideal high-pass of the error
    expected = (high**2).mean(axis=(1, 2, 3))  # Parseval: the same energy in pixel space
    assert np.allclose(got.numpy(), expected, rtol=1e-5)


def test_checkerboard_is_all_high_frequency_and_a_tint_is_none():
    x = torch.zeros(1, 3, 16, 16)
    board = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float() * 0.2 - 0.1
    assert high_frequency_error(x + board, x).item() == pytest.approx(0.01, rel=1e-5)
    assert high_frequency_error(x + 0.3, x).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        high_frequency_error(x, x[:, :1])


def test_prior_denoising_loss_is_the_ddpm_loss_on_each_window():
    prior = make_tiny_prior()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 48, generator=g)  # 2×3 windows of 16×16, nothing left out
    got = prior_denoising_loss(prior, images, timesteps=(10, 300), seed=5)
    gen = torch.Generator().manual_seed(5)
    tiles = [images[:, :, i:i + 16, j:j + 16] * 2 - 1 for i in (0, 16) for j in (0, 16, 32)]
    per_t = []
    for step in (10, 300):
        noise = torch.randn((6, 3, 16, 16), generator=gen)
        losses = []
        for k, tile in enumerate(tiles):
            t = torch.full((2,), step)
            with torch.no_grad():
                eps = prior(prior.schedule.q_sample(tile, t, noise[k].expand_as(tile)), t).eps
            losses.append((eps - noise[k]).square().mean(dim=(1, 2, 3)))
        per_t.append(torch.stack(losses, 1).mean(1))
    assert torch.allclose(got, torch.stack(per_t).mean(0), rtol=1e-5)
    assert torch.equal(got, prior_denoising_loss(prior, images, timesteps=(10, 300), seed=5))


def test_paired_differences():
    out = paired_differences([1.0, 2.0, 3.0], [1.5, 2.0, 4.0])
    assert out["per_seed"] == [0.5, 0.0, 1.0] and out["mean"] == pytest.approx(0.5)
    assert out["sd"] == pytest.approx(0.5)
    assert paired_differences([1.0], [2.0])["sd"] is None
    with pytest.raises(ValueError):
        paired_differences([1.0], [])
