"""LPIPS (issue 21): computed with a real backbone when its weights are cached, a clear
"unavailable offline" otherwise, never a random backbone behind the user's back.

No test downloads anything: the download function is replaced by one that fails, and the
"cached" backbone is a file this test writes into a temporary hub folder (its weights are
random, which is fine for checking the wiring, and never a reported number)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from diffloss import cli
from diffloss.lpips import BACKBONE_FILES, LPIPSUnavailable, load_lpips
from diffloss.training import TrainConfig, evaluate, train

pytest.importorskip("torchmetrics")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache and a download that fails as it does without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known (test: offline)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def cached_alexnet(offline_hub):
    offline_hub.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(),
               offline_hub / BACKBONE_FILES["alex"])
    return offline_hub


def test_offline_without_cached_weights_is_a_clear_error(offline_hub):
    with pytest.raises(LPIPSUnavailable) as info:
        load_lpips("alex")
    msg = str(info.value)
    assert "unavailable offline" in msg and BACKBONE_FILES["alex"] in msg
    assert str(offline_hub / BACKBONE_FILES["alex"]) in msg  # where to put the file
    with pytest.raises(ValueError, match="alex"):
        load_lpips("resnet")


def test_cached_backbone_gives_per_image_lpips_equal_to_torchmetrics(cached_alexnet):
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

    metric = load_lpips("alex")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 40, 48, generator=g), torch.rand(3, 3, 40, 48, generator=g)
    d = metric(x, y)
    assert d.shape == (3,)
    assert torch.allclose(metric(x, x), torch.zeros(3), atol=1e-6)  # identical images: 0
    assert torch.allclose(metric(y, x), d, atol=1e-6)  # symmetric
    ref = torch.stack([learned_perceptual_image_patch_similarity(a[None], b[None], net_type="alex",
                                                                 normalize=True)
                       for a, b in zip(x, y)])
    assert torch.allclose(d, ref, atol=1e-6)
    assert torch.allclose(metric(x[0], y[0]), d[:1])  # one 3-D image counts as a batch of 1
    with pytest.raises(ValueError, match="at least 31 pixels"):
        metric(x[..., :30], y[..., :30])


def _tiny_run(tmp_path) -> TrainConfig:
    c = TrainConfig(crop=32, batch=2, iterations=1, eval_every=0, eval_max_size=200, max_size=200,
                    train_items=8, val=1, seed=0, cpu=True, out=str(tmp_path / "run"))
    train(c, progress=False)
    return c


def test_evaluate_and_the_command_line_report_lpips(tmp_path, cached_alexnet, capsys):
    from diffloss.data import SyntheticHaze

    metric = load_lpips("alex")
    ds = SyntheticHaze("ood_test", n=2, max_size=48)
    res = evaluate(torch.nn.Identity(), ds, device="cpu", lpips=metric)
    assert res.lpips is not None and all("lpips" in r for r in res.per_image)
    assert res.lpips == pytest.approx(sum(r["lpips"] for r in res.per_image) / 2)
    assert evaluate(torch.nn.Identity(), ds, device="cpu").lpips is None

    c = _tiny_run(tmp_path)
    assert cli.main(["evaluate", c.out, "--which", "last", "--cpu", "--lpips"]) == 0
    assert "LPIPS (alex)" in capsys.readouterr().out


def test_command_line_lpips_offline_stops_before_any_work(tmp_path, offline_hub, capsys):
    c = _tiny_run(tmp_path)
    assert cli.main(["evaluate", c.out, "--which", "last", "--cpu", "--lpips"]) == 1
    err = capsys.readouterr().err
    assert "unavailable offline" in err and "Traceback" not in err
