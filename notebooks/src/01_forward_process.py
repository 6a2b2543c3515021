# %% [markdown]
# # Chapter 01 — The forward process, derived numerically
#
# DiffLoss judges a restored image by asking a frozen diffusion model what it thinks of a
# *noised* copy of it. Before we can do that, we need the noising itself: the DDPM forward
# process of the seed paper's supplement, Section 1. In this chapter every equation is
# implemented once in `diffloss.NoiseSchedule` and then **checked numerically**: by Monte Carlo,
# by regression, and by plotting.
#
# | symbol | code | meaning |
# |---|---|---|
# | $\beta_t$ | `schedule.betas` | variance added at step $t$ |
# | $\alpha_t = 1-\beta_t$ | `schedule.alphas` | |
# | $\bar\alpha_t=\prod_{s\le t}\alpha_s$ | `schedule.alphas_cumprod` | signal kept after $t$ steps |
#
# Timesteps are 0-based indices as in diffusers: index $t$ means "after $t+1$ noising steps".

# %%
import matplotlib.pyplot as plt
import torch

from diffloss import NoiseSchedule, current_profile
from diffloss.data import sample_image
from diffloss.viz import image_grid, save_figure

plt.rcParams["figure.dpi"] = 72  # keeps the notebook small; figures/ are saved at 90 dpi
profile = current_profile()
print(f"profile: {profile.name} ({profile.description})")
torch.manual_seed(0)
schedule = NoiseSchedule.linear()  # Ho et al.: beta from 1e-4 to 0.02 over T = 1000 steps
schedule

# %% [markdown]
# ## 1. One step of noise: $q(x_t \mid x_{t-1})$
#
# Seed Eq. (1): each step shrinks the image a little and adds a little Gaussian noise,
#
# $$x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon,\qquad \epsilon\sim\mathcal N(0, I).$$
#
# Images live in $[-1, 1]$ for the diffusion model. We apply `q_step` to a real bundled image,
# step by step, and look at a few of the intermediate $x_t$.

# %%
x0 = sample_image("astronaut", max_size=96)[None] * 2 - 1  # 1×3×96×96 in [-1, 1]
show_at = [0, 24, 99, 249, 499, 999]
x, frames = x0.clone(), {}
g = torch.Generator().manual_seed(0)
for t in range(schedule.T):
    x = schedule.q_step(x, torch.tensor([t]), torch.randn(x.shape, generator=g))
    if t in show_at:
        frames[t] = x[0]
fig = image_grid([x0[0]] + [frames[t] for t in show_at], ["x0"] + [f"t = {t}" for t in show_at],
                 value_range=(-1, 1), size=1.6)
save_figure(fig, "01_forward_steps")
plt.show()

# %% [markdown]
# ## 2. Many steps at once: $q(x_t \mid x_0)$, checked by Monte Carlo
#
# Unrolling Eq. (1) gives the closed form of seed Eq. (2):
#
# $$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon .$$
#
# We test it: for a few pixel values $x_0$, run many independent chains of `q_step`
# (`profile.mc_samples` of them) and compare the empirical mean and variance of $x_t$ with
# $\sqrt{\bar\alpha_t}x_0$ and $1-\bar\alpha_t$. With $n$ chains the standard error of the mean is
# $\sqrt{(1-\bar\alpha_t)/n}$ and of the variance $(1-\bar\alpha_t)\sqrt{2/(n-1)}$.

# %%
n = profile.mc_samples
pixels = torch.tensor([-0.9, -0.3, 0.2, 0.8], dtype=torch.float64)
check_t = [0, 9, 99, 499, 999]
chains = pixels.expand(n, -1).clone()
g = torch.Generator().manual_seed(1)
rows = []
for t in range(schedule.T):
    chains = schedule.q_step(chains, torch.full((n,), t), torch.randn(chains.shape, generator=g, dtype=torch.float64))
    if t in check_t:
        abar = schedule.alphas_cumprod[t]
        mean, var = abar.sqrt() * pixels, 1 - abar
        z_mean = ((chains.mean(0) - mean) / (var / n).sqrt()).abs().max().item()
        z_var = ((chains.var(0) - var) / (var * (2 / (n - 1)) ** 0.5)).abs().max().item()
        rows.append((t, chains.mean(0), mean, chains.var(0).mean().item(), var.item(), z_mean, z_var))
print(f"{n} chains per pixel value")
print(f"{'t':>4} | {'empirical mean':>30} | {'sqrt(abar) x0':>30} | {'emp. var':>8} | {'1-abar':>8} | max z")
for t, em, cm, ev, cv, zm, zv in rows:
    fmt = lambda v: " ".join(f"{x:+.3f}" for x in v)  # noqa: E731
    print(f"{t:>4} | {fmt(em):>30} | {fmt(cm):>30} | {ev:8.4f} | {cv:8.4f} | {max(zm, zv):.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("Monte Carlo agrees with Eq. (2) within 5 standard errors at every t:",
      all(max(zm, zv) < 5 for *_, zm, zv in rows))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
ts = torch.arange(schedule.T)
for p in pixels:
    axes[0].plot(ts, schedule.alphas_cumprod.sqrt() * p, lw=1, label=f"x0 = {p:+.1f}")
for t, em, *_ in rows:
    axes[0].scatter([t] * len(em), em, s=12, color="k", zorder=3)
axes[0].set(title="mean of x_t: closed form (lines), Monte Carlo (dots)", xlabel="t")
axes[0].legend(fontsize=7)
axes[1].plot(ts, 1 - schedule.alphas_cumprod, color="C3", label="1 - abar_t")
axes[1].scatter([r[0] for r in rows], [r[3] for r in rows], s=14, color="k", zorder=3, label="Monte Carlo")
axes[1].set(title="variance of x_t", xlabel="t")
axes[1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "01_monte_carlo")
plt.show()

# %% [markdown]
# ## 3. The induction step behind Eq. (2)
#
# Why does the variance compose to $1-\bar\alpha_t$? If $x_t$ has variance $1-\bar\alpha_t$ around
# $\sqrt{\bar\alpha_t}x_0$, one more step scales that by $\alpha_{t+1}$ and adds $\beta_{t+1}=1-\alpha_{t+1}$
# (seed Eq. 3–4):
#
# $$\alpha_{t+1}(1-\bar\alpha_t) + (1-\alpha_{t+1}) = 1-\alpha_{t+1}\bar\alpha_t = 1-\bar\alpha_{t+1}.$$
#
# Checked for every $t$ of both schedules:

# %%
# NBVAL_CHECK_OUTPUT
for s in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
    a, abar = s.alphas, s.alphas_cumprod
    lhs = a[1:] * (1 - abar[:-1]) + (1 - a[1:])
    rhs = 1 - abar[1:]
    print(f"{s.name:>6}: max |lhs - rhs| over all t < 1e-12: {bool((lhs - rhs).abs().max() < 1e-12)}")

# %% [markdown]
# ## 4. Going back: the posterior $q(x_{t-1}\mid x_t, x_0)$
#
# Given both ends, the step back is Gaussian with (Ho et al., Eq. 6–7)
#
# $$\tilde\mu_t = \underbrace{\frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t}}_{c_1}x_0
#   + \underbrace{\frac{(1-\bar\alpha_{t-1})\sqrt{\alpha_t}}{1-\bar\alpha_t}}_{c_2}x_t,\qquad
#   \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t .$$
#
# A Gaussian posterior mean is a linear regression. So: simulate triples
# $(x_0, x_{t-1}, x_t)$ with $x_0$ drawn from the image's pixels, regress $x_{t-1}$ on
# $(x_0, x_t)$ by least squares, and compare the fitted coefficients and residual variance
# with $c_1, c_2, \tilde\beta_t$.

# %%
pix = x0.flatten().double()
n_reg = profile.mc_samples * 5
g = torch.Generator().manual_seed(2)
reg_rows = []
for t in [1, 10, 100, 500, 999]:
    x0s = pix[torch.randint(len(pix), (n_reg,), generator=g)]
    tt = torch.full((n_reg,), t)
    x_prev = schedule.q_sample(x0s, tt - 1, torch.randn(n_reg, generator=g, dtype=torch.float64))
    x_t = schedule.q_step(x_prev, tt, torch.randn(n_reg, generator=g, dtype=torch.float64))
    X = torch.stack([x0s, x_t], 1)
    coef = torch.linalg.lstsq(X, x_prev[:, None]).solution[:, 0]
    resid_var = (x_prev - X @ coef).var()
    se = (resid_var * torch.linalg.inv(X.T @ X).diagonal()).sqrt()
    c1, c2 = schedule.posterior_mean_coef1[t], schedule.posterior_mean_coef2[t]
    bt = schedule.posterior_variance[t]
    z = max(abs((coef[0] - c1) / se[0]).item(), abs((coef[1] - c2) / se[1]).item(),
            abs((resid_var - bt) / (bt * (2 / (n_reg - 3)) ** 0.5)).item())
    reg_rows.append((t, coef, (c1, c2), resid_var.item(), bt.item(), z))
print(f"{'t':>4} | {'c1 fit':>8} {'c1':>8} | {'c2 fit':>8} {'c2':>8} | {'resid var':>10} {'beta~':>10} | max z")
for t, coef, (c1, c2), rv, bt, z in reg_rows:
    print(f"{t:>4} | {coef[0]:8.5f} {c1:8.5f} | {coef[1]:8.5f} {c2:8.5f} | {rv:10.3e} {bt:10.3e} | {z:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("Regression recovers the closed-form posterior within 5 standard errors:",
      all(r[-1] < 5 for r in reg_rows))

# %% [markdown]
# ## 5. Linear versus cosine schedules
#
# The linear schedule destroys the signal early: $\bar\alpha_t$ is already near 0 well before
# $t=T$. Nichol & Dhariwal's cosine schedule, $\bar\alpha(t)=\cos^2\!\big(\tfrac{t/T+s}{1+s}\tfrac{\pi}{2}\big)$,
# spreads the destruction evenly in log-SNR. The paper's prior (ADM 256 uncond) and our tiny
# prior both use the linear one, so most of DiffLoss's random $t$ land where the image is
# already mostly noise; chapter 03 comes back to this.

# %%
lin, cos = NoiseSchedule.linear(), NoiseSchedule.cosine()
ts_all = torch.arange(lin.T)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for s in (lin, cos):
    axes[0].plot(ts_all, s.alphas_cumprod, label=s.name)
    axes[1].plot(ts_all, s.snr(ts_all).log(), label=s.name)
axes[0].set(title="abar_t (signal kept)", xlabel="t")
axes[1].set(title="log SNR = log(abar_t / (1 - abar_t))", xlabel="t")
for ax in axes:
    ax.legend()
fig.tight_layout()
save_figure(fig, "01_schedules")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
half = lambda s: int((s.alphas_cumprod < 0.5).nonzero()[0])  # noqa: E731
print(f"half the signal variance is gone at t = {half(lin)} (linear) and t = {half(cos)} (cosine)")

# %% [markdown]
# ## 6. See it: $x_t$ for any $t$
#
# Drag the slider (in JupyterLab or Colab) to see $x_t = \sqrt{\bar\alpha_t}x_0+\sqrt{1-\bar\alpha_t}\epsilon$
# under both schedules with the *same* $\epsilon$. The static figure below shows a few $t$ so the
# page also reads on GitHub.

# %%
import ipywidgets as widgets
from IPython.display import display
from torchvision.io import encode_png

from diffloss.viz import make_grid

eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))


def xt_png(t: int) -> bytes:
    """x_t under both schedules (same ε), side by side, as PNG bytes for an image widget."""
    tt = torch.tensor([t])
    pair = torch.cat([lin.q_sample(x0, tt, eps), cos.q_sample(x0, tt, eps)])
    grid = make_grid(pair, nrow=2)  # [0, 1]
    return encode_png((grid * 255).round().to(torch.uint8)).numpy().tobytes()


slider = widgets.IntSlider(value=250, min=0, max=999, step=1, description="t", continuous_update=False)
picture = widgets.Image(value=xt_png(slider.value), format="png")
slider.observe(lambda change: setattr(picture, "value", xt_png(change["new"])), names="value")
display(widgets.VBox([widgets.Label("x_t: linear (left), cosine (right)"), slider, picture]))

# %%
grid_t = [0, 100, 250, 500, 750, 999]
imgs = [lin.q_sample(x0, torch.tensor([t]), eps)[0] for t in grid_t] + \
       [cos.q_sample(x0, torch.tensor([t]), eps)[0] for t in grid_t]
fig = image_grid(imgs, [f"t = {t}" for t in grid_t] * 2, ncols=len(grid_t), value_range=(-1, 1),
                 row_labels=["linear", "cosine"], size=1.6)
save_figure(fig, "01_xt_grid")
plt.show()

# %% [markdown]
# ## What we have
#
# * `q_step` (Eq. 1) iterated is `q_sample` (Eq. 2): same mean and variance, within Monte Carlo error.
# * The variance recursion (Eq. 3–4) holds to machine precision.
# * The posterior $q(x_{t-1}\mid x_t,x_0)$ that a regression finds is the closed form.
# * The unit tests (`tests/test_schedule.py`) check the same tables against diffusers' `DDPMScheduler`.
#
# Next, chapter 02: a network that has learned to *predict* $\epsilon$ from $x_t$ — the frozen
# diffusion prior whose opinion DiffLoss asks for.
