"""Shared test fixtures: tiny random diffusion priors that build in milliseconds."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import UNet2DModel

from diffloss.prior import DiffusionPrior
from diffloss.schedule import NoiseSchedule


def make_tiny_unet(out_channels: int = 3, sample_size: int = 16, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=out_channels,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        attention_head_dim=8, norm_num_groups=4, num_train_timesteps=1000,
    )
    # Diffusers zero-initialises nothing here, but make every layer clearly non-trivial.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def make_tiny_conditional_unet(seed: int = 0, sdxl: bool = False):
    """Stable Diffusion's U-Net class, tiny: 4 latent channels, 2 levels, cross-attention width 8;
    ``sdxl``: with SDXL's added text-and-size conditioning (``addition_embed_type="text_time"``)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=8 + 6 * 4) if sdxl else {}
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4, **extra)


def make_tiny_prior(**kw) -> DiffusionPrior:
    return DiffusionPrior(make_tiny_unet(**kw), NoiseSchedule.linear())


@pytest.fixture
def tiny_prior() -> DiffusionPrior:
    return make_tiny_prior()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny networks: as fast on an idle machine, and on a busy
    2-core one two competing threads ran them up to 20x slower. Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def nan_in_diffloss(monkeypatch, part: str, bad_call) -> None:
    """Make DiffLoss's ``part`` (``"nat"`` or ``"sem"``), and so its loss, NaN on the calls
    (counted from 1) for which ``bad_call(n)`` is true: a divergence injected at a known step."""
    from diffloss.loss import DiffLoss

    calls = {"n": 0}
    original = DiffLoss.forward

    def forward(self, restored, target, generator=None):
        out = original(self, restored, target, generator)
        calls["n"] += 1
        if bad_call(calls["n"]):
            setattr(out, part, getattr(out, part) * float("nan"))
            out.loss = self.nat_weight * out.nat + self.lambda_sem * out.sem
        return out

    monkeypatch.setattr(DiffLoss, "forward", forward)


def pytest_report_header(config) -> str:
    """Which torch CPU kernels run the suite (``ATEN_CPU_CAPABILITY`` picks them): a test that
    passes only under one set compares by luck (``make test-kernels`` runs another)."""
    return (f"torch {torch.__version__}, CPU kernels: {torch.backends.cpu.get_cpu_capability()} "
            f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')})")


# -- two workers (make test: pytest-xdist, -n 2 --dist loadscope) ---------------------------------
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one torch thread each (and in the chapters' kernels, which
    # inherit the environment), or the workers' threads compete and tiny networks run many
    # times slower. A test that needs more threads sets them itself.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


#: Test scopes that take minutes, started before all others (make test's two workers).
LONGEST_SCOPES = ("tests/ui/test_chapters_in_browser.py", "chapters")


@pytest.hookimpl(optionalhook=True)  # pytest without xdist: never called, never an error
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``make test``: ``-n 2 --dist loadscope``), each test module runs on
    one worker (its module-scoped fixtures are built once) and every chapter on the same worker,
    in order: chapter 07 reads what chapter 06 wrote. (xdist's own ``loadgroup`` marks do not
    reach the scheduler under pytest 9.2, hence this scheduler.)"""
    if config.getvalue("dist") != "loadscope":
        return None  # another --dist: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class ChaptersTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "chapters" if path.startswith("notebooks/") else path

        def _assign_work_unit(self, node):
            # The longest scopes first (the browser's chapters, nbval's): started last, one of
            # them would run alone on one core at the end.
            for scope in reversed(LONGEST_SCOPES):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return ChaptersTogether(config, log)
