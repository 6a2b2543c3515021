"""The comparison losses of chapter 05 (supplement Sec. 3): perceptual (VGG16, Eq. 5) and
adversarial (PatchGAN, Eq. 7), their trainer options, and the colour / structure maps.

No download ever: the perceptual loss runs on random weights (``weights=None``), and the
"weights present" path reads a fake checkpoint from a temporary torch hub folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from diffloss.comparison_losses import (
    VGG16_LAYERS,
    AdversarialLoss,
    PatchDiscriminator,
    PerceptualLoss,
    vgg16_features,
)
from diffloss.maps import chroma, color_map, color_map_rgb, luma, map_errors, structure_map
from diffloss.training import TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")


def state_hash(sd: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(v.detach().contiguous().numpy().tobytes())
        elif isinstance(v, dict):
            h.update(state_hash({str(kk): vv for kk, vv in v.items()}).encode())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ perceptual


def test_vgg16_features_match_torchvision_layout():
    tv = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # features only
    mine = vgg16_features(VGG16_LAYERS["relu3_3"])
    assert len(mine) == 16
    for i, m in enumerate(mine):
        assert type(m) is type(tv[i]), i
    shapes = {k: v.shape for k, v in tv.state_dict().items() if int(k.split(".")[0]) < 16}
    assert {k: v.shape for k, v in mine.state_dict().items()} == shapes
    mine.load_state_dict({k: tv.state_dict()[k] for k in shapes})
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(mine(x), tv[:16](x))


def test_perceptual_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    loss = PerceptualLoss(weights=None)
    assert loss.layers == ("relu1_2", "relu2_2", "relu3_3") and loss.indices == (3, 8, 15)
    z, x = torch.rand(2, 3, 24, 20), torch.rand(2, 3, 24, 20)
    f = loss.features

    def conv(h, i):
        return F.relu(F.conv2d(h, f[i].weight, f[i].bias, padding=1))

    def phis(img):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        h = (img - mean) / std
        r12 = conv(conv(h, 0), 2)
        r22 = conv(conv(F.max_pool2d(r12, 2), 5), 7)
        r33 = conv(conv(conv(F.max_pool2d(r22, 2), 10), 12), 14)
        return r12, r22, r33

    expected = 0.0
    for a, b, (c, h, w) in zip(phis(z), phis(x), [(64, 24, 20), (128, 12, 10), (256, 6, 5)]):
        assert a.shape[1:] == (c, h, w)
        per_image = ((a - b) ** 2).sum(dim=(1, 2, 3)) / (c * h * w)  # Eq. 5, one image
        expected = expected + per_image.mean()
    got = loss(z, x)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert [m.shape[1] for m in loss.feature_maps(z)] == [64, 128, 256]


def test_perceptual_loss_is_zero_for_identical_images_and_frozen():
    torch.manual_seed(0)
    loss = PerceptualLoss(weights=None).train()
    assert not loss.features.training
    x = torch.rand(1, 3, 16, 16)
    assert loss(x.clone(), x).item() == 0.0
    z = torch.rand(1, 3, 16, 16, requires_grad=True)
    value = loss(z, x)
    value.backward()
    assert value.item() > 0 and z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    one = PerceptualLoss(weights=None, layers=("relu2_2",))
    assert one.indices == (8,) and len(one.features) == 9
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        PerceptualLoss(weights=None, layers=("relu9_9",))


def test_missing_vgg_weights_is_a_clear_error_and_cached_weights_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLOSS_OFFLINE", "1")  # never a real download in a test
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"(?s)not available locally.*IMAGENET1K_V1.*weights=None"):
        PerceptualLoss()
    # A (fake) torchvision checkpoint in the hub cache is read, not downloaded.
    torch.manual_seed(1)
    src = vgg16_features(15)
    (tmp_path / "checkpoints").mkdir()
    torch.save({f"features.{k}": v for k, v in src.state_dict().items()} | {"classifier.0.weight": torch.zeros(1)},
               tmp_path / "checkpoints" / "vgg16-397923af.pth",
               _use_new_zipfile_serialization=False)  # the format of torchvision's real file
    loss = PerceptualLoss()
    assert loss.pretrained
    assert state_hash(loss.features.state_dict()) == state_hash(src.state_dict())


# ------------------------------------------------------------------------------ adversarial


def test_generator_and_discriminator_steps_move_their_own_parameters_only():
    torch.manual_seed(0)
    gen = torch.nn.Conv2d(3, 3, 3, padding=1)
    adv = AdversarialLoss(channels=8)
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    y, x = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    g0 = {k: v.clone() for k, v in gen.state_dict().items()}
    d0 = {k: v.clone() for k, v in adv.discriminator.state_dict().items()}

    # generator step: −log D(g(y)) (Eq. 7) moves g; D gets no gradient and does not move
    z = gen(y)
    g_loss = adv(z, x)
    assert g_loss.item() > 0
    g_loss.backward()
    assert all(p.grad is None for p in adv.parameters())
    assert all(p.requires_grad for p in adv.parameters())  # restored after the frozen call
    g_opt.step()
    g_opt.zero_grad()
    assert any(not torch.equal(v, gen.state_dict()[k]) for k, v in g0.items())
    assert all(torch.equal(v, adv.discriminator.state_dict()[k]) for k, v in d0.items())

    # discriminator step: moves D only
    g1 = {k: v.clone() for k, v in gen.state_dict().items()}
    parts = adv.discriminator_step(gen(y), x)
    assert set(parts) == {"d_loss", "d_real", "d_fake"} and 0 < parts["d_real"].item() < 1
    assert all(p.grad is None for p in gen.parameters())
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in g1.items())
    assert any(not torch.equal(v, adv.discriminator.state_dict()[k]) for k, v in d0.items())
    # the D optimizer state travels in the module's state_dict
    sd = adv.state_dict()
    assert "_extra_state" in sd and sd["_extra_state"]["optimizer"]["state"]
    other = AdversarialLoss(channels=8)
    other.load_state_dict(sd)
    assert state_hash(other.state_dict()) == state_hash(sd)


def test_patch_discriminator_gives_one_logit_per_patch():
    d = PatchDiscriminator(channels=8)
    out = d(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)


# ------------------------------------------------------------------------------ trainer


def cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    values = dict(crop=32, batch=2, iterations=3, eval_every=0, eval_max_size=40, max_size=80,
                  train_items=12, val=0, seed=0, cpu=True, out=str(tmp_path / name),
                  vgg_weights=None, disc_channels=8)
    values.update(kw)
    return TrainConfig(**values)


def test_trainer_loss_options_and_their_gammas(tmp_path):
    assert TrainConfig(loss="l1+perceptual").gamma_for("perceptual") == 1e-3
    assert TrainConfig(loss="l1+adversarial").gamma_for("adversarial") == 5e-3
    assert TrainConfig(loss="l1+diffloss").gamma_for("diffloss") == 1e-3
    assert TrainConfig(loss="l1+adversarial", gamma=0.1).gamma_for("adversarial") == 0.1
    assert TrainConfig(vgg_weights="none").vgg_weights is None
    h = train(cfg(tmp_path, "per", loss="l1+perceptual", iterations=2), progress=False)
    assert h.columns[:6] == ["step", "seconds", "lr", "total", "fidelity", "perceptual"]
    for row in h.rows[1:]:
        assert row["perceptual"] > 0
        assert row["total"] == pytest.approx(row["fidelity"] + 1e-3 * row["perceptual"], rel=1e-5)


def test_adversarial_run_resumes_generator_and_discriminator_bit_identically(tmp_path):
    common = dict(loss="l1+adversarial", iterations=4, lr=1e-3)
    full = train(cfg(tmp_path, "full", **common), progress=False)
    assert {"adversarial", "d_loss", "d_real", "d_fake"} <= set(full.columns)
    for row in full.rows[1:]:
        assert row["total"] == pytest.approx(row["fidelity"] + 5e-3 * row["adversarial"], rel=1e-5)
        assert row["d_loss"] > 0
    c = cfg(tmp_path, "parts", **common)
    train(c, progress=False, stop_after=2)
    half = load_checkpoint(Path(c.out) / "last.pt")["terms"]["adversarial"]
    resumed = train(c, progress=False, resume=True)
    a = load_checkpoint(Path(c.out) / "last.pt")
    b = load_checkpoint(tmp_path / "full" / "last.pt")
    assert state_hash(a["model"]) == state_hash(b["model"])
    assert state_hash(resumed.raw_model.state_dict()) == state_hash(full.raw_model.state_dict())
    da, db = a["terms"]["adversarial"], b["terms"]["adversarial"]
    assert state_hash(da) != state_hash(half)  # the discriminator moved after the resume
    disc = {k: v for k, v in da.items() if k != "loss._extra_state"}
    assert disc and state_hash(disc) == state_hash({k: v for k, v in db.items() if k in disc})
    opt_a, opt_b = da["loss._extra_state"]["optimizer"], db["loss._extra_state"]["optimizer"]
    flat = [(i, k) for i, s in opt_b["state"].items() for k in s]
    assert flat and all(torch.equal(torch.as_tensor(opt_a["state"][i][k]), torch.as_tensor(opt_b["state"][i][k]))
                        for i, k in flat)
    assert [r["d_loss"] for r in resumed.rows] == [r["d_loss"] for r in full.rows]


# ------------------------------------------------------------------------------ maps


def test_color_and_structure_maps():
    grey = torch.full((3, 32, 32), 0.4)
    assert chroma(grey[None]).abs().max() < 1e-6 and luma(grey[None]).mean().item() == pytest.approx(0.4)
    assert color_map(grey).shape == (2, 32, 32) and color_map(grey).abs().max() < 1e-6
    assert structure_map(grey).shape == (32, 32) and structure_map(grey).max() < 1e-5
    # a vertical step edge: structure only at the edge; Sobel magnitude 4·Δ there
    step = torch.zeros(3, 16, 16)
    step[:, :, 8:] = 1.0
    s = structure_map(step)
    assert s[:, 7:9].min().item() == pytest.approx(4.0, abs=1e-4) and s[:, :6].max() < 1e-5
    # a red image has Cr > 0 and the colour map is smooth; its RGB rendering keeps the hue
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 1.0
    assert color_map(red)[0, 1].min() > 0.4
    rgb = color_map_rgb(red)
    assert rgb.shape == red.shape and rgb[0, 0].mean() > rgb[0, 1].mean()
    noise = torch.rand(1, 3, 64, 64)
    assert color_map(noise).std() < chroma(noise).std() / 4  # strongly low-passed
    err = map_errors(noise, noise)
    assert err == {"color_mae": 0.0, "structure_mae": 0.0}
    shifted = map_errors((noise + 0.1).clamp(0, 1), noise)
    assert shifted["structure_mae"] < 0.05 and shifted["color_mae"] < 0.02
    tinted = noise.clone()
    tinted[:, 2] = (tinted[:, 2] + 0.3).clamp(0, 1)
    assert map_errors(tinted, noise)["color_mae"] > 5 * shifted["color_mae"]


def test_lite_perceptual_loss_is_eq5_on_timms_own_intermediate_features():
    """Eq. 5 on EfficientNet-Lite0, against the feature maps timm's forward_intermediates returns."""
    from diffloss.classifier import imagenet_classifier
    from diffloss.comparison_losses import LitePerceptualLoss

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 64, generator=g)
    z = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    loss = LitePerceptualLoss()
    got = loss(z, x)
    net = imagenet_classifier()
    with torch.no_grad():
        fz = net.forward_intermediates((z - 0.5) / 0.5, indices=[0, 1, 2], intermediates_only=True)
        fx = net.forward_intermediates((x - 0.5) / 0.5, indices=[0, 1, 2], intermediates_only=True)
    want = sum(((a - b) ** 2).mean() for a, b in zip(fz, fx))
    assert [f.shape[1] for f in fz] == [16, 24, 40]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    assert float(loss(x, x)) == 0.0
    loss.train()
    assert not loss.stem.training and not loss.blocks.training
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite0 stage"):
        LitePerceptualLoss(layers=("stage9",))


def test_the_trainer_runs_the_lite_perceptual_term(tmp_path):
    c = TrainConfig(loss="l1+perceptual", perceptual_net="efficientnet-lite0", gamma=0.1, crop=32,
                    batch=2, iterations=2, eval_every=0, max_size=64, eval_max_size=64, train_items=4,
                    val=1, seed=0, cpu=True, out=str(tmp_path / "run"))
    h = train(c, progress=False)
    assert all(r.get("perceptual") is not None and r["perceptual"] > 0 for r in h.rows)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["perceptual_net"] == "efficientnet-lite0"
