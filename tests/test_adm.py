"""guided-diffusion (ADM) -> diffusers conversion: exact against guided-diffusion's own outputs.

Fixtures (``tests/fixtures``):
* ``adm_small_reference.pt``: a small ADM U-Net with the flags of the paper's prior (learn_sigma,
  scale-shift norm, resblock up/down, legacy attention order, several heads) run by
  guided-diffusion itself with random weights: its state dict, inputs and outputs.
* ``adm_256x256_uncond_shapes.json``: flags, keys and shapes of ``256x256_diffusion_uncond.pt``.

Run with ``pytest -s tests/test_adm.py`` to see the measured errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffloss import cli
from diffloss.adm import (
    ADM_256_UNCOND,
    adm_scheduler_config,
    adm_unet_config,
    convert_adm_state_dict,
    load_adm_checkpoint,
    normalize_adm_flags,
)

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "adm_small_reference.pt"
SHAPES = FIXTURES / "adm_256x256_uncond_shapes.json"
TOL = 1e-5  # max relative error, float32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (b is the reference)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def ref():
    return torch.load(SMALL, map_location="cpu", weights_only=True)


def run_with_hspace(unet, x, t):
    """Full output and the middle-block output (h-space) of one forward pass."""
    seen = {}
    handle = unet.mid_block.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o))
    try:
        with torch.no_grad():
            out = unet(x, t).sample
    finally:
        handle.remove()
    return out, seen["h"]


@pytest.fixture(scope="module")
def converted(ref):
    return convert_adm_state_dict(ref["state_dict"], ref["config"])


# --------------------------------------------------------------------------- numerics


def test_small_reference_output_and_hspace(ref, converted):
    out, h = run_with_hspace(converted, ref["x"], ref["t"])
    assert out.shape == ref["output"].shape == (2, 6, 32, 32)
    assert h.shape == ref["middle_block_output"].shape
    e_out = rel_err(out, ref["output"])
    e_eps = rel_err(out[:, :3], ref["output"][:, :3])
    e_var = rel_err(out[:, 3:], ref["output"][:, 3:])
    e_h = rel_err(h, ref["middle_block_output"])
    print(
        f"\nADM small reference, float32 max relative error: output {e_out:.2e} "
        f"(eps {e_eps:.2e}, variance {e_var:.2e}), h-space {e_h:.2e}"
    )
    assert e_out <= TOL and e_eps <= TOL and e_var <= TOL
    assert e_h <= TOL


def _legacy_to_new_qkv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder qkv output channels [head][q|k|v][d] -> [q|k|v][head][d]."""
    rest = t.shape[1:]
    d = t.shape[0] // (3 * heads)
    return t.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(t.shape)


def test_new_attention_order_is_equivalent(ref):
    """A QKVAttention (new order) model holding the same weights in the new channel order
    computes the same function; converting it with use_new_attention_order=True must agree."""
    head_channels = ref["config"]["num_head_channels"]
    sd = {}
    for k, v in ref["state_dict"].items():
        if ".qkv." in k:
            v = _legacy_to_new_qkv(v, heads=v.shape[0] // 3 // head_channels)
        sd[k] = v
    unet = convert_adm_state_dict(sd, {**ref["config"], "use_new_attention_order": True})
    out, h = run_with_hspace(unet, ref["x"], ref["t"])
    assert rel_err(out, ref["output"]) <= TOL
    assert rel_err(h, ref["middle_block_output"]) <= TOL


def test_wrong_attention_order_is_detected(ref):
    """Sensitivity: reading a legacy checkpoint with the other qkv order must fail the check."""
    unet = convert_adm_state_dict(
        ref["state_dict"], {**ref["config"], "use_new_attention_order": True}
    )
    out, h = run_with_hspace(unet, ref["x"], ref["t"])
    e_out, e_h = rel_err(out, ref["output"]), rel_err(h, ref["middle_block_output"])
    print(f"\nwrong qkv order: output {e_out:.2e}, h-space {e_h:.2e}")
    assert min(e_out, e_h) > 100 * TOL


def test_timestep_embedding_is_adm_formula():
    """diffusers Timesteps(flip_sin_to_cos=True, freq_shift=0) = ADM's [cos(t w), sin(t w)],
    w_i = exp(-ln(10000) i / half)."""
    from diffusers.models.embeddings import Timesteps

    dim, half = 256, 128
    t = torch.tensor([0, 1, 10, 500, 999])
    w = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].double() * w[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    cfg = adm_unet_config(ADM_256_UNCOND)
    got = Timesteps(dim, cfg["flip_sin_to_cos"], cfg["freq_shift"])(t)
    assert (got.double() - expected).abs().max().item() < 1e-4  # float32 sin/cos of t*w ~ 1e3


# --------------------------------------------------------------------------- the paper's prior


def test_adm_256_flags_match_fixture():
    assert json.loads(SHAPES.read_text())["flags"] == ADM_256_UNCOND


def test_adm_256_unet_config():
    cfg = adm_unet_config(ADM_256_UNCOND)
    assert cfg["sample_size"] == 256
    assert cfg["block_out_channels"] == (256, 256, 512, 512, 1024, 1024)
    assert cfg["down_block_types"] == ("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3
    assert cfg["up_block_types"] == ("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3
    assert cfg["layers_per_block"] == 2
    assert cfg["attention_head_dim"] == 64
    assert cfg["out_channels"] == 6
    assert (cfg["flip_sin_to_cos"], cfg["freq_shift"]) == (True, 0)
    assert (cfg["norm_num_groups"], cfg["attn_norm_num_groups"], cfg["norm_eps"]) == (32, 32, 1e-5)
    assert cfg["resnet_time_scale_shift"] == "scale_shift"
    assert (cfg["downsample_type"], cfg["upsample_type"]) == ("resnet", "resnet")


def test_adm_256_shapes_convert_strictly_on_meta():
    """Every key and shape of 256x256_diffusion_uncond.pt maps (strict load), at no memory cost:
    meta tensors in, meta model out."""
    shapes = json.loads(SHAPES.read_text())["state_dict_shapes"]
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert sum(math.prod(v) for v in shapes.values()) == 552_814_086
    unet = convert_adm_state_dict(sd, ADM_256_UNCOND)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"\nconverted 256x256_diffusion_uncond: {n_params:,} parameters, {len(sd)} ADM tensors")
    assert n_params == 552_814_086
    assert all(p.is_meta for p in unet.parameters())
    # the 32x32 (ds 8), 16x16, 8x8 levels have attention with 64-channel heads
    assert unet.down_blocks[3].attentions[0].heads == 512 // 64
    assert unet.mid_block.attentions[0].heads == 1024 // 64


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"class_cond": True}, "class_cond"),
        ({"resblock_updown": False}, "resblock_updown"),
        ({"use_scale_shift_norm": False}, "use_scale_shift_norm"),
        ({"channel_mult": "2,2,4,4"}, "channel_mult"),
        ({"num_head_channels": -1, "num_heads": 4}, "num_heads"),
        ({"num_head_channels": 24}, "num_head_channels"),
        ({"noise_schedule": "sigmoid"}, "noise_schedule"),
        ({"learn_sigmaa": True}, "learn_sigmaa"),
        ({"num_res_blocks": "two"}, "num_res_blocks"),
    ],
)
def test_unsupported_flags_name_the_flag(ref, change, flag):
    with pytest.raises(ValueError, match=flag):
        convert_adm_state_dict(ref["state_dict"], {**ref["config"], **change})


def test_ignored_flags_are_accepted():
    f = normalize_adm_flags(
        {**ADM_256_UNCOND, "use_fp16": True, "timestep_respacing": "250", "num_heads": 4}
    )
    assert f["use_fp16"] is True
    assert adm_unet_config(f) == adm_unet_config(ADM_256_UNCOND)


def test_missing_extra_and_misshaped_keys_are_listed(ref):
    sd = dict(ref["state_dict"])
    del sd["middle_block.1.qkv.weight"]
    sd["label_emb.weight"] = torch.zeros(1000, 128)
    with pytest.raises(ValueError) as info:
        convert_adm_state_dict(sd, ref["config"])
    msg = str(info.value)
    assert "middle_block.1.qkv.weight" in msg and "missing" in msg
    assert "label_emb.weight" in msg and "unexpected" in msg

    sd = dict(ref["state_dict"])
    sd["out.2.weight"] = torch.zeros(3, 32, 3, 3)  # a learn_sigma=False head
    with pytest.raises(ValueError, match=r"out.2.weight|conv_out.weight"):
        convert_adm_state_dict(sd, ref["config"])

    sd = dict(ref["state_dict"])
    sd["middle_block.1.qkv.weight"] = torch.zeros(64, 64, 1)
    with pytest.raises(ValueError, match="middle_block.1.qkv.weight"):
        convert_adm_state_dict(sd, ref["config"])


def test_flags_that_disagree_with_the_checkpoint_fail(ref):
    with pytest.raises(ValueError, match="does not match the flags"):
        convert_adm_state_dict(ref["state_dict"], {**ref["config"], "num_res_blocks": 3})


def test_load_adm_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_adm_prior"):
        load_adm_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(ValueError, match="junk.pt is a text file, not a PyTorch file"):
        load_adm_checkpoint(junk)
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_adm_checkpoint(a_list)


def test_load_adm_checkpoint_reads_fixture_file(ref):
    """A dict holding the state dict under "state_dict" (the fixture's layout) is accepted."""
    unet = load_adm_checkpoint(SMALL, ref["config"])
    out, _ = run_with_hspace(unet, ref["x"], ref["t"])
    assert rel_err(out, ref["output"]) <= TOL


# --------------------------------------------------------------------------- CLI, scheduler


def test_cli_round_trip(ref, converted, tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    ckpt = tmp_path / "adm_small.pt"
    torch.save(ref["state_dict"], ckpt)
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps({"config": ref["config"]}))
    out_dir = tmp_path / "diffusers"
    assert cli.main(["convert-adm", str(ckpt), str(out_dir), "--flags", str(flags)]) == 0
    assert (out_dir / "config.json").is_file()
    assert (out_dir / "diffusion_pytorch_model.safetensors").is_file()
    assert (out_dir / "scheduler_config.json").is_file()

    unet = UNet2DModel.from_pretrained(out_dir)
    a, ha = run_with_hspace(unet, ref["x"], ref["t"])
    b, hb = run_with_hspace(converted, ref["x"], ref["t"])
    assert torch.equal(a, b) and torch.equal(ha, hb)

    sched = DDPMScheduler.from_pretrained(out_dir)
    assert sched.config.variance_type == "learned_range"
    assert sched.config.num_train_timesteps == 1000
    betas = np.linspace(1e-4, 0.02, 1000)  # guided-diffusion's linear schedule (float64)
    np.testing.assert_allclose(sched.betas.double().numpy(), betas, rtol=1e-6, atol=1e-9)


def test_cli_reports_errors(tmp_path, capsys):
    assert cli.main(["convert-adm", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 1
    assert "not found" in capsys.readouterr().err


def test_scheduler_config_variants():
    from diffusers import DDPMScheduler

    cfg = adm_scheduler_config(ADM_256_UNCOND)
    assert cfg["beta_schedule"] == "linear" and cfg["variance_type"] == "learned_range"
    assert cfg["prediction_type"] == "epsilon"
    cos = adm_scheduler_config({**ADM_256_UNCOND, "noise_schedule": "cosine", "learn_sigma": False})
    assert cos["beta_schedule"] == "squaredcos_cap_v2" and cos["variance_type"] == "fixed_large"
    # guided-diffusion's linear betas scale with 1000 / T
    s4000 = DDPMScheduler(**adm_scheduler_config({**ADM_256_UNCOND, "diffusion_steps": 4000}))
    np.testing.assert_allclose(
        s4000.betas.double().numpy(), np.linspace(2.5e-5, 0.005, 4000), rtol=1e-5
    )
