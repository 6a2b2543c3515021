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
import statistics
import time

import matplotlib.pyplot as plt
import torch

from diffloss import current_profile
from diffloss.diagnostics import high_frequency_error
from diffloss.loss import PatchDiscriminator, PerceptualLoss, count_parameters, fetch_vgg16_weights
from diffloss.maps import color_map_rgb, map_errors, structure_map
from diffloss.metrics import psnr, ssim
from diffloss.prior import load_profile_prior
from diffloss.profiles import require_assets
from diffloss.training import (
    LOSS_TERMS,
    TrainConfig,
    build_datasets,
    build_model,
    build_terms,
    gradient_ratio,
    restore,
    train,
    train_step,
)
from diffloss.viz import image_grid, repo_root, save_figure

profile = current_profile()
assets = require_assets(profile)  # gpu / paper: stops here, naming the download commands
print(f"profile: {profile.name} ({profile.description})")
print(f"data and prior: {assets.label}")
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":
    torch.set_num_threads(1)  # narrow convolutions on small crops: see chapter 04
print(f"device: {device}, torch threads: {torch.get_num_threads()}")
t_chapter = time.perf_counter()

# %% [markdown]
# ## 1. What is available on this machine
#
# The perceptual loss needs torchvision's ImageNet VGG16 weights (`VGG16_Weights.IMAGENET1K_V1`,
# 528 MB). Where the network is there (Colab, a workstation), `PerceptualLoss` downloads them once
# through torchvision's usual mechanism and caches them in `~/.cache/torch/hub/checkpoints/`.
# Offline (or with `HF_HUB_OFFLINE=1`, as the tests run), this chapter does not try: it runs the
# third training with a **randomly initialised VGG16** instead and labels it "L1 + random-VGG
# (control)". That is *not* the perceptual loss: random convolutional features are a fixed
# multi-scale filter bank, not the ImageNet features the perceptual loss relies on; its numbers
# must not be read as the perceptual loss's.

# %%
try:  # cached, or downloaded once by torchvision's mechanism; offline: a clear FileNotFoundError
    fetch_vgg16_weights(progress=False)
    have_vgg = True
except FileNotFoundError as exc:
    have_vgg = False
    print(exc)
per_label = "L1 + perceptual" if have_vgg else "L1 + random-VGG (control)"
print("VGG16 ImageNet weights:", "available" if have_vgg else "not available: random weights as a control")

# %% [markdown]
# ## 2. The runs, on chapter 04's footing
#
# The data, splits, network, learning-rate schedule and budget are chapter 04's (the profile's):
# MSBDN on the profile's data; the in-distribution and out-of-distribution test splits; the
# validation split exists but selects nothing here: we report the **last** checkpoint of every
# run. The first of chapter 04's seeds (four runs must fit the budget).
#
# **The weights γ.** The perceptual and adversarial terms use the supplement's values,
# γ = 0.001 and γ = 0.005; DiffLoss uses the profile's γ, chosen on validation in chapter 04.
# The next cell measures, for each term at its γ, the pull it exerts on the network relative
# to L1's, $\gamma\lVert\nabla_\theta\mathcal L_\text{term}\rVert / \lVert\nabla_\theta\mathcal
# L_1\rVert$, at initialisation (`diffloss.training.gradient_ratio`).

# %%
seed = profile.seeds[0]
base = TrainConfig.for_profile(profile, assets, device, seed=seed, val=0,
                               eval_every=profile.train_iters, disc_channels=64,
                               vgg_weights="IMAGENET1K_V1" if have_vgg else None)
runs = {
    "L1": dict(loss="l1"),
    per_label: dict(loss="l1+perceptual", gamma=1e-3),
    "L1 + adversarial": dict(loss="l1+adversarial", gamma=5e-3),
    "L1 + DiffLoss": dict(loss="l1+diffloss", gamma=profile.gamma),
}
train_set, _, tests = build_datasets(base)
names = {"test": "in-distribution test", "ood": "out-of-distribution test"}
print(f"{base.iterations} steps × {base.batch * base.grad_accum} crops of {base.crop}², seed {seed}; "
      + ", ".join(f"{names.get(s, s)}: {len(d)} images" for s, d in tests.items()))

# %%
prior = load_profile_prior(profile if assets.prior == profile.prior else "small").to(device).eval()
torch.manual_seed(seed)
net = build_model(base.model).to(device)
batches = [tuple(torch.stack(x).to(device) for x in zip(*[train_set[base.batch * k + i][:2]
                                                           for i in range(base.batch)]))
           for k in range(2 if profile.name == "ci" else 4)]
ratios = {}
for label, kw in runs.items():
    if kw["loss"] == "l1":
        continue
    cfg = base.replace(**kw)
    name = cfg.terms[0]
    term = build_terms(cfg, prior)[name].to(device)
    r = gradient_ratio(net, batches, term, name, gamma=cfg.gamma_for(name),
                       generator=torch.Generator().manual_seed(0))
    ratios[label] = statistics.mean(r)
    print(f"{label:>26}: γ = {cfg.gamma_for(name):g}, γ·‖∇term‖ / ‖∇L1‖ = {ratios[label]:.2e} "
          f"(mean of {len(r)} batches)")
del net

# %% [markdown]
# Keep these ratios in mind when reading the table: a term whose gradient is a thousandth of
# L1's cannot change the result much in a few hundred steps. (The adversarial ratio is measured
# with an untrained discriminator; once $D$ learns, $-\log D(z)$ and its gradient grow.)
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
    print(f"{label:>26}: {time.perf_counter() - t0:5.0f} s | final PSNR "
          + ", ".join(f"{names.get(s, s)} {f[f'{s}_psnr']:.2f} dB" for s in tests))

# %% [markdown]
# ## 4. The table
#
# Per test split: PSNR/SSIM (RGB in [0, 1], mean over the images, last checkpoint), the colour
# and structure errors of section 6, and the artefact energy of chapter 04 (error energy above
# 1/4 cycle per pixel, ×10⁴). *s/step*: one training step of each loss through the trainer's own
# `train_step` (restorer forward and backward, the extra term, Adam, and for the adversarial loss
# the discriminator's own step), on one fixed batch, the four losses taking turns so that a
# machine busy with other work slows them alike (median of the rounds; compare them with each
# other, not with other machines). *extra parameters*: what each loss adds at training time —
# the discriminator (trained), the VGG16 layers up to relu3_3 (frozen), the diffusion prior
# (frozen). None of them is needed at test time.

# %%
def make_step(cfg: TrainConfig):
    """One step of ``cfg``'s loss through the trainer's ``train_step`` on a fixed batch."""
    torch.manual_seed(seed)
    net = build_model(cfg.model).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    terms = {n: t.to(device) for n, t in build_terms(cfg, prior).items()}
    hazy, clear = batches[0]
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        _, restored = train_step(net, hazy, clear, cfg, terms, opt, generator=gen)
        for n, term in terms.items():
            if LOSS_TERMS[n].stateful:  # the discriminator's own step, as the trainer does it
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

extra = {
    "L1": ("—", 0),
    per_label: ("VGG16 to relu3_3, frozen", count_parameters(PerceptualLoss(weights=None))),
    "L1 + adversarial": ("PatchGAN D, trained", count_parameters(PatchDiscriminator(base.disc_channels))),
    "L1 + DiffLoss": (f"{assets.prior} prior, frozen", count_parameters(prior)),
}
test_items = {s: [d[i] for i in range(len(d))] for s, d in tests.items()}
outputs = {label: {s: [restore(h.model.to(device), hz[None].to(device))[0].cpu() for hz, _, _ in items]
                   for s, items in test_items.items()} for label, h in histories.items()}
outputs["hazy input"] = {s: [hz for hz, _, _ in items] for s, items in test_items.items()}


def row(label: str, split: str) -> dict[str, float]:
    outs, items = outputs[label][split], test_items[split]
    errs = [map_errors(o[None], c[None]) for o, (_, c, _) in zip(outs, items)]
    return {"psnr": statistics.mean(float(psnr(o[None], c[None])) for o, (_, c, _) in zip(outs, items)),
            "ssim": statistics.mean(float(ssim(o[None], c[None])) for o, (_, c, _) in zip(outs, items)),
            "color": statistics.mean(e["color_mae"] for e in errs),
            "structure": statistics.mean(e["structure_mae"] for e in errs),
            "artefacts": 1e4 * statistics.mean(float(high_frequency_error(o[None], c[None]))
                                               for o, (_, c, _) in zip(outs, items))}


table = {s: {label: row(label, s) for label in ["hazy input", *runs]} for s in tests}
for s in tests:
    print(f"\n{names.get(s, s)}")
    print(f"{'loss':>26} | {'PSNR':>6} {'SSIM':>6} | {'colour':>7} {'struct.':>7} {'artef.':>7} | "
          f"{'s/step':>6} | extra parameters")
    for label, r in table[s].items():
        what, n = extra.get(label, ("", 0))
        cost = f"{statistics.median(timings[label]):6.2f}" if label in timings else f"{'':>6}"
        print(f"{label:>26} | {r['psnr']:6.2f} {r['ssim']:6.3f} | {r['color']:7.4f} "
              f"{r['structure']:7.4f} {r['artefacts']:7.2f} | {cost} | "
              + (f"{n / 1e6:.2f} M ({what})" if label in extra else ""))
if not have_vgg:
    print(f"\n'{per_label}' used a randomly initialised VGG16: it is a control, not the perceptual loss.")

# %%
# NBVAL_CHECK_OUTPUT
print("every run finished its budget:", all(h.meta.get("finished") for h in histories.values()))
print("same steps in every run:", len({len(h.rows) for h in histories.values()}) == 1)
print("the adversarial run logged its discriminator:",
      all(r.get("d_loss") is not None for r in histories["L1 + adversarial"].rows[1:]))

# %% [markdown]
# ## 5. The images
#
# Each row is a test image (two from each split): the hazy input, the four restorations (with
# their PSNR), and the ground truth.

# %%
images, titles = [], []
for s, items in test_items.items():
    for i, (hazy, clear, name) in enumerate(items[:2]):
        images.append(hazy)
        titles.append(f"{s}: {name}\nhazy ({float(psnr(hazy[None], clear[None])):.1f} dB)")
        for label in runs:
            images.append(outputs[label][s][i])
            titles.append(f"{label}\n{float(psnr(outputs[label][s][i][None], clear[None])):.1f} dB")
        images.append(clear)
        titles.append("ground truth")
fig = image_grid(images, titles, ncols=len(runs) + 2, size=2.1)
save_figure(fig, "05_comparison")
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
# map (the "colour" and "struct." columns of the table above; lower is better).

# %%
split0 = next(iter(test_items))
hazy, clear, name = test_items[split0][0]
cols = {"hazy input": hazy, **{label: outputs[label][split0][0] for label in runs}, "ground truth": clear}
smax = float(structure_map(clear).quantile(0.99))
images = [color_map_rgb(im) for im in cols.values()] + \
         [(structure_map(im) / smax).clamp(0, 1) for im in cols.values()]
titles = []
for kind in ("colour", "structure"):
    for label in cols:
        if label == "ground truth":
            titles.append(f"{kind}: ground truth")
        else:
            e = map_errors(cols[label][None], clear[None])["color_mae" if kind == "colour" else "structure_mae"]
            titles.append(f"{kind}: {label}\nMAE {e:.4f}")
fig = image_grid(images, titles, ncols=len(cols), size=2.1)
save_figure(fig, "05_color_structure")
plt.show()

# %% [markdown]
# ## 7. Each loss's limitation, against what we measured
#
# The supplement names one weakness for each of the older losses:
#
# - **L1 works in pixel space.** It compares images pixel by pixel and knows nothing about what
#   natural images look like; its minimiser averages the plausible answers.
# - **The perceptual loss uses high-level VGG features** learned for ImageNet classification:
#   they measure content, not low-level naturalness or colour fidelity.
# - **The adversarial loss trains a discriminator per dataset**, from scratch and in alternation
#   with the restorer; it knows only that dataset's ground truths and pushes toward whatever
#   fools it now.
# - **DiffLoss** uses a prior trained once, elsewhere, and frozen: nothing is trained per
#   dataset; the cost is one forward and backward pass through the prior per step.
#
# What this run measured, printed from its own numbers:

# %%
main = next(iter(tests))
t = table[main]
ranked = sorted(runs, key=lambda k: t[k]["psnr"], reverse=True)
print(f"On the {names.get(main, main)} split, PSNR ranks the losses "
      + " > ".join(f"{k} ({t[k]['psnr']:.2f} dB)" for k in ranked)
      + f"; the hazy input scores {t['hazy input']['psnr']:.2f} dB.")
for key, what in (("ssim", "SSIM"), ("structure", "structure error"), ("color", "colour error"),
                  ("artefacts", "artefact energy")):
    best = (max if key == "ssim" else min)(runs, key=lambda k: t[k][key])
    print(f"Best {what}: {best} ({t[best][key]:.4f}; L1 {t['L1'][key]:.4f}).")
adv = histories["L1 + adversarial"]
steps, d_real = adv.column("d_real")
_, d_fake = adv.column("d_fake")
gap = [r - f for r, f in zip(d_real, d_fake)]
separated = next((s for s, g in zip(steps, gap) if g > 0.9), None)
print(f"The discriminator: D(x) {d_real[0]:.2f} → {d_real[-1]:.2f} and D(z) {d_fake[0]:.2f} → "
      f"{d_fake[-1]:.2f} from step {steps[0]} to {steps[-1]}; "
      + (f"it separates real from restored (D(x) − D(z) > 0.9) from step {separated} on."
         if separated is not None else "it never separates real from restored by more than 0.9."))
adv_term = [r["adversarial"] for r in adv.rows if r.get("adversarial") is not None]
print(f"−log D(z), the adversarial term: {adv_term[0]:.2f} at the first step, {adv_term[-1]:.2f} at "
      f"the last (its gradient ratio at initialisation was {ratios['L1 + adversarial']:.1e}).")
if not have_vgg:
    print(f"The perceptual loss itself was not tested here (no ImageNet weights); the random-VGG "
          f"control at γ = 0.001 pulled at {ratios[per_label]:.1e} of L1's strength.")
cheapest = min((k for k in runs if k != "L1"), key=lambda k: statistics.median(timings[k]))
print("Cost per step relative to L1: " + ", ".join(
    f"{k} ×{statistics.median(timings[k]) / statistics.median(timings['L1']):.1f}"
    for k in runs if k != "L1") + f" (cheapest extra term: {cheapest}).")
print(f"Scale: {base.iterations} steps of {profile.restorer}, one seed, {assets.label}"
      + (": differences of a few tenths of a dB are within the seed-to-seed spread that chapter 04 "
         "measures." if profile.name in ("ci", "small") else "."))

# %%
print(f"chapter run time: {time.perf_counter() - t_chapter:.0f} s on {device} "
      f"({torch.get_num_threads()} thread(s)), profile {profile.name}")
