"""Plotting helpers shared by the chapters: where figures go, image grids, curves.

Figures are PNGs in ``figures/`` at the repository root, stamped with the run profile that
made them. Under the ``ci`` profile (nbval in CI) they go to ``figures/ci/`` (git-ignored) so
a test run never overwrites the committed figures of the ``small`` profile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from torch import Tensor

from . import profiles


def repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``pyproject.toml``;
    the cwd itself when there is none (e.g. on Colab with a pip-installed package)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "diffloss").is_dir():
            return folder
    return here


def figures_dir(profile: profiles.Profile | None = None) -> Path:
    """``figures/`` (``figures/ci/`` under the ``ci`` profile); ``DIFFLOSS_FIGURES`` overrides."""
    profile = profile or profiles.current()
    override = os.environ.get("DIFFLOSS_FIGURES")
    folder = Path(override) if override else repo_root() / "figures"
    if profile.name == "ci" and not override:
        folder = folder / "ci"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig: plt.Figure, name: str, profile: profiles.Profile | None = None, dpi: int = 90) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` with a footer naming the profile that made it."""
    profile = profile or profiles.current()
    fig.text(0.995, 0.005, f"diffloss · profile: {profile.name}", ha="right", va="bottom",
             fontsize=7, color="0.45")
    path = figures_dir(profile) / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def to_numpy_image(img: Tensor, value_range: tuple[float, float] = (0.0, 1.0)):
    """3×H×W (or H×W) tensor in ``value_range`` → H×W×3 numpy array in [0, 1] for ``imshow``."""
    lo, hi = value_range
    img = ((img.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return img.permute(1, 2, 0).numpy() if img.ndim == 3 else img.numpy()


def image_grid(images: Sequence[Tensor], titles: Sequence[str] | None = None, ncols: int | None = None,
               size: float = 2.2, value_range: tuple[float, float] = (0.0, 1.0),
               row_labels: Sequence[str] | None = None) -> plt.Figure:
    """Show images (3×H×W tensors) in a grid with optional titles; returns the figure."""
    n = len(images)
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_numpy_image(images[i], value_range), cmap="gray" if images[i].ndim == 2 else None)
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=9)
    if row_labels:
        for r, label in enumerate(row_labels[:nrows]):
            axes[r, 0].axis("on")
            axes[r, 0].set_xticks([])
            axes[r, 0].set_yticks([])
            for spine in axes[r, 0].spines.values():
                spine.set_visible(False)
            axes[r, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    return fig


def make_grid(images: Tensor, nrow: int = 8, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """torchvision's ``make_grid`` on a B×3×H×W batch, mapped to [0, 1]."""
    from torchvision.utils import make_grid as tv_make_grid

    lo, hi = value_range
    return tv_make_grid(((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1), nrow=nrow, padding=2,
                        pad_value=1.0)


