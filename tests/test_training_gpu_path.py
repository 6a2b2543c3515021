"""The GPU path, exercised on the CPU (issue 13): prior checkpointing, mixed precision choice,
provenance of the prior, and chapter 04 stopping loudly without its data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_prior

from diffloss import profiles
from diffloss.training import TrainConfig, build_terms, train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_prior_checkpointing_changes_memory_not_gradients():
    prior = make_tiny_prior()
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    grads = []
    for on in (True, False):
        term = build_terms(TrainConfig(loss="l1+diffloss", prior_checkpointing=on), prior)["diffloss"]
        assert prior.unet.is_gradient_checkpointing is on
        z = x.clone().requires_grad_(True)
        term(z, y, generator=torch.Generator().manual_seed(0))["diffloss"].backward()
        grads.append(z.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_auto_mixed_precision_is_fp16_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert TrainConfig().resolved_mixed_precision() == expected
    assert TrainConfig(cpu=True).resolved_mixed_precision() == "no"


def test_the_prior_actually_used_is_recorded(tmp_path):
    prior = make_tiny_prior()
    prior.source = "checkpoints/adm-256x256-uncond-diffusers"  # as from_pretrained records it
    c = TrainConfig(loss="l1+diffloss", crop=32, batch=1, iterations=1, eval_every=0,
                    max_size=80, train_items=2, val=0, cpu=True, out=str(tmp_path / "r"))
    train(c, progress=False, prior=prior)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["prior"] == "checkpoints/adm-256x256-uncond-diffusers"


@pytest.mark.skipif((REPO / "data" / "dense_haze").exists(), reason="Dense-Haze is present here")
@pytest.mark.parametrize("profile", ["gpu", "paper"])
def test_chapter_04_stops_in_its_first_cells_without_dense_haze(profile):
    nb = json.loads((REPO / "notebooks" / "04_train_msbdn_dense_haze.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    stop = next(i for i, c in enumerate(code) if "require_assets(" in c)
    assert stop <= 3, "the asset check must come in the chapter's first cells"
    script = "\n\n".join(code[:stop + 1])
    env = dict(os.environ, DIFFLOSS_PROFILE=profile, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop(profiles.FALLBACK_VAR, None)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=REPO / "notebooks", timeout=300)
    assert res.returncode != 0
    assert "MissingAssetError" in res.stderr
    assert profiles.DENSE_HAZE_COMMAND in res.stderr and profiles.ADM_PRIOR_COMMAND in res.stderr


def test_cheaper_diffloss_options_are_unbiased_and_reproducible():
    from diffloss.loss import DiffLoss

    prior = make_tiny_prior()
    z, x = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    full = build_terms(TrainConfig(loss="l1+diffloss"), prior)["diffloss"]
    plain = DiffLoss(prior)
    assert torch.equal(full(z, x, generator=torch.Generator().manual_seed(3))["diffloss"],
                       plain(z, x, generator=torch.Generator().manual_seed(3)).loss)
    # a random half of the batch: DiffLoss of exactly those images
    half = build_terms(TrainConfig(loss="l1+diffloss", diffloss_fraction=0.5), prior)["diffloss"]
    g = torch.Generator().manual_seed(5)
    got = half(z, x, generator=g)["diffloss"]
    g2 = torch.Generator().manual_seed(5)
    keep = torch.randperm(4, generator=g2)[:2]
    assert torch.allclose(got, plain(z[keep], x[keep], generator=g2).loss)
    # every 4th step on average, weighted by 4 where it is applied
    quarter = build_terms(TrainConfig(loss="l1+diffloss", diffloss_every=4), prior)["diffloss"]
    applied = []
    for s in range(200):
        v = quarter(z, x, generator=torch.Generator().manual_seed(s))["diffloss"]
        applied.append(float(v) > 0)
        if s < 20 and float(v) > 0:
            g3 = torch.Generator().manual_seed(s)
            torch.rand((), generator=g3)
            assert torch.allclose(v, 4 * plain(z, x, generator=g3).loss)
    assert 0.15 < sum(applied) / len(applied) < 0.35
    with pytest.raises(ValueError, match="diffloss_fraction"):
        TrainConfig(diffloss_fraction=0.0)
    with pytest.raises(ValueError, match="diffloss_every"):
        TrainConfig(diffloss_every=0)
