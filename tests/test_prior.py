"""Tests of diffloss.prior: the frozen diffusion U-Net behind DiffLoss (issue 3).

Most tests use tiny random ``UNet2DModel``s (a few thousand parameters, 8-16 pixel inputs) so
the file runs in well under a minute on two CPU cores; one test checks the tiny prior that ships
in ``diffloss/assets/tiny_prior`` against the issue's acceptance criteria.
"""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_conditional_unet, make_tiny_prior
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from diffloss import cli
from diffloss.prior import (
    PROVENANCE,
    TINY_PRIOR_DIR,
    DiffusionPrior,
    PriorOutput,
    evaluate_loss,
    random_crops,
    tiny_unet_config,
    train_tiny,
)
from diffloss.schedule import NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


def make_unet(out_channels: int = 3, sample_size: int = 16, seed: int = 0, **kw) -> UNet2DModel:
    """A tiny random U-Net: two levels (8, 16 channels), downsampling factor 2, attention in the middle."""
    torch.manual_seed(seed)
    cfg = dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
    )
    cfg.update(kw)
    return UNet2DModel(**cfg)


def make_prior(schedule: NoiseSchedule | None = None, **kw) -> DiffusionPrior:
    return DiffusionPrior(make_unet(**kw), schedule)


def inputs(b: int = 2, size: int = 16, seed: int = 1, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    xt = torch.randn(b, 3, size, size, generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (b,), generator=g)
    return xt, t


class CallCounter:
    """Counts calls of a module (a pre-hook: it also sees calls whose forward hooks raise)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, *_args) -> None:
        self.calls += 1


def recompute_mid_block(unet: UNet2DModel, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The middle block's output, computed step by step as in ``UNet2DModel.forward`` (diffusers
    0.3x-0.4x, unet_2d.py: time projection + embedding, conv_in, down blocks, mid block)."""
    emb = unet.time_embedding(unet.time_proj(t).to(xt.dtype))
    h = unet.conv_in(xt)
    for block in unet.down_blocks:
        h, _res = block(hidden_states=h, temb=emb)
    return unet.mid_block(h, emb)


# ------------------------------------------------------------------ h-space: one call, right tensor
@pytest.mark.parametrize("arch", ["plain", "attention"])
def test_hooked_hspace_is_the_middle_block_output(arch: str, request) -> None:
    # "attention": conftest's tiny prior, with attention in the down and up blocks too
    prior = make_prior() if arch == "plain" else request.getfixturevalue("tiny_prior")
    xt, t = inputs()
    with torch.no_grad():
        out = prior(xt, t)
        expected = recompute_mid_block(prior.unet, xt, t)
    assert isinstance(out, PriorOutput)
    assert out.hspace.shape == (2, 16, 8, 8)  # 16 channels at 16 / 2
    assert out.eps.shape == xt.shape
    assert out.variance is None
    torch.testing.assert_close(out.hspace, expected, rtol=0, atol=0)
    # not trivially equal: a different t gives a different h-space
    with torch.no_grad():
        other = recompute_mid_block(prior.unet, xt, torch.tensor([500, 10]))
    assert not torch.allclose(other, expected)


def test_eps_comes_from_the_same_single_unet_call() -> None:
    prior = make_prior()
    xt, t = inputs()
    unet_calls = CallCounter(prior.unet)
    mid_calls = CallCounter(prior.unet.mid_block)
    with torch.no_grad():
        out = prior(xt, t)
        direct = prior.unet(xt, t).sample
    assert unet_calls.calls == 2 and mid_calls.calls == 2  # one call each: prior(...) and direct
    torch.testing.assert_close(out.eps, direct, rtol=0, atol=0)


def test_hspace_method_equals_full_call_and_skips_the_up_path() -> None:
    prior = make_prior()
    xt, t = inputs()
    up = CallCounter(prior.unet.up_blocks[0])
    conv_out = CallCounter(prior.unet.conv_out)
    mid = CallCounter(prior.unet.mid_block)
    with torch.no_grad():
        h = prior.hspace(xt, t)
    assert (mid.calls, up.calls, conv_out.calls) == (1, 0, 0)
    with torch.no_grad():
        full = prior(xt, t)
    assert (mid.calls, up.calls, conv_out.calls) == (2, 1, 1)
    assert torch.equal(h, full.hspace)
    # the early exit leaves no state behind: the bare U-Net and the prior still run to the end
    with torch.no_grad():
        h2 = prior.hspace(xt, t)
        sample = prior.unet(xt, t).sample
    assert torch.equal(h2, h)
    assert sample.shape == xt.shape and up.calls == 2


def test_hspace_state_is_reset_after_an_error_inside_the_unet() -> None:
    prior = make_prior()
    xt, t = inputs()

    def boom(*_args):
        raise RuntimeError("boom")

    handle = prior.unet.down_blocks[0].register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        prior.hspace(xt, t)
    with pytest.raises(RuntimeError, match="boom"):
        prior(xt, t)
    handle.remove()
    with torch.no_grad():
        out = prior(xt, t)  # runs to the end: no stale stop flag, a fresh capture list
    assert out.eps.shape == xt.shape
    torch.testing.assert_close(out.hspace, prior.hspace(xt, t).detach(), rtol=0, atol=0)


# ------------------------------------------------------------------ gradients to x_t
def _directional_check(fn, x: torch.Tensor, n_dirs: int = 3, h: float = 1e-6) -> float:
    """Compare <w, J v> from autograd with central differences (f(x+hv) - f(x-hv)) / 2h, float64.
    Returns the gradient norm (must be non-zero)."""
    g = torch.Generator().manual_seed(123)
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    w = torch.randn(y.shape, generator=g, dtype=x.dtype)
    (grad,) = torch.autograd.grad((y * w).sum(), x)
    for _ in range(n_dirs):
        v = torch.randn(x.shape, generator=g, dtype=x.dtype)
        with torch.no_grad():
            fd = ((fn(x + h * v) - fn(x - h * v)) * w).sum() / (2 * h)
        an = (grad * v).sum()
        assert torch.isclose(an, fd, rtol=1e-6, atol=1e-9), (float(an), float(fd))
    return float(grad.norm())


def test_gradients_to_xt_match_finite_differences_float64() -> None:
    prior = make_prior(sample_size=8).double()
    xt, t = inputs(b=2, size=8, dtype=torch.float64)
    assert _directional_check(lambda x: prior(x, t).eps, xt) > 1e-3
    assert _directional_check(lambda x: prior(x, t).hspace, xt) > 1e-3
    assert _directional_check(lambda x: prior.hspace(x, t), xt) > 1e-3
    # and torch's own checker on a 1x3x8x8 input (random projections)
    x1 = xt[:1].detach().clone().requires_grad_(True)
    t1 = t[:1]
    assert torch.autograd.gradcheck(lambda x: prior(x, t1).eps, (x1,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: prior.hspace(x, t1), (x1,), fast_mode=True)


def test_hspace_method_gradient_equals_full_call_gradient() -> None:
    prior = make_prior()
    xt, t = inputs()
    x1 = xt.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(prior.hspace(x1, t).square().sum(), x1)
    x2 = xt.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(prior(x2, t).hspace.square().sum(), x2)
    assert g1.abs().sum() > 0
    torch.testing.assert_close(g1, g2)


# ------------------------------------------------------------------ learned variance
def test_learned_variance_unet_splits_eps_and_variance() -> None:
    prior = make_prior(out_channels=6)
    assert prior.learned_variance
    xt, t = inputs()
    with torch.no_grad():
        out = prior(xt, t)
        full = prior.unet(xt, t).sample
    assert full.shape[1] == 6
    assert out.eps.shape == xt.shape and out.variance is not None and out.variance.shape == xt.shape
    assert torch.equal(out.eps, full[:, :3])
    assert torch.equal(out.variance, full[:, 3:])
    assert torch.equal(prior.eps(xt, t), full[:, :3])
    assert not make_prior().learned_variance


# ------------------------------------------------------------------ frozen
class RestorerWithPrior(nn.Module):
    def __init__(self, prior: DiffusionPrior) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.restorer = nn.Conv2d(3, 3, 3, padding=1)
        self.prior = prior


def test_prior_is_frozen_and_stays_in_eval_mode() -> None:
    prior = make_prior()
    assert all(not p.requires_grad for p in prior.parameters())
    assert not prior.training and not any(m.training for m in prior.modules())
    parent = RestorerWithPrior(prior)
    parent.train()
    assert parent.training and parent.restorer.training
    assert not any(m.training for m in prior.modules())
    prior.train()
    assert not any(m.training for m in prior.modules())
    parent.eval()
    parent.train(True)
    assert not any(m.training for m in prior.modules())


def test_optimizer_step_through_the_prior_changes_only_the_restorer() -> None:
    prior = make_prior()
    parent = RestorerWithPrior(prior).train()
    before = {k: v.detach().clone() for k, v in prior.state_dict().items()}
    restorer_before = [p.detach().clone() for p in parent.restorer.parameters()]
    # every parameter handed to the optimizer, with weight decay: a prior parameter would move
    # if it ever had a gradient
    opt = torch.optim.AdamW(parent.parameters(), lr=1e-2, weight_decay=0.1)

    g = torch.Generator().manual_seed(7)
    y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([100, 600])
    z = parent.restorer(y)
    zt = prior.schedule.q_sample(z, t, noise)
    xt = prior.schedule.q_sample(x, t, noise)
    out_z, out_x = prior(zt, t), prior(xt, t)
    # no pixel term: every gradient reaching the restorer went through the frozen U-Net
    loss = F.mse_loss(out_z.eps, out_x.eps) + F.mse_loss(out_z.hspace, out_x.hspace)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parent.restorer.parameters())
    opt.step()

    for name, p in prior.named_parameters():
        assert p.grad is None, name
        assert not p.requires_grad, name
    after = prior.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # bitwise
    for p0, p1 in zip(restorer_before, parent.restorer.parameters(), strict=True):
        assert not torch.equal(p0, p1)


# ------------------------------------------------------------------ save / load
SCHEDULES = {
    "linear": (
        NoiseSchedule.linear(),
        {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    ),
    "cosine": (NoiseSchedule.cosine(), {"beta_schedule": "squaredcos_cap_v2"}),
    "custom": (
        NoiseSchedule.from_betas(
            torch.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
        ),
        {"beta_schedule": "linear"},  # diffusers' default name; trained_betas take precedence
    ),
}


@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_save_pretrained_round_trip(tmp_path, kind: str) -> None:
    schedule, expected_cfg = SCHEDULES[kind]
    prior = make_prior(schedule)
    prior.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    cfg = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert cfg["num_train_timesteps"] == 1000
    assert cfg["prediction_type"] == "epsilon"
    assert cfg["variance_type"] == "fixed_small"
    for key, value in expected_cfg.items():
        assert (
            cfg[key] == pytest.approx(value) if isinstance(value, float) else cfg[key] == value
        ), key
    if kind == "custom":
        assert torch.equal(torch.tensor(cfg["trained_betas"], dtype=torch.float64), schedule.betas)
    else:
        assert cfg["trained_betas"] is None

    loaded = DiffusionPrior.from_pretrained(tmp_path)
    assert torch.equal(loaded.schedule.betas, schedule.betas)
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training
    xt, t = inputs()
    with torch.no_grad():
        a, b = prior(xt, t), loaded(xt, t)
    assert torch.equal(a.eps, b.eps) and torch.equal(a.hspace, b.hspace)
    # diffusers itself reads the same schedule from the folder
    ddpm = DDPMScheduler.from_pretrained(tmp_path)
    torch.testing.assert_close(ddpm.betas.double(), schedule.betas, rtol=1e-6, atol=0)


def test_round_trip_learned_variance_and_pipeline_layout(tmp_path) -> None:
    prior = make_prior(NoiseSchedule.cosine(), out_channels=6)
    prior.save_pretrained(tmp_path / "flat")
    cfg = json.loads((tmp_path / "flat" / "scheduler_config.json").read_text())
    assert cfg["variance_type"] == "learned_range"
    # a diffusers pipeline folder: unet/ and scheduler/ subfolders
    prior.unet.save_pretrained(tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    xt, t = inputs()
    for folder in ("flat", "pipe"):
        loaded = DiffusionPrior.from_pretrained(tmp_path / folder)
        assert torch.equal(loaded.schedule.betas, NoiseSchedule.cosine().betas), folder
        with torch.no_grad():
            assert torch.equal(loaded(xt, t).variance, prior(xt, t).variance), folder


def test_missing_scheduler_config_means_default_linear_schedule(tmp_path) -> None:
    prior = make_prior(NoiseSchedule.cosine())
    prior.unet.save_pretrained(tmp_path)
    loaded = DiffusionPrior.from_pretrained(tmp_path)
    assert torch.equal(loaded.schedule.betas, NoiseSchedule.linear().betas)


# ------------------------------------------------------------------ loading errors
def test_unknown_hub_id_offline_gives_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; set the live flag as well
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError) as info:
        DiffusionPrior.from_pretrained("diffloss-tests/no-such-prior", cache_dir=tmp_path / "hf")
    msg = str(info.value)
    assert "diffloss-tests/no-such-prior" in msg
    assert "not a local folder" in msg
    assert "huggingface-cli download" in msg and "save_pretrained" in msg


def test_unreachable_hub_looks_for_the_unet_subfolder_in_the_cache_only(monkeypatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[dict] = []

    def fake_from_pretrained(repo_id, subfolder=None, **kw):
        calls.append({"subfolder": subfolder, **kw})
        try:
            raise LocalEntryNotFoundError("cannot reach the hub and the file is not cached")
        except LocalEntryNotFoundError:
            raise OSError(f"{repo_id} does not appear to have a file named config.json.")  # noqa: B904

    monkeypatch.setattr(UNet2DModel, "from_pretrained", fake_from_pretrained)
    with pytest.raises(OSError, match="could not be fetched"):
        DiffusionPrior.from_pretrained("someone/some-prior", revision="main")
    assert [c["subfolder"] for c in calls] == [None, "unet"]
    assert "local_files_only" not in calls[0]
    assert calls[1]["local_files_only"] is True and calls[1]["revision"] == "main"


def test_local_folder_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json") as info:
        DiffusionPrior.from_pretrained(tmp_path / "empty")
    assert "save_pretrained" in str(info.value)
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        DiffusionPrior.from_pretrained(tmp_path / "weights.pt")


def test_constructor_errors() -> None:
    with pytest.raises(TypeError, match="UNet2DModel"):
        DiffusionPrior(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="timesteps"):
        DiffusionPrior(make_unet(num_train_timesteps=1000), NoiseSchedule.linear(T=500))


# ------------------------------------------------------------------ bad inputs
@pytest.fixture(scope="module")
def prior4() -> DiffusionPrior:
    """The tiny prior's own architecture at width 8: three levels, downsampling factor 4."""
    torch.manual_seed(0)
    return DiffusionPrior(UNet2DModel(**tiny_unet_config(sample_size=16, width=8)))


@pytest.mark.parametrize("method", ["forward", "hspace"])
@pytest.mark.parametrize(
    "xt, t, match",
    [
        (torch.zeros(3, 16, 16), torch.tensor([5]), "4-D"),
        (torch.zeros(1, 1, 3, 16, 16), torch.tensor([5]), "4-D"),
        (torch.zeros(1, 1, 16, 16), torch.tensor([5]), "3 channels"),
        (torch.zeros(1, 4, 16, 16), torch.tensor([5]), "3 channels"),
        (torch.zeros(1, 3, 18, 16), torch.tensor([5]), r"multiples of 4 \(e\.g\. 16×16"),
        (torch.zeros(1, 3, 16, 30), torch.tensor([5]), r"e\.g\. 16×28"),
        (torch.zeros(1, 3, 2, 2), torch.tensor([5]), r"e\.g\. 4×4"),
        (torch.zeros(1, 3, 16, 16), torch.tensor([1000]), "out of range.*0..999"),
        (torch.zeros(1, 3, 16, 16), torch.tensor([-1]), "out of range"),
        (torch.zeros(2, 3, 16, 16), torch.tensor([[5], [6]]), r"shape \(B,\)"),
        (torch.zeros(2, 3, 16, 16), torch.tensor(5), r"shape \(B,\)"),
        (torch.zeros(2, 3, 16, 16), torch.tensor([5, 6, 7]), "one t per image"),
        (torch.zeros(1, 3, 16, 16), 5, "LongTensor"),
        (torch.zeros(1, 3, 16, 16), torch.tensor([0.5]), "integer"),
    ],
)
def test_bad_inputs_get_clear_errors(prior4, method, xt, t, match) -> None:
    fn = prior4 if method == "forward" else prior4.hspace
    with pytest.raises(ValueError, match=match):
        fn(xt, t)


def test_divisibility_message_suggests_a_size_that_works(prior4) -> None:
    with pytest.raises(ValueError) as info:
        prior4(torch.zeros(1, 3, 18, 22), torch.tensor([5]))
    msg = str(info.value)
    assert "18×22" in msg and "downsamples by 4" in msg and "native size 16×16" in msg
    # the suggested size really works
    with torch.no_grad():
        out = prior4(torch.zeros(1, 3, 16, 20), torch.tensor([5]))
    assert out.eps.shape == (1, 3, 16, 20)
    assert prior4.downsampling_factor == 4


# ------------------------------------------------------------------ the shipped tiny prior
def test_shipped_tiny_prior_is_a_real_prior(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from diffloss.data import sample_images

    prior = DiffusionPrior.tiny()
    assert all(not p.requires_grad for p in prior.parameters()) and not prior.training
    assert 1_000_000 <= prior.num_parameters() <= 4_000_000
    weights = TINY_PRIOR_DIR / "diffusion_pytorch_model.safetensors"
    assert weights.exists() and weights.stat().st_size <= 10 * 2**20
    assert torch.equal(prior.schedule.betas, NoiseSchedule.linear().betas)  # DDPM, linear, T = 1000
    provenance = json.loads((TINY_PRIOR_DIR / PROVENANCE).read_text())
    for key in PROVENANCE_KEYS:
        assert key in provenance, key

    xt, t = inputs(b=2, size=32)
    with torch.no_grad():
        out = prior(xt, t)
        h = prior.hspace(xt, t)
    assert out.eps.shape == xt.shape and torch.isfinite(out.eps).all()
    assert torch.isfinite(out.hspace).all() and torch.equal(h, out.hspace)

    # acceptance criteria, on fresh crops (other seeds than training's own evaluation). 64 crops:
    # with 32, (held-out - train) / train spread from -9 % to +20 % over crop seeds; with 64, 0 to 14 %.
    size = prior.sample_size
    crops = {
        split: random_crops(
            [s.image for s in sample_images(split)], 64, size, torch.Generator().manual_seed(77)
        )
        for split in ("train", "test")
    }
    heldout = evaluate_loss(prior.unet, prior.schedule, crops["test"], n_t=10, seed=3)
    train = evaluate_loss(prior.unet, prior.schedule, crops["train"], n_t=10, seed=3)
    torch.manual_seed(0)
    init_unet = UNet2DModel.from_config(prior.unet.config)  # the same architecture, untrained
    # (far from the bound, so a smaller sample is enough: 16 of the held-out crops, 5 t)
    init = evaluate_loss(init_unet, prior.schedule, crops["test"][:16], n_t=5, seed=3)
    assert abs(heldout - train) <= 0.25 * train, (heldout, train)
    assert heldout <= 0.5 * init, (heldout, init)


# ------------------------------------------------------------------ training the tiny prior
# 16-pixel crops and width 8 keep these runs to a few seconds
TRAIN_KW = dict(steps=3, batch_size=2, size=16, width=8, n_eval=4)
TRAIN_ARGV = ["--steps", "3", "--batch-size", "2", "--size", "16", "--width", "8", "--n-eval", "4"]
PROVENANCE_KEYS = (
    "command",
    "steps",
    "wall_time_s",
    "machine",
    "final_running_train_loss",
    "git_commit",
)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("train_tiny") / "prior"
    return train_tiny(out, **TRAIN_KW, progress=False), out


def test_train_tiny_end_to_end(api_run) -> None:
    info, out = api_run
    written = json.loads((out / PROVENANCE).read_text())
    assert written == info
    for key in PROVENANCE_KEYS:
        assert key in written, key
    assert written["steps"] == 3 and written["command"].startswith("train_tiny(")
    assert written["machine"]["cpu_count"] and written["machine"]["torch"] == torch.__version__
    assert written["git_commit"]
    for key in ("final_running_train_loss", "eval_loss_train_crops", "eval_loss_heldout_crops"):
        assert 0 < written[key] < 10, key
    assert set(written["train_images"]).isdisjoint(written["heldout_images"])
    assert (out / "diffusion_pytorch_model.safetensors").exists()

    prior = DiffusionPrior.from_pretrained(out)
    assert prior.num_parameters() == written["parameters"]
    assert prior.sample_size == 16 and prior.downsampling_factor == 4
    assert torch.equal(prior.schedule.betas, NoiseSchedule.linear().betas)
    xt, t = inputs(b=1, size=16)
    with torch.no_grad():
        assert torch.isfinite(prior(xt, t).eps).all()


def test_train_tiny_cli_is_seeded_and_records_its_command(api_run, tmp_path, capsys) -> None:
    argv = ["train-tiny-prior", "--out", str(tmp_path / "cli"), *TRAIN_ARGV, "--no-progress"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    provenance = json.loads((tmp_path / "cli" / PROVENANCE).read_text())
    assert printed["parameters"] == provenance["parameters"]
    assert provenance["command"] == "diffloss " + " ".join(argv)
    assert provenance["steps"] == 3 and provenance["width"] == 8 and provenance["size"] == 16
    assert provenance["eval_protocol"].startswith("4 crops")  # --n-eval reached train_tiny

    # the same settings through the Python API: the same losses and bitwise the same weights (seeded)
    api, api_out = api_run
    for key in ("final_running_train_loss", "eval_loss_train_crops", "eval_loss_heldout_crops"):
        assert api[key] == provenance[key], key
    a = DiffusionPrior.from_pretrained(tmp_path / "cli").state_dict()
    b = DiffusionPrior.from_pretrained(api_out).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------- models the loader cannot use (issue 20, 4)
@pytest.mark.parametrize("subfolder", ["", "unet"])
def test_a_conditional_unet_is_refused_at_load_with_a_message(tmp_path, subfolder, capsys):
    """It used to load with its attention weights left on the meta device, and DiffLoss then
    failed with 'Tensor on device meta'. Latent priors load from their pipeline folder (issue 23);
    a conditional U-Net without its VAE is still refused, in one line."""
    from diffloss import cli

    folder = tmp_path / "sd"
    make_tiny_conditional_unet().save_pretrained(folder / subfolder)
    # alone (no vae/ beside it) it cannot be used: the message says to pass the pipeline folder
    with pytest.raises(ValueError, match=r"UNet2DConditionModel.*(pipeline folder|needs its VAE)"):
        DiffusionPrior.from_pretrained(folder)
    code = cli.main(["train", "--prior", str(folder), "--out", str(tmp_path / "run"), "--cpu",
                     "--iters", "1", "--no-progress", "--max-size", "64", "--crop", "32", "--train-items", "4",
                     "--val", "0", "--eval-every", "0", "--loss", "l1+diffloss"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "UNet2DConditionModel" in err


def test_weights_left_unloaded_are_refused(tmp_path, monkeypatch):
    """Whatever the reason, a U-Net with parameters on the meta device is never handed out."""
    from diffusers import UNet2DModel

    folder = tmp_path / "p"
    make_tiny_prior().save_pretrained(folder)
    real = UNet2DModel.from_pretrained

    def partly_loaded(*args, **kwargs):
        unet = real(*args, **kwargs)
        unet.conv_in.weight = torch.nn.Parameter(torch.empty(unet.conv_in.weight.shape,
                                                             device="meta"))
        return unet

    monkeypatch.setattr(UNet2DModel, "from_pretrained", partly_loaded)
    with pytest.raises(ValueError, match=r"1 of its U-Net's weights are missing.*conv_in.weight"):
        DiffusionPrior.from_pretrained(folder)


def test_train_tiny_prior_refuses_a_bad_output_before_training(tmp_path, capsys):
    """It used to train first and then fail on a file in the way (the work lost)."""
    a_file = tmp_path / "taken.pt"
    a_file.write_text("mine")
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "last.pt").write_text("w")
    for out, message in ((a_file, "is an existing file"), (foreign, "not a prior's (last.pt)")):
        assert cli.main(["train-tiny-prior", "--out", str(out), "--steps", "1",
                         "--no-progress"]) == 1
        captured = capsys.readouterr()
        assert message in captured.err and "train-tiny" not in captured.err + captured.out
    assert a_file.read_text() == "mine" and (foreign / "last.pt").read_text() == "w"
