"""Any diffusers prior (issue 23): ε-, v- and x̂_0-prediction, latent priors with a VAE and the
empty prompt, pipeline folders with a text encoder. Every model here is tiny and random: nothing
is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_conditional_unet, make_tiny_unet
from diffusers import AutoencoderKL, DDPMScheduler

from diffloss import DiffLoss
from diffloss.priors import DiffusionPrior, to_epsilon
from diffloss.schedule import NoiseSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ prediction types
@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_conversion_to_epsilon_matches_diffusers(kind):
    """x_t from x_0 and ε; diffusers' own target (get_velocity for v, x_0 itself for "sample")
    must convert back to the very ε that made x_t."""
    torch.manual_seed(0)
    sched = DDPMScheduler(prediction_type=kind, clip_sample=False)
    schedule = NoiseSchedule.from_diffusers_config(dict(sched.config))
    x0, eps = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = schedule.q_sample(x0, t, eps)  # float64 (add_noise's float32 ᾱ_t, divided by √(1−ᾱ_0) = 0.01, is 2e-4 off)
    assert torch.allclose(xt, sched.add_noise(x0, eps, t), atol=1e-5)
    target = sched.get_velocity(x0, eps, t) if kind == "v_prediction" else x0
    # diffusers keeps ᾱ_t in float32, we in float64: agreement to float32 precision
    assert torch.allclose(to_epsilon(target, xt, t, schedule, kind), eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_our_epsilon_gives_diffusers_x0_estimate(kind):
    """For any U-Net output, ε from our conversion and x̂_0 = (x_t − √(1−ᾱ)ε)/√ᾱ agree with the
    x̂_0 that DDPMScheduler.step derives from the same output."""
    torch.manual_seed(1)
    sched = DDPMScheduler(prediction_type=kind, clip_sample=False, thresholding=False)
    schedule = NoiseSchedule.from_diffusers_config(dict(sched.config))
    out, xt = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    for t_val in (3, 400, 990):
        t = torch.tensor([t_val])
        ref = sched.step(out, t_val, xt).pred_original_sample
        eps = to_epsilon(out, xt, t, schedule, kind)
        assert torch.allclose(schedule.predict_x0(xt, t, eps), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_a_v_or_x0_prior_loads_and_its_eps_is_converted(tmp_path, kind):
    """The 'Done when' check: prior(x_t, t).eps = √ᾱ_t·v + √(1−ᾱ_t)·x_t (v), or
    (x_t − √ᾱ_t·x̂_0)/√(1−ᾱ_t) (x_0), with the raw U-Net output; through from_components and
    through from_pretrained (the scheduler config's prediction_type)."""
    unet = make_tiny_unet()
    sched = DDPMScheduler(prediction_type=kind)
    a = DiffusionPrior.from_components(unet, sched)
    a.save_pretrained(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "scheduler_config.json").read_text())
    assert cfg["prediction_type"] == kind
    b = DiffusionPrior.from_pretrained(tmp_path / "p")
    assert a.prediction_type == b.prediction_type == kind
    torch.manual_seed(2)
    xt, t = torch.randn(3, 3, 16, 16), torch.tensor([5, 300, 900])
    raw = unet(xt, t).sample
    abar = torch.as_tensor(sched.alphas_cumprod)[t].view(-1, 1, 1, 1).float()
    want = (abar.sqrt() * raw + (1 - abar).sqrt() * xt if kind == "v_prediction"
            else (xt - abar.sqrt() * raw) / (1 - abar).sqrt())
    for prior in (a, b):
        got = prior(xt, t)
        assert torch.allclose(got.eps, want, atol=1e-5, rtol=1e-4)
        assert torch.equal(got.hspace, prior.hspace(xt, t))


def test_an_unknown_prediction_type_is_refused(tmp_path):
    prior = DiffusionPrior(make_tiny_unet())
    prior.save_pretrained(tmp_path)
    cfg_path = tmp_path / "scheduler_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "prediction_type": "flow"}))
    with pytest.raises(ValueError, match=r"prediction_type='flow'.*supported: 'epsilon', 'v_prediction', 'sample'"):
        DiffusionPrior.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="prediction_type='eps'"):
        DiffusionPrior(make_tiny_unet(), prediction_type="eps")


# ------------------------------------------------------------------ latent priors
def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """Two levels (downsampling 2), 4 latent channels, a scaling factor that is not 1."""
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5)


def tiny_latent_prior(kind: str = "epsilon", sdxl: bool = False) -> DiffusionPrior:
    torch.manual_seed(3)
    hidden = torch.randn(1, 5, 8)
    return DiffusionPrior.from_components(
        make_tiny_conditional_unet(sdxl=sdxl), DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                         beta_end=0.012, prediction_type=kind),
        vae=tiny_vae(), encoder_hidden_states=hidden, text_embeds=torch.randn(1, 8) if sdxl else None)


def test_latent_prior_sizes_are_in_pixels():
    prior = tiny_latent_prior()
    assert prior.latent and prior.vae_scale_factor == 2 and prior.unet_downsampling == 2
    assert prior.downsampling_factor == 4 and prior.sample_size == 16 and prior.unet_sample_size == 8
    assert prior.space_shape((3, 3, 16, 24)) == (3, 4, 8, 12)


def test_encode_is_the_scaled_latent_mean():
    prior = tiny_latent_prior()
    x = torch.rand(2, 3, 16, 16)
    want = prior.vae.encode(x * 2 - 1).latent_dist.mean * 0.5
    assert torch.allclose(prior.encode(x), want, atol=1e-6)
    pixel = DiffusionPrior(make_tiny_unet())
    assert torch.equal(pixel.encode(x), x * 2 - 1)


@pytest.mark.parametrize("kind,sdxl", [("epsilon", False), ("v_prediction", False), ("epsilon", True)])
def test_latent_diffloss_reaches_the_restored_image_only(kind, sdxl):
    """The 'Done when' check: the backward reaches the restored image through U-Net and VAE
    encoder; the prior's parameters get no gradient; the ground-truth branch keeps no graph."""
    prior = tiny_latent_prior(kind, sdxl)
    loss_fn = DiffLoss(prior, lambda_sem=0.1)
    g = torch.Generator().manual_seed(0)
    restored = torch.rand(2, 3, 16, 16, requires_grad=True)
    target = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = loss_fn(restored, target, generator=g)
    assert torch.isfinite(out.loss) and out.nat > 0 and out.sem > 0
    out.loss.backward()
    assert restored.grad is not None and restored.grad.abs().sum() > 0
    assert target.grad is None  # the constant branch: no graph at all
    assert all(p.grad is None and not p.requires_grad for p in prior.parameters())


def test_latent_diffloss_is_the_formula_by_hand():
    """L_nat and L_sem from the parts: encode both with the VAE, noise with shared ε and t,
    compare the converted ε and the middle-block output."""
    prior = tiny_latent_prior("v_prediction")
    loss_fn = DiffLoss(prior, lambda_sem=0.3, channels_last=False)
    z, x = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = loss_fn(z, x, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = loss_fn.sample_t(2, g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    s = prior.schedule
    pz, px = prior(s.q_sample(prior.encode(z), t, eps), t), prior(s.q_sample(prior.encode(x), t, eps), t)
    nat, sem = torch.mean((pz.eps - px.eps) ** 2), torch.mean((pz.hspace - px.hspace) ** 2)
    assert torch.allclose(out.nat, nat, rtol=1e-5) and torch.allclose(out.sem, sem, rtol=1e-5)
    assert torch.allclose(out.loss, nat + 0.3 * sem, rtol=1e-5)


def test_vae_memory_savings_keep_the_loss_and_its_gradient():
    prior = tiny_latent_prior()
    loss_fn = DiffLoss(prior, channels_last=False)
    x = torch.rand(3, 3, 16, 16)
    results = []
    for slicing, checkpointing in ((False, False), (True, True)):
        prior.enable_vae_memory_savings(slicing=slicing, checkpointing=checkpointing)
        z = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        out = loss_fn(z, x, generator=torch.Generator().manual_seed(4))
        out.loss.backward()
        results.append((out.loss.detach(), z.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="pixel prior"):
        DiffusionPrior(make_tiny_unet()).enable_vae_memory_savings()


def test_latent_parts_are_checked():
    unet, vae, hidden = make_tiny_conditional_unet(), tiny_vae(), torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match="needs encoder_hidden_states"):
        DiffusionPrior(unet, vae=vae)
    with pytest.raises(ValueError, match=r"must be 1×L×8"):
        DiffusionPrior(unet, vae=vae, encoder_hidden_states=torch.randn(1, 5, 7))
    with pytest.raises(ValueError, match="latent U-Net needs its VAE"):
        DiffusionPrior(unet, encoder_hidden_states=hidden)
    with pytest.raises(ValueError, match="needs text_embeds"):
        DiffusionPrior(make_tiny_conditional_unet(sdxl=True), vae=vae, encoder_hidden_states=hidden)
    with pytest.raises(ValueError, match="takes none"):
        DiffusionPrior(make_tiny_unet(), encoder_hidden_states=hidden)
    with pytest.raises(ValueError, match=r"x_t must have 4 channels \(VAE latents"):
        DiffusionPrior(unet, vae=vae, encoder_hidden_states=hidden)(torch.randn(1, 3, 8, 8), torch.tensor([1]))


@pytest.mark.parametrize("sdxl", [False, True])
def test_a_saved_latent_prior_loads_back(tmp_path, sdxl):
    a = tiny_latent_prior("v_prediction", sdxl)
    a.save_pretrained(tmp_path / "sd")
    assert (tmp_path / "sd" / "conditioning.safetensors").exists()
    b = DiffusionPrior.from_pretrained(tmp_path / "sd")
    assert b.latent and b.prediction_type == "v_prediction" and b.source == str(tmp_path / "sd")
    assert torch.equal(a.schedule.betas, b.schedule.betas)
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([10, 700])
    xa, xb = a.encode(x), b.encode(x)
    assert torch.allclose(xa, xb, atol=1e-6)
    assert torch.allclose(a(xa, t).eps, b(xb, t).eps, atol=1e-5)


def test_a_damaged_latent_prior_folder_says_to_save_it_again(tmp_path):
    tiny_latent_prior("epsilon", False).save_pretrained(tmp_path / "sd")
    weights = next((tmp_path / "sd" / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a download cut short
    with pytest.raises(OSError, match=rf"cannot load the latent prior in {tmp_path / 'sd'}: .* "
                                      r"incomplete or damaged: download or save it again"):
        DiffusionPrior.from_pretrained(tmp_path / "sd")


# ------------------------------------------------------------------ pipeline folders (text encoder)
def write_tiny_pipeline(folder: Path, sdxl: bool = False) -> None:
    """A diffusers pipeline folder as Stable Diffusion ships it, every part tiny and random."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    make_tiny_conditional_unet(sdxl=sdxl).save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        folder / "scheduler")
    index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    parts = [("tokenizer", "text_encoder", CLIPTextModel)]
    if sdxl:
        parts.append(("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection))
    width = 8 // len(parts)  # the U-Net's cross-attention width is the concatenation's
    for i, (tok_name, enc_name, enc_cls) in enumerate(parts):
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
        (folder / tok_name).mkdir(parents=True)
        (folder / tok_name / "vocab.json").write_text(json.dumps(vocab))
        (folder / tok_name / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(vocab_file=str(folder / tok_name / "vocab.json"),
                            merges_file=str(folder / tok_name / "merges.txt"), model_max_length=5)
        tok.save_pretrained(folder / tok_name)
        torch.manual_seed(10 + i)
        cfg = CLIPTextConfig(vocab_size=6, hidden_size=width, intermediate_size=16, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=5, projection_dim=8)
        enc_cls(cfg).save_pretrained(folder / enc_name)
        index[tok_name] = ["transformers", "CLIPTokenizer"]
        index[enc_name] = ["transformers", enc_cls.__name__]
    (folder / "model_index.json").write_text(json.dumps(index))


def test_a_pipeline_folder_loads_with_the_empty_prompt_encoded(tmp_path):
    pytest.importorskip("transformers")
    from transformers import CLIPTextModel, CLIPTokenizer

    write_tiny_pipeline(tmp_path / "sd")
    prior = DiffusionPrior.from_pretrained(tmp_path / "sd")
    tok = CLIPTokenizer.from_pretrained(tmp_path / "sd" / "tokenizer")
    enc = CLIPTextModel.from_pretrained(tmp_path / "sd" / "text_encoder")
    ids = tok("", padding="max_length", max_length=5, return_tensors="pt").input_ids
    with torch.no_grad():
        want = enc(ids)[0]
    assert prior.encoder_hidden_states.shape == (1, 5, 8)
    assert torch.allclose(prior.encoder_hidden_states, want, atol=1e-6)
    assert not any(isinstance(m, CLIPTextModel) for m in prior.modules())  # the encoder is not kept
    out = DiffLoss(prior)(torch.rand(1, 3, 16, 16, requires_grad=True), torch.rand(1, 3, 16, 16))
    assert torch.isfinite(out.loss)


def test_an_sdxl_like_pipeline_folder_loads(tmp_path):
    pytest.importorskip("transformers")
    write_tiny_pipeline(tmp_path / "xl", sdxl=True)
    prior = DiffusionPrior.from_pretrained(tmp_path / "xl")
    assert prior.encoder_hidden_states.shape == (1, 5, 8) and prior.text_embeds.shape == (1, 8)
    xt = torch.randn(2, 4, 8, 8)
    assert prior(xt, torch.tensor([1, 2])).eps.shape == xt.shape


def test_a_pipeline_without_its_vae_or_text_encoder_is_refused(tmp_path):
    make_tiny_conditional_unet().save_pretrained(tmp_path / "a" / "unet")
    with pytest.raises(ValueError, match=r"no vae/config.json.*needs its VAE"):
        DiffusionPrior.from_pretrained(tmp_path / "a")
    tiny_vae().save_pretrained(tmp_path / "a" / "vae")
    with pytest.raises(FileNotFoundError, match="no text_encoder/"):
        DiffusionPrior.from_pretrained(tmp_path / "a")


def test_a_latent_pipeline_hub_id_is_fetched_whole(tmp_path, monkeypatch):
    """A hub id whose unet/ is a UNet2DConditionModel: the pipeline's files are fetched with one
    snapshot_download (only the parts a latent prior needs) and loaded as a folder. The hub is
    simulated by a local pipeline folder: nothing is downloaded."""
    pytest.importorskip("transformers")
    import huggingface_hub
    from diffusers import UNet2DModel

    from diffloss.priors import loading

    local = tmp_path / "hub-copy"
    write_tiny_pipeline(local)

    def from_pretrained(repo_id, subfolder=None, **kwargs):
        if subfolder is None:
            raise OSError(f"{repo_id} does not appear to have a file named config.json")
        return torch.nn.Identity()

    def load_config(repo_id, subfolder=None, **kwargs):
        return json.loads((local / subfolder / "config.json").read_text())

    fetched = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        fetched.append((repo_id, allow_patterns))
        return str(local)

    monkeypatch.setattr(UNet2DModel, "from_pretrained", from_pretrained)
    monkeypatch.setattr(UNet2DModel, "load_config", load_config)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    prior = DiffusionPrior.from_pretrained("someone/tiny-sd")
    assert prior.latent and prior.source == "someone/tiny-sd"
    assert fetched == [("someone/tiny-sd", loading.PIPELINE_FILES)]
    assert not any("safety_checker" in p or p.endswith(".bin") for p in loading.PIPELINE_FILES)


def test_a_compiled_latent_prior_gives_the_eager_loss():
    """DiffLoss's calls go through the compiled U-Net with the conditioning as keyword arguments
    (dynamo's eager backend here, as in the other CPU tests of compilation)."""
    prior = tiny_latent_prior("v_prediction")
    loss_fn = DiffLoss(prior, lambda_sem=0.1, channels_last=False)
    z, x = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    eager = loss_fn(z, x, generator=torch.Generator().manual_seed(5)).loss
    assert prior.compile_unet(backend="eager")
    compiled = loss_fn(z, x, generator=torch.Generator().manual_seed(5)).loss
    assert torch.allclose(eager, compiled, rtol=1e-5)
