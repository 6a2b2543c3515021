"""MSBDN-DFF: sizes, parameter count, gradient flow, determinism, input errors."""

from __future__ import annotations

import pytest
import torch

from diffloss.models import MSBDN
from diffloss.models.msbdn import DecoderDFF, EncoderDFF, count_parameters

PAPER_PARAMS = 31.35e6


@pytest.fixture(scope="module")
def small() -> MSBDN:
    torch.manual_seed(0)
    return MSBDN.small().eval()


def test_full_parameter_count_matches_paper() -> None:
    model = MSBDN()
    n = count_parameters(model)
    print(f"MSBDN() parameters: {n:,} (paper: 31.35 M)")
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.01
    assert n == 31_353_061
    assert (model.width, model.depth, model.level_blocks) == (16, 18, 3)


def test_small_parameter_count() -> None:
    n = count_parameters(MSBDN.small())
    print(f"MSBDN.small() parameters: {n:,}")
    assert 0.5e6 <= n <= 1.0e6
    assert n == 929_899


def test_small_shares_code_path_and_overrides() -> None:
    m = MSBDN.small(depth=2)
    assert type(m) is MSBDN
    assert (m.width, m.depth, m.level_blocks) == (4, 2, 3)
    assert len(m.bottleneck) == 2


def test_dff_structure() -> None:
    m = MSBDN()
    # Encoder fusions at levels 2..5 own 1..4 projection pairs; decoder fusions 1..4 too.
    assert [f.n_earlier for f in m.enc_fusion] == [1, 2, 3, 4]
    assert [f.n_earlier for f in m.dec_fusion] == [1, 2, 3, 4]
    # Level-5 encoder fusion: 256 -> 128 -> 64 -> 32 -> 16.
    ups = m.enc_fusion[3].up
    assert [(u[0].in_channels, u[0].out_channels) for u in ups] == [
        (256, 128),
        (128, 64),
        (64, 32),
        (32, 16),
    ]
    # Level-1 decoder fusion: 16 -> 32 -> 64 -> 128 -> 256.
    downs = m.dec_fusion[3].down
    assert [(d[0].in_channels, d[0].out_channels) for d in downs] == [
        (16, 32),
        (32, 64),
        (64, 128),
        (128, 256),
    ]
    # PReLUs have a single parameter.
    prelus = [mod for mod in m.modules() if isinstance(mod, torch.nn.PReLU)]
    assert prelus and all(p.weight.numel() == 1 for p in prelus)


def test_dff_modules_keep_shape() -> None:
    torch.manual_seed(0)
    enc = EncoderDFF(32, n_earlier=2)
    x = torch.randn(1, 32, 4, 4)
    mem = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)]
    assert enc(x, mem).shape == x.shape
    dec = DecoderDFF(8, n_earlier=2)
    x = torch.randn(1, 8, 16, 16)
    mem = [torch.randn(1, 32, 4, 4), torch.randn(1, 16, 8, 8)]
    assert dec(x, mem).shape == x.shape
    with pytest.raises(ValueError, match="earlier features"):
        dec(x, mem[:1])


@pytest.mark.parametrize("size", [(37, 50), (32, 32), (48, 17), (16, 16), (5, 7), (1, 1)])
def test_output_shape_any_size(small: MSBDN, size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = small(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_padded_size() -> None:
    assert [MSBDN.padded_size(s) for s in (1, 16, 31, 32, 33, 48, 1200, 1601)] == [
        32,
        32,
        32,
        32,
        48,
        48,
        1200,
        1616,
    ]


def test_full_network_runs_on_tiny_input() -> None:
    torch.manual_seed(0)
    model = MSBDN().eval()
    x = torch.rand(1, 3, 21, 40)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    model = MSBDN.small()
    x = torch.rand(2, 3, 37, 50)
    target = torch.rand(2, 3, 37, 50)
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


def test_batch_independence_and_determinism(small: MSBDN) -> None:
    torch.manual_seed(1)
    x = torch.rand(3, 3, 40, 36)
    with torch.no_grad():
        batched = small(x)
        single = torch.cat([small(x[i : i + 1]) for i in range(3)])
        again = small(x)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert torch.equal(batched, again)


def test_input_errors(small: MSBDN) -> None:
    with pytest.raises(ValueError, match="3 input channels"):
        small(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        small(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        small(torch.rand(1, 1, 3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        small(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError):
        MSBDN(width=0)
