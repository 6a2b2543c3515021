# %% [markdown]
# # Chapter 01 — The forward process, derived numerically
#
# DiffLoss judges a restored image by asking a frozen diffusion model what it thinks of a
# *noised* copy of it. Before we can do that, we need the noising itself: the DDPM forward
# process of the seed paper's supplement, Section 1. (The *seed paper* is the one this repository
# implements: Tan, Yu, Huang, Yang and Zhao, *DiffLoss: Unleashing Diffusion Model as Constraint for
# Training Image Restoration Network*, ACCV 2024, arXiv:2406.19030; "seed Eq. (n)" is its equation n.)
# In this chapter every equation is
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
#
# **Notation: two meanings of "0".** In the papers (Ho et al. 2020), $x_0$ is the clean image and
# the noisy samples are $x_1,\dots,x_T$. Code (diffusers, this package) numbers the *timesteps*
# $0,\dots,T-1$ instead: the sample at code timestep $t$ has had $t+1$ steps of noise, with
# $\bar\alpha_t=\prod_{s\le t}(1-\beta_s)$, so at $t=0$ it already carries one step
# ($\bar\alpha_0 = 1-\beta_0 < 1$). In these chapters $x_0$ always means the **clean image**, and
# $x_t$ the noisy sample at code timestep $t$: $x_t$ at $t = 0$ is *not* $x_0$. The figure below
# shows both.

# %%
x0 = sample_image("astronaut", max_size=96)[None] * 2 - 1  # 1×3×96×96 in [-1, 1]
show_at = [0, 24, 99, 249, 499, 999]
x, frames = x0.clone(), {}
g = torch.Generator().manual_seed(0)
for t in range(schedule.T):
    x = schedule.q_step(x, torch.tensor([t]), torch.randn(x.shape, generator=g))
    if t in show_at:
        frames[t] = x[0]
fig = image_grid([x0[0]] + [frames[t] for t in show_at],
                 ["clean image $x_0$"] + [f"$t$ = {t}" + (" (one step)" if t == 0 else "") for t in show_at],
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
# In code it is two lines, written here from $\beta$ alone (the schedule's tables are not used):

# %%
def q_sample_scratch(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """Eq. (2): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with abar_t = prod_{s <= t} (1 - beta_s)."""
    abar = torch.cumprod(1 - betas, dim=0)[t].view(-1, *[1] * (x0.ndim - 1))  # one abar per sample
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


# %%
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(4)
x0_batch = torch.rand(schedule.T, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1  # one image per t
eps_batch = torch.randn(x0_batch.shape, generator=g, dtype=torch.float64)
t_all = torch.arange(schedule.T)
for s in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
    same = torch.allclose(q_sample_scratch(x0_batch, t_all, eps_batch, s.betas), s.q_sample(x0_batch, t_all, eps_batch))
    print(f"{s.name:>6}: q_sample_scratch == NoiseSchedule.q_sample at every t: {same}")

# %% [markdown]
# `NoiseSchedule` (used from here on) computes the same thing from precomputed tables, and its tables are
# tested against diffusers' `DDPMScheduler` in `tests/test_schedule.py`.
#
# Now a numerical test of Eq. (2) itself: for a few pixel values $x_0$, run many independent chains of `q_step`
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
    axes[0].plot(ts, schedule.alphas_cumprod.sqrt() * p, lw=1, label=f"$x_0$ = {p:+.1f}")
for t, em, *_ in rows:
    axes[0].scatter([t] * len(em), em, s=12, color="k", zorder=3)
axes[0].set(title="mean of $x_t$: closed form (lines), Monte Carlo (dots)", xlabel="$t$")
axes[0].legend()
axes[1].plot(ts, 1 - schedule.alphas_cumprod, color="C3", label=r"$1-\bar\alpha_t$")
axes[1].scatter([r[0] for r in rows], [r[3] for r in rows], s=14, color="k", zorder=3, label="Monte Carlo")
axes[1].set(title="variance of $x_t$", xlabel="$t$")
axes[1].legend()
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
# **Derivation of the mean.** Fix $x_0$. Then $x_{t-1}$ and $x_t$ are jointly Gaussian:
# $x_{t-1}=\sqrt{\bar\alpha_{t-1}}\,x_0+\sqrt{1-\bar\alpha_{t-1}}\,\epsilon'$ (Eq. 2 at $t-1$) and
# $x_t=\sqrt{\alpha_t}\,x_{t-1}+\sqrt{\beta_t}\,\epsilon$ (Eq. 1), with $\epsilon'$ and $\epsilon$ independent.
# Per pixel, given $x_0$,
#
# $$\operatorname{Var}(x_{t-1}) = 1-\bar\alpha_{t-1},\qquad \operatorname{Var}(x_t) = 1-\bar\alpha_t,\qquad
#   \operatorname{Cov}(x_{t-1},x_t)=\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1}).$$
#
# For jointly Gaussian variables the conditional mean is the regression line,
# $\mathbb E[x_{t-1}\mid x_t,x_0]=\mathbb E[x_{t-1}\mid x_0]+\frac{\operatorname{Cov}(x_{t-1},x_t)}{\operatorname{Var}(x_t)}\big(x_t-\mathbb E[x_t\mid x_0]\big)$:
#
# $$\tilde\mu_t=\sqrt{\bar\alpha_{t-1}}\,x_0+\frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\big(x_t-\sqrt{\bar\alpha_t}\,x_0\big).$$
#
# The coefficient of $x_t$ is $c_2$. For $x_0$, use $\sqrt{\bar\alpha_t}=\sqrt{\alpha_t}\sqrt{\bar\alpha_{t-1}}$ and
# $\alpha_t(1-\bar\alpha_{t-1})=\alpha_t-\bar\alpha_t$:
#
# $$\sqrt{\bar\alpha_{t-1}}\Big(1-\frac{\alpha_t-\bar\alpha_t}{1-\bar\alpha_t}\Big)
#   =\sqrt{\bar\alpha_{t-1}}\,\frac{1-\alpha_t}{1-\bar\alpha_t}=\frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_t}=c_1 .$$
#
# The variance $\tilde\beta_t$ follows the same way (Exercise 1.1). With 0-based indices as in
# diffusers, $\bar\alpha_{t-1}$ at $t=0$ is $\bar\alpha_{-1}=1$: the step back from the first
# noisy sample (code timestep 0, one step of noise) lands on the clean image $x_0$ exactly,
# $\tilde\beta_0=0$. In code, again from $\beta$ alone:

# %%
def q_posterior_scratch(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, betas: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x0) (Ho et al. Eq. 6-7), from the betas alone."""
    alphas = 1 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])  # abar_{t-1}, abar_{-1} = 1
    c1 = betas * abar_prev.sqrt() / (1 - abar)
    c2 = (1 - abar_prev) * alphas.sqrt() / (1 - abar)
    var = (1 - abar_prev) / (1 - abar) * betas
    per_sample = lambda v: v[t].view(-1, *[1] * (x0.ndim - 1))  # noqa: E731
    return per_sample(c1) * x0 + per_sample(c2) * xt, per_sample(var).expand_as(xt)


# %%
# NBVAL_CHECK_OUTPUT
for s in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
    xt_batch = s.q_sample(x0_batch, t_all, eps_batch)
    mean, var = q_posterior_scratch(x0_batch, xt_batch, t_all, s.betas)
    ref_mean, ref_var, _ = s.q_posterior(x0_batch, xt_batch, t_all)
    print(f"{s.name:>6}: posterior mean == NoiseSchedule.q_posterior: {torch.allclose(mean, ref_mean)}, "
          f"variance: {torch.allclose(var, ref_var)}")

# %% [markdown]
# A numerical test of the formulas themselves: a Gaussian posterior mean is a linear regression. So
# simulate triples $(x_0, x_{t-1}, x_t)$ with $x_0$ drawn from the image's pixels, regress $x_{t-1}$ on
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
# Nichol & Dhariwal's cosine schedule, $\bar\alpha(t)=f(t/T)/f(0)$ with
# $f(u)=\cos^2\!\big(\tfrac{u+s}{1+s}\tfrac{\pi}{2}\big)$ and $s = 0.008$ (dividing by $f(0)$ makes
# $\bar\alpha(0) = 1$; the small offset $s$ keeps $\beta_t$ from being vanishingly small near $t = 0$),
# is defined through its betas, $\beta_t = \min\big(1 - f(\tfrac{t+1}{T})/f(\tfrac{t}{T}),\,0.999\big)$ for the
# code's $t = 0, \dots, T-1$; their product gives $\bar\alpha_t = f(\tfrac{t+1}{T})/f(0)$ (one index
# shifted: the code's $t$ is the noise after step $t + 1$) wherever the 0.999 cap does not bite,
# which is only at the last steps. It
# was designed against two faults of the linear one: the linear schedule destroys the signal early, and
# it then spends many steps on images that are already almost pure noise. Under the cosine
# schedule $\bar\alpha_t$ falls about linearly through the middle of the range and little time is
# spent near pure noise. The left panel shows both; the cell after it measures them.

# %%
lin, cos = NoiseSchedule.linear(), NoiseSchedule.cosine()
ts_all = torch.arange(lin.T)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for s in (lin, cos):
    axes[0].plot(ts_all, s.alphas_cumprod, label=s.name)
    axes[1].plot(ts_all, s.snr(ts_all).log(), label=s.name)
axes[0].set(title=r"$\bar\alpha_t$ (signal kept)", xlabel="$t$")
axes[1].set(title=r"$\log\mathrm{SNR}_t = \log\left(\bar\alpha_t / (1-\bar\alpha_t)\right)$", xlabel="$t$")
for ax in axes:
    ax.legend()
fig.tight_layout()
save_figure(fig, "01_schedules")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
mid = (ts_all >= 200) & (ts_all <= 800)
print(f"{'':>6} | {'SNR < 1 (abar < 0.5)':^22} | {'near pure noise (abar < 0.01)':^29} | max distance of abar_t from")
print(f"{'':>6} | {'from t':>8} {'steps':>13} | {'from t':>8} {'steps':>20} | a straight line, 200 <= t <= 800")
for s in (lin, cos):
    abar = s.alphas_cumprod
    A = torch.stack([ts_all[mid].double(), torch.ones(int(mid.sum()), dtype=torch.float64)], 1)
    line = A @ torch.linalg.lstsq(A, abar[mid, None]).solution
    half, noise = int((abar < 0.5).nonzero()[0]), int((abar < 0.01).nonzero()[0])
    print(f"{s.name:>6} | {half:>8} {1 - half / s.T:>13.1%} | {noise:>8} {1 - noise / s.T:>20.1%} | "
          f"{(abar[mid] - line[:, 0]).abs().max():.3f}")

# %% [markdown]
# The paper's prior (ADM 256 uncond) and our tiny prior both use the linear schedule, so with the
# paper's $t$ uniform over all steps, most of DiffLoss's random $t$ (the share with SNR < 1
# printed above) land where the image is already more noise than signal; chapter 03 comes back
# to this.

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
# * `q_sample` (Eq. 2) and the posterior (Ho et al. Eq. 6–7) are a few lines each; written from
#   $\beta$ alone they agree with `NoiseSchedule` to floating-point precision.
# * `q_step` (Eq. 1) iterated is `q_sample` (Eq. 2): same mean and variance, within Monte Carlo error.
# * The variance recursion (Eq. 3–4) holds to machine precision.
# * The posterior mean follows from Gaussian conditioning, and the posterior that a regression
#   finds is the closed form.
# * The unit tests (`tests/test_schedule.py`) check the same tables against diffusers' `DDPMScheduler`.
#
# ## Exercises
#
# Each solution is a self-contained script; `tests/test_exercises.py` runs every one of them.
#
# **Exercise 1.1 — the posterior variance.** Derive $\tilde\beta_t=\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$
# the way section 4 derived the mean, and check it numerically for both schedules. Why is
# $\tilde\beta_t$ always smaller than $\beta_t$?
#
# <details><summary>Solution</summary>
#
# For jointly Gaussian variables the conditional variance is what the regression leaves
# unexplained: $\operatorname{Var}(x_{t-1}\mid x_t,x_0)=\operatorname{Var}(x_{t-1})-\operatorname{Cov}(x_{t-1},x_t)^2/\operatorname{Var}(x_t)$,
# all given $x_0$. With the moments of section 4 and $\alpha_t(1-\bar\alpha_{t-1})=\alpha_t-\bar\alpha_t$:
#
# $$\tilde\beta_t=(1-\bar\alpha_{t-1})-\frac{\alpha_t(1-\bar\alpha_{t-1})^2}{1-\bar\alpha_t}
#   =(1-\bar\alpha_{t-1})\,\frac{1-\bar\alpha_t-\alpha_t+\bar\alpha_t}{1-\bar\alpha_t}
#   =\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# (Equivalently, by Bayes: the precisions add, $1/\tilde\beta_t=\alpha_t/\beta_t+1/(1-\bar\alpha_{t-1})$.)
# Since $\bar\alpha_t<\bar\alpha_{t-1}$, the factor $\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}$ is below 1: knowing
# $x_0$ as well as $x_t$ pins $x_{t-1}$ down more tightly than one forward step spreads it.
#
# ```python
# import torch
# from diffloss import NoiseSchedule
#
# for s in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
#     abar = s.alphas_cumprod
#     abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
#     var_x_prev, var_x_t = 1 - abar_prev, 1 - abar            # given x0
#     cov = s.alphas.sqrt() * (1 - abar_prev)
#     beta_tilde = var_x_prev - cov**2 / var_x_t                # conditional variance
#     bayes = 1 / (s.alphas / s.betas + 1 / (1 - abar_prev))    # sum of precisions (t >= 1)
#     assert torch.allclose(beta_tilde, s.posterior_variance, atol=1e-12)
#     assert torch.allclose(bayes[1:], s.posterior_variance[1:])
#     assert bool((beta_tilde <= s.betas).all())
#     print(f"{s.name}: beta~_t / beta_t runs from {beta_tilde[1] / s.betas[1]:.3f} (t = 1) "
#           f"to {beta_tilde[-1] / s.betas[-1]:.3f} (t = T-1)")
# ```
#
# Expected output:
#
# ```text
# linear: beta~_t / beta_t runs from 0.455 (t = 1) to 1.000 (t = T-1)
# cosine: beta~_t / beta_t runs from 0.472 (t = 1) to 1.000 (t = T-1)
# ```
#
# </details>
#
# **Exercise 1.2 — jumping from $x_s$ to $x_t$.** For $s<t$, show that $q(x_t\mid x_s)$ is
# Gaussian with mean $\sqrt{\bar\alpha_t/\bar\alpha_s}\,x_s$ and variance $1-\bar\alpha_t/\bar\alpha_s$, and
# check it by Monte Carlo with `q_step`.
#
# <details><summary>Solution</summary>
#
# The argument of section 3 starting from $x_s$ instead of $x_0$: the steps $s+1,\dots,t$ multiply the
# signal by $\prod_{r=s+1}^{t}\sqrt{\alpha_r}=\sqrt{\bar\alpha_t/\bar\alpha_s}$, and the variance
# recursion $v\mapsto\alpha_r v+\beta_r$ from $v=0$ gives $1-\prod_{r=s+1}^{t}\alpha_r=1-\bar\alpha_t/\bar\alpha_s$.
# Eq. (2) is the case "$s=-1$" ($\bar\alpha_{-1}=1$).
#
# ```python
# import torch
# from diffloss import NoiseSchedule
#
# schedule = NoiseSchedule.linear()
# s, t, n = 100, 300, 20_000
# g = torch.Generator().manual_seed(0)
# x_s = torch.full((n,), 0.7, dtype=torch.float64)
# x = x_s.clone()
# for r in range(s + 1, t + 1):  # 0-based: index r applies beta_r
#     x = schedule.q_step(x, torch.full((n,), r), torch.randn(n, generator=g, dtype=torch.float64))
# ratio = schedule.alphas_cumprod[t] / schedule.alphas_cumprod[s]
# mean, var = ratio.sqrt() * 0.7, 1 - ratio
# z_mean = (x.mean() - mean) / (var / n).sqrt()
# z_var = (x.var() - var) / (var * (2 / (n - 1)) ** 0.5)
# print(f"mean {x.mean():.4f} vs {mean:.4f} (z = {z_mean:+.2f}), variance {x.var():.4f} vs {var:.4f} (z = {z_var:+.2f})")
# assert abs(z_mean) < 5 and abs(z_var) < 5
# ```
#
# Expected output:
#
# ```text
# mean 0.4699 vs 0.4644 (z = +1.04), variance 0.5678 vs 0.5598 (z = +1.42)
# ```
#
# </details>
#
# **Exercise 1.3 — the posterior mean in terms of $\epsilon$.** A diffusion model predicts $\epsilon$,
# not $x_0$ (chapter 02). Substitute $x_0=(x_t-\sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$ into
# $\tilde\mu_t$ and show $\tilde\mu_t=\frac{1}{\sqrt{\alpha_t}}\big(x_t-\frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon\big)$
# (Ho et al. Eq. 11, the mean of every step of the DDPM sampler). Check it with `allclose`.
#
# <details><summary>Solution</summary>
#
# The coefficient of $x_t$ is $c_2+c_1/\sqrt{\bar\alpha_t}=\frac{(1-\bar\alpha_{t-1})\sqrt{\alpha_t}}{1-\bar\alpha_t}+\frac{\beta_t}{\sqrt{\alpha_t}(1-\bar\alpha_t)}
# =\frac{\alpha_t-\bar\alpha_t+1-\alpha_t}{\sqrt{\alpha_t}(1-\bar\alpha_t)}=\frac{1}{\sqrt{\alpha_t}}$,
# and that of $\epsilon$ is $-c_1\sqrt{1-\bar\alpha_t}/\sqrt{\bar\alpha_t}=-\frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}$.
#
# ```python
# import torch
# from diffloss import NoiseSchedule
#
# g = torch.Generator().manual_seed(0)
# for schedule in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
#     t = torch.arange(schedule.T)
#     x0 = torch.rand(schedule.T, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
#     eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
#     xt = schedule.q_sample(x0, t, eps)
#     mean, _, _ = schedule.q_posterior(schedule.predict_x0(xt, t, eps), xt, t)
#     a = schedule.alphas.view(-1, 1, 1, 1)
#     b = schedule.betas.view(-1, 1, 1, 1)
#     abar = schedule.alphas_cumprod.view(-1, 1, 1, 1)
#     mean_eps = (xt - b / (1 - abar).sqrt() * eps) / a.sqrt()
#     print(f"{schedule.name}: Ho et al. Eq. 11 == posterior mean at every t:", torch.allclose(mean_eps, mean))
#     assert torch.allclose(mean_eps, mean)
# ```
#
# Expected output:
#
# ```text
# linear: Ho et al. Eq. 11 == posterior mean at every t: True
# cosine: Ho et al. Eq. 11 == posterior mean at every t: True
# ```
#
# </details>
#
# Next, chapter 02: a network that has learned to *predict* $\epsilon$ from $x_t$ — the frozen
# diffusion prior whose opinion DiffLoss asks for.
