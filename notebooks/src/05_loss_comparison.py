# %% [markdown]
# # Chapter 05 — DiffLoss against the losses people use today
#
# The seed paper's supplement (Section 3) trains the same restoration network under four losses
# and compares the results:
#
# | loss | total | extra weight | what the extra term compares |
# |---|---|---|---|
# | L1 | $\lVert z - x\rVert_1$ | — | pixels |
# | L1 + perceptual | $+\ \gamma\,\mathcal L_\text{per}$ | $\gamma = 0.001$ | VGG16 features (Eq. 5) |
# | L1 + adversarial | $+\ \gamma\,\mathcal L_\text{adv}$ | $\gamma = 0.005$ | a discriminator's verdict (Eq. 7) |
# | L1 + DiffLoss | $+\ \gamma\,(\mathcal L_\text{nat} + \lambda\,\mathcal L_\text{sem})$ | see below | a frozen diffusion prior (Eq. 8) |
#
# with $z = g(y)$ the restored image and $x$ the ground truth. The two comparison terms:
#
# $$\mathcal L_\text{per}(z, x) = \sum_{j} \frac{1}{C_j H_j W_j}\,\big\lVert \phi_j(z) - \phi_j(x)\big\rVert_2^2
# \qquad\text{(supplement Eq. 5)}$$
#
# where $\phi_j$ are the activations of an ImageNet VGG16 at relu1_2, relu2_2 and relu3_3
# (`diffloss.loss.PerceptualLoss`), and
#
# $$\mathcal L_\text{adv}(z) = -\log D(z)\qquad\text{(supplement Eq. 7)}$$
#
# with $D$ a PatchGAN discriminator (one probability per overlapping patch) that is trained **in
# alternation** with the restorer, with its own Adam optimiser, to tell ground truths from
# restorations (`diffloss.loss.AdversarialLoss`; the trainer checkpoints and resumes it with
# the restorer).
#
# This chapter runs the four trainings with the *same* network, data, seed, batches and number
# of steps, then compares PSNR/SSIM, the training cost, the images, and two maps that separate
# **colour** from **structure** (the supplement's Fig. 2).

# %%
import math
import os
import statistics
import time

import matplotlib.pyplot as plt
import torch

from diffloss import current_profile
from diffloss.loss import (
    DiffLoss,
    PatchDiscriminator,
    PerceptualLoss,
    count_parameters,
    fidelity_loss,
    vgg16_weights_available,
    vgg16_weights_path,
)
from diffloss.maps import color_map_rgb, map_errors, structure_map
from diffloss.metrics import psnr, ssim
from diffloss.train import (
    LOSS_TERMS,
    TrainConfig,
    build_datasets,
    build_model,
    load_prior,
    prior_input,
    restore,
    train,
)
from diffloss.viz import image_grid, repo_root, save_figure

profile = current_profile()
print(f"profile: {profile.name} ({profile.description})")
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":
    torch.set_num_threads(1)  # narrow convolutions on small crops: see chapter 04
print(f"device: {device}, torch threads: {torch.get_num_threads()}")
t_chapter = time.perf_counter()

# %% [markdown]
# ## 1. What is available on this machine
#
# Two of the comparisons need pretrained networks that this repository does not ship and never
# downloads by itself:
#
# - the **perceptual loss** needs torchvision's ImageNet VGG16 weights
#   (`VGG16_Weights.IMAGENET1K_V1`, 528 MB). To get them, run once on a machine with internet
#   access (it caches them in `~/.cache/torch/hub/checkpoints/`):
#
#   ```
#   python -c "import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')"
#   ```
#
# - **LPIPS** (a learned perceptual *metric*) needs the `lpips` package and its weights.
#
# When the VGG16 weights are missing, the chapter still runs the third training, but with a
# **randomly initialised VGG16**, and labels it "L1 + random-VGG (control)". That is *not* the
# perceptual loss: random convolutional features are a fixed multi-scale filter bank, not the
# ImageNet features the perceptual loss relies on. It only shows what the term costs and how a
# feature-space penalty of that size moves the training; its numbers must not be read as the
# perceptual loss's.

# %%
have_vgg = vgg16_weights_available()
try:
    import lpips  # noqa: F401

    have_lpips = True
except ImportError:
    have_lpips = False
print(f"VGG16 ImageNet weights at {vgg16_weights_path()}: {'found' if have_vgg else 'NOT found'}")
print(f"LPIPS: {'available' if have_lpips else 'not installed (the table has no LPIPS column)'}")
per_label = "L1 + perceptual" if have_vgg else "L1 + random-VGG (control)"

# %% [markdown]
# ## 2. The runs and the budget
#
# The data and the network are chapter 04's: MSBDN (`MSBDN.small()` on CPU) on synthetic dense
# haze over the bundled images (the two test images, `rocket` and `motorcycle_left`, are never
# trained on), scored on the whole test images (downscaled to 128 px in `ci`, 256 px in `small`,
# full size on a GPU), with chapter 04's learning rate (10⁻⁴) and number of steps per run
# (`profile.train_iters`; a handful in `ci`, which only checks that the chapter runs). One seed:
# four runs must fit the profile's budget.
# There is no validation split here: we report the **last** checkpoint of every run.
#
# **The weights γ.** The perceptual and adversarial terms use the supplement's values,
# γ = 0.001 and γ = 0.005. For DiffLoss, chapter 04 measured that with the tiny prior the
# paper's γ = 0.001 makes the DiffLoss gradient about 10⁻⁴ of L1's, i.e. no constraint at all,
# and uses γ = 1; we do the same. The next cell measures, for each term at its γ, the size of
# the gradient it sends into the network relative to L1's, $\gamma\lVert\nabla_\theta\mathcal
# L_\text{term}\rVert / \lVert\nabla_\theta\mathcal L_1\rVert$, at initialisation: it tells how
# strongly each term can act at all.

# %%
eval_max_size = None if device == "cuda" else {"ci": 128}.get(profile.name, 256)
iterations = 6 if profile.name == "ci" else profile.train_iters
batch = profile.batch_size
base = TrainConfig(model=profile.restorer, crop=profile.crop, batch=batch, iterations=iterations,
                   eval_every=iterations, eval_max_size=eval_max_size, val=0, seed=0,
                   data="synthetic", max_size=eval_max_size,
                   vgg_weights="IMAGENET1K_V1" if have_vgg else None, disc_channels=64)
GAMMA_DIFFLOSS = 1.0  # chapter 04, section 3
runs = {
    "L1": dict(loss="l1"),
    per_label: dict(loss="l1+perceptual", gamma=1e-3),
    "L1 + adversarial": dict(loss="l1+adversarial", gamma=5e-3),
    "L1 + DiffLoss": dict(loss="l1+diffloss", gamma=GAMMA_DIFFLOSS),
}
train_set, _, test_set = build_datasets(base)
print(f"{iterations} steps × {batch} crops of {base.crop}², {len(train_set)} training crops, "
      f"{len(test_set)} test images at {eval_max_size or 'full'} px")

# %%
prior = load_prior({"tiny": "tiny"}.get(profile.prior) or os.environ.get(
    "DIFFLOSS_PRIOR", "checkpoints/adm-256x256-uncond-diffusers")).to(device)
torch.manual_seed(0)
net = build_model(base.model).to(device)
params = list(net.parameters())
terms = {
    per_label: (1e-3, PerceptualLoss(weights=base.vgg_weights).to(device)),
    "L1 + adversarial": (5e-3, PatchDiscriminator(base.disc_channels).to(device)),
    "L1 + DiffLoss": (GAMMA_DIFFLOSS, DiffLoss(prior, lambda_sem=base.lambda_sem)),
}
gen = torch.Generator().manual_seed(0)


def grad_norm(loss: torch.Tensor) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


ratios: dict[str, list[float]] = {label: [] for label in terms}
for k in range(2 if profile.name == "ci" else 4):
    hazy, clear = (torch.stack(x).to(device) for x in zip(*[train_set[batch * k + i][:2] for i in range(batch)]))
    restored = net(hazy)
    g_l1 = grad_norm(fidelity_loss(restored, clear, "l1"))
    for label, (gamma, term) in terms.items():
        if label == "L1 + adversarial":  # −log D(z) with a (random, untrained) discriminator
            logits = term(restored)
            value = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        elif label == "L1 + DiffLoss":
            value = term(prior_input(restored, "st-clamp"), clear, generator=gen).loss
        else:
            value = term(restored, clear)
        ratios[label].append(gamma * grad_norm(value) / g_l1)
for label, r in ratios.items():
    print(f"{label:>26}: γ·|∇term| / |∇L1| = {statistics.mean(r):.2e} (mean of {len(r)} batches)")
del net, terms

# %% [markdown]
# At the supplement's weights the perceptual and adversarial terms are small next to L1 at
# this scale (the adversarial one is measured with an untrained discriminator; once $D$ learns,
# $-\log D(z)$ and its gradient grow; with the ImageNet VGG16 instead of random weights the
# perceptual ratio is different, so measure it again where the weights are present). Keep these ratios in mind when reading the table: a term
# whose gradient is a thousandth of L1's cannot change the result much in a few hundred steps.
#
# ## 3. Four trainings
#
# Same seed ⇒ same initial weights, same batches in the same order. The run folders are
# `runs/05_<profile>/<loss>/`; `overwrite=True` starts each afresh.

# %%
runs_dir = repo_root() / "runs" / f"05_{profile.name}"
histories = {}
for label, kw in runs.items():
    cfg = base.replace(out=str(runs_dir / kw["loss"]), **kw)
    t0 = time.perf_counter()
    histories[label] = train(cfg, overwrite=True, prior=prior, progress=False)
    f = histories[label].final
    print(f"{label:>26}: {time.perf_counter() - t0:5.0f} s, final test PSNR {f['test_psnr']:.2f} dB, "
          f"SSIM {f['test_ssim']:.3f}")

# %% [markdown]
# ## 4. The table
#
# PSNR/SSIM: RGB in [0, 1], mean over the test images, last checkpoint (`diffloss.metrics`).
# *s/step*: the wall time of one training step (restorer forward and backward, the extra term,
# Adam, and for the adversarial loss the discriminator's own step), measured in the next cell on
# one fixed batch, the four losses taking turns so that a machine busy with other work slows
# them alike (median of the rounds; compare them with each other, not with other machines).
# *extra parameters*: what each loss adds to the restorer at training time — the discriminator
# (trained), the VGG16 layers up to relu3_3 (frozen), the diffusion prior (frozen). None of
# them is needed at test time. *colour / structure MAE*: section 6.

# %%
def make_step(cfg: TrainConfig):
    """One training step of ``cfg``'s loss as the trainer does it, on a fixed batch."""
    torch.manual_seed(0)
    net = build_model(cfg.model).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    terms = {n: LOSS_TERMS[n].build(cfg, prior).to(device) for n in cfg.terms}
    hazy, clear = (torch.stack(x).to(device) for x in zip(*[train_set[i][:2] for i in range(cfg.batch)]))
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        restored = net(hazy)
        loss = fidelity_loss(restored, clear, cfg.fidelity)
        for n, term in terms.items():
            loss = loss + cfg.gamma_for(n) * term(restored, clear, generator=g)[n]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, term in terms.items():
            if LOSS_TERMS[n].stateful:  # the discriminator's own step
                term.step(restored.detach(), clear)

    return step


steppers = {label: make_step(base.replace(**kw)) for label, kw in runs.items()}
timings: dict[str, list[float]] = {label: [] for label in runs}
for step in steppers.values():
    step()  # warm-up
for _ in range(2 if profile.name == "ci" else 5):
    for label, step in steppers.items():
        t0 = time.perf_counter()
        for _ in range(2):
            step()
        timings[label].append((time.perf_counter() - t0) / 2)
del steppers


def seconds_per_step(label: str) -> float:
    return statistics.median(timings[label])


extra = {
    "L1": ("—", 0),
    per_label: ("VGG16 to relu3_3, frozen", count_parameters(PerceptualLoss(weights=None))),
    "L1 + adversarial": ("PatchGAN D, trained", count_parameters(PatchDiscriminator(base.disc_channels))),
    "L1 + DiffLoss": (f"{profile.prior} prior, frozen", count_parameters(prior)),
}
models = {label: h.model.to(device).eval() for label, h in histories.items()}
test_items = [test_set[i] for i in range(len(test_set))]
outputs = {label: [restore(m, hazy[None].to(device))[0].cpu() for hazy, _, _ in test_items]
           for label, m in models.items()}
map_err = {label: [map_errors(o[None], clear[None]) for o, (_, clear, _) in zip(outs, test_items)]
           for label, outs in outputs.items()}
map_err["hazy input"] = [map_errors(hazy[None], clear[None]) for hazy, clear, _ in test_items]
table = {}
for label, h in histories.items():
    f = h.final
    table[label] = dict(gamma=h.config.gamma_for(h.config.terms[0]) if h.config.terms else None,
                        psnr=f["test_psnr"], ssim=f["test_ssim"],
                        color=statistics.mean(e["color_mae"] for e in map_err[label]),
                        structure=statistics.mean(e["structure_mae"] for e in map_err[label]),
                        s_step=seconds_per_step(label), extra=extra[label])
hazy_psnr = statistics.mean(float(psnr(hz[None], c[None])) for hz, c, _ in test_items)
hazy_ssim = statistics.mean(float(ssim(hz[None], c[None])) for hz, c, _ in test_items)
print(f"{'loss':>26} | {'γ':>6} | {'PSNR':>6} {'SSIM':>6} | {'colour MAE':>10} {'struct. MAE':>11} | "
      f"{'s/step':>6} | extra parameters")
print(f"{'hazy input':>26} | {'':>6} | {hazy_psnr:6.2f} {hazy_ssim:6.3f} | "
      f"{statistics.mean(e['color_mae'] for e in map_err['hazy input']):10.4f} "
      f"{statistics.mean(e['structure_mae'] for e in map_err['hazy input']):11.4f} | {'':>6} |")
for label, r in table.items():
    g = "" if r["gamma"] is None else f"{r['gamma']:g}"
    what, n = r["extra"]
    print(f"{label:>26} | {g:>6} | {r['psnr']:6.2f} {r['ssim']:6.3f} | {r['color']:10.4f} "
          f"{r['structure']:11.4f} | {r['s_step']:6.2f} | {n / 1e6:.2f} M ({what})")
if not have_lpips:
    print("\nLPIPS: not reported (the lpips package and its weights are not available here).")
if not have_vgg:
    print(f"'{per_label}' used a randomly initialised VGG16: it is a control, not the perceptual loss.")

# %%
# NBVAL_CHECK_OUTPUT
print("every run finished its budget:", all(h.meta.get("finished") for h in histories.values()))
print("same steps in every run:", len({len(h.rows) for h in histories.values()}) == 1)
print("the adversarial run logged its discriminator:",
      all(r.get("d_loss") is not None for r in histories["L1 + adversarial"].rows[1:]))

# %% [markdown]
# ## 5. The images
#
# Each row is a test image: the hazy input, the four restorations (with their PSNR), and the
# ground truth.

# %%
images, titles = [], []
for i, (hazy, clear, name) in enumerate(test_items):
    images.append(hazy)
    titles.append(f"{name}: hazy ({float(psnr(hazy[None], clear[None])):.1f} dB)")
    for label, outs in outputs.items():
        images.append(outs[i])
        titles.append(f"{label} ({float(psnr(outs[i][None], clear[None])):.1f} dB)")
    images.append(clear)
    titles.append("ground truth")
fig = image_grid(images, titles, ncols=len(runs) + 2, size=1.9)
for ax in fig.axes:
    ax.title.set_fontsize(6)
save_figure(fig, "05_comparison")
fig.set_dpi(72)  # the copy embedded in the notebook (the saved PNG keeps 90 dpi)
plt.show()

# %% [markdown]
# ## 6. Colour map and structure map (supplement Fig. 2)
#
# A restoration can be wrong in two separate ways: the **colours** (a tint, residual haze, a
# washed-out region) or the **structure** (blur, lost texture, invented edges). Two maps pull
# them apart (`diffloss.maps`):
#
# - **colour map**: the chroma of the image, strongly low-passed. With BT.601 luma
#   $Y = 0.299R + 0.587G + 0.114B$ and chroma $(C_b, C_r) = (0.564(B - Y),\ 0.713(R - Y))$, the
#   colour map is $(C_b, C_r)$ blurred by a Gaussian of σ = 1/32 of the shorter side: no
#   edges, no texture, only where which colour is. Shown on a constant mid-grey luma.
# - **structure map**: the gradient magnitude of the luma, $\sqrt{G_x^2 + G_y^2}$ with 3×3
#   Sobel filters: edges and texture, no colour.
#
# Each restoration's error on each map is the mean absolute difference to the ground truth's
# map (the two "MAE" columns of the table above; lower is better).

# %%
k = 0  # the first test image
hazy, clear, name = test_items[k]
cols = {"hazy input": hazy, **{label: outs[k] for label, outs in outputs.items()}, "ground truth": clear}
smax = float(structure_map(clear).quantile(0.99))
images = [color_map_rgb(im) for im in cols.values()] + \
         [(structure_map(im) / smax).clamp(0, 1) for im in cols.values()]
titles = []
for row in ("colour", "structure"):
    for label in cols:
        if label == "ground truth":
            titles.append(f"{row}: ground truth")
        else:
            e = map_errors(cols[label][None], clear[None])[f"{'color' if row == 'colour' else 'structure'}_mae"]
            titles.append(f"{row}: {label}\nMAE {e:.4f}")
fig = image_grid(images, titles, ncols=len(cols), size=1.9)
for ax in fig.axes:
    ax.title.set_fontsize(6)
save_figure(fig, "05_color_structure")
fig.set_dpi(72)
plt.show()

# %%
print(f"{'':>26} | {'colour MAE per image':>24} | {'structure MAE per image':>24}")
names = [n for _, _, n in test_items]
print(f"{'':>26} | {'  '.join(f'{n[:11]:>11}' for n in names):>24} | "
      f"{'  '.join(f'{n[:11]:>11}' for n in names):>24}")
for label, errs in map_err.items():
    colour = "  ".join(f"{e['color_mae']:11.4f}" for e in errs)
    structure = "  ".join(f"{e['structure_mae']:11.4f}" for e in errs)
    print(f"{label:>26} | {colour:>24} | {structure:>24}")

# %%
print(f"chapter run time: {time.perf_counter() - t_chapter:.0f} s on {device} "
      f"({torch.get_num_threads()} thread(s)), profile {profile.name}")

# %% [markdown]
# ## 7. Each loss's limitations, against what we measured
#
# The supplement names one weakness for each of the older losses. This section sets each one
# against what the committed `small` run measured (150 steps, one seed, synthetic haze,
# `MSBDN.small`, the tiny prior). A `ci` run prints other numbers.
#
# **First, the scale.** After 150 steps of 4 crops, none of the four networks dehazes yet. Every
# run has a lower SSIM than the hazy input (0.12–0.25 against 0.72), and the PSNR gain is at most
# 0.4 dB (12.0–12.4 dB against 12.0 dB). The images show the colour noise and checkerboard texture
# of a barely trained MSBDN. So the table compares *early training*, on one seed and two test
# images. Differences of a few tenths of a dB are within the seed-to-seed spread that chapter 04
# measures. What this scale can show is how each term acts on training, not which loss makes the
# best dehazer. That takes the `paper` profile.
#
# - **L1: pixel space.** A pixel loss compares images pixel by pixel and knows nothing about what
#   natural images look like; its minimiser averages the plausible answers. Here L1 has the best
#   PSNR (12.40 dB), which is the pixel loss's own measure. Its SSIM is 0.198 and its structure
#   error 0.218.
# - **L1 + perceptual: high-level VGG features.** The VGG16 features were learned for ImageNet
#   classification. They measure content, not low-level naturalness or colour fidelity. **We
#   could not test this loss here: the ImageNet weights are absent.** The random-VGG control at
#   γ = 0.001 sends a gradient of 4·10⁻⁴ of L1's, so its run is the L1 run to three decimals
#   (12.40 dB, 0.198). That says only that this γ is negligible for random features at this
#   scale. With the ImageNet weights present, section 2 measures the ratio again (and labels the
#   run "L1 + perceptual").
# - **L1 + adversarial: a discriminator trained per dataset.** The discriminator is trained from
#   scratch on each dataset, in alternation with the restorer, and knows only that dataset's
#   ground truths. Here the PatchGAN (2.76 M parameters) separates real from restored within
#   about 25 steps: afterwards D(x) ≈ 0.98 and D(z) ≈ 0.03 (`d_real`, `d_fake` in the run's
#   history). So −log D(z) grows from 0.7 to 4–6, and a term whose gradient was 4·10⁻⁴ of L1's at
#   initialisation becomes a real force. It pushes toward whatever currently fools this
#   discriminator, not toward natural images. The adversarial run has the strongest grid texture:
#   the worst structure error (0.299) and the worst SSIM (0.115). Its colour map is the closest of
#   the four to the ground truth's (0.049). A discriminator trained for 150 steps on crops of four images is
#   exactly the data-starved, per-dataset discriminator that the supplement warns about.
# - **L1 + DiffLoss: a prior trained once, elsewhere, and frozen.** Nothing is trained per
#   dataset. The cost is one forward and backward pass per step through the prior (the 1.43 M
#   tiny prior, on a 32×32 window of each crop). Here it has the best SSIM (0.245 against L1's
#   0.198) and the smallest structure error (0.215 against 0.218, a small difference). But it also
#   has the lowest PSNR (12.01 dB) and the largest colour error (0.069): the restorations have a
#   warm cast that the colour maps show. The tiny prior learned its colours from 32×32 crops of
#   four bundled photographs, so its "natural" colours are narrow. At this scale the constraint
#   acts more on structure than on colour. Two questions are left to the `paper` profile: whether
#   the ImageNet prior removes the cast, and whether the SSIM gain survives longer training and
#   more seeds (chapter 04 repeats L1 against DiffLoss over three seeds).
#
# **Cost.** No extra network is used at test time. During training, the frozen VGG16 up to
# relu3_3 (1.74 M parameters, run at the full crop) cost the most per step in this run. The
# trained discriminator (2.76 M) and the frozen tiny prior (1.43 M) cost less: see the s/step
# column. The adversarial loss is the only one that also brings a second optimiser, its state
# in the checkpoints, and a training dynamic of its own to watch.
