"""Plotting helpers shared by the chapters: the figure style, where figures go, image grids.

**The one figure style.** Importing this module applies :data:`STYLE` to matplotlib's
``rcParams``: no title, label, tick label or legend below :data:`MIN_FONT_SIZE` (8 pt), so a
figure stays legible at the width GitHub shows it. :func:`save_figure` enforces the same floor on
every text of the figure it saves (a title set smaller by hand is raised to 8 pt) and stamps the
run profile *below* everything drawn, in a margin of its own, so the stamp never covers an
axis, a label or a colour bar.

Figures are PNGs in ``figures/`` at the repository root. Under the ``ci`` profile (nbval in CI)
they go to ``figures/ci/`` (git-ignored) so a test run never overwrites the committed figures of
the ``small`` profile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text
from torch import Tensor

from . import profiles

#: No text in a saved figure is smaller than this (points).
MIN_FONT_SIZE = 8.0
#: Font sizes of every figure (points). Applied on import; :func:`save_figure` enforces the floor.
STYLE: dict[str, float] = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "figure.labelsize": 10,
}
#: gid of the profile stamp (one per figure, replaced when a figure is saved again).
STAMP_GID = "diffloss-profile-stamp"


def use_style() -> None:
    """Apply :data:`STYLE` to ``matplotlib.rcParams`` (done once when this module is imported)."""
    mpl.rcParams.update(STYLE)


def style_font_sizes() -> dict[str, float]:
    """The font size, in points, that each text-size rcParam of :data:`STYLE` resolves to now."""
    sizes = {}
    for key in STYLE:
        value = mpl.rcParams[key]
        sizes[key] = FontProperties(size=value).get_size_in_points()
    return sizes


use_style()


def enforce_min_font_size(fig: plt.Figure, minimum: float = MIN_FONT_SIZE) -> int:
    """Raise every text of ``fig`` (titles, labels, tick labels, legends, annotations) smaller
    than ``minimum`` points to ``minimum``; returns how many were raised."""
    raised = 0
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < minimum:
            text.set_fontsize(minimum)
            raised += 1
    return raised


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
    """Save ``fig`` as ``figures/<name>.png``: every text at least :data:`MIN_FONT_SIZE` pt, and a
    stamp naming the profile that made it in a margin below everything drawn (never on an axis
    or a colour bar). Saving the same figure again replaces its stamp."""
    profile = profile or profiles.current()
    enforce_min_font_size(fig)
    for old in [t for t in fig.texts if t.get_gid() == STAMP_GID]:
        old.remove()
    fig.canvas.draw()  # run the layout engine first, so the bounding box is final
    bbox = fig.get_tightbbox()  # inches: everything drawn, labels hanging off the figure included
    width, height = fig.get_size_inches()
    # In figure coordinates (which `bbox_inches="tight"` shifts with the saved region), just
    # below the lowest thing drawn: the saved image grows a margin for it.
    fig.text(bbox.x1 / width, (bbox.y0 - 0.04) / height, f"diffloss · profile: {profile.name}",
             ha="right", va="top", fontsize=MIN_FONT_SIZE, color="0.45", gid=STAMP_GID)
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
               row_labels: Sequence[str] | None = None, title: str | None = None) -> plt.Figure:
    """Show images (3×H×W tensors) in a grid with optional titles; returns the figure.

    ``title``: the figure's title, laid out with the rest (a ``fig.suptitle`` added after this
    returns would be drawn over the first row's titles)."""
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def side_by_side(images: Sequence[Tensor], gap: int = 3, fill: float = 1.0) -> Tensor:
    """3×H×W images joined left to right, each padded at the bottom to the tallest, with a
    ``gap``-pixel ``fill`` margin between them: one panel for several narrow strips (the
    in-distribution test bands), so that a figure's rows are not thin strips in white space."""
    import torch

    if not images:
        raise ValueError("side_by_side needs at least one image")
    h = max(im.shape[-2] for im in images)
    parts = []
    for i, im in enumerate(images):
        pad = im.new_full((im.shape[0], h - im.shape[-2], im.shape[-1]), fill)
        parts.append(torch.cat([im, pad], dim=-2))
        if i < len(images) - 1:
            parts.append(im.new_full((im.shape[0], h, gap), fill))
    return torch.cat(parts, dim=-1)


def comparison_rows(split: str, items: Sequence[tuple], outputs: dict[str, Sequence[Tensor]],
                    rows: int = 2, strips: int = 4,
                    input_label: str = "hazy") -> tuple[list[Tensor], list[str]]:
    """Images and titles for :func:`image_grid`: per row the degraded input, each label's
    restoration and the ground truth, titled with PSNR. ``items`` are ``(degraded, clean, name)``
    and ``outputs[label][i]`` restores item ``i``. Wide images get one row each (the first
    ``rows``); narrow strips (taller than twice their width) are joined side by side, the first
    ``strips`` of them in one row, titled with their mean PSNR."""
    from .metrics import psnr

    def score(img: Tensor, clean: Tensor) -> float:
        return float(psnr(img[None].clamp(0, 1), clean[None]))

    narrow = items[0][0].shape[-2] > 2 * items[0][0].shape[-1]
    groups = [list(range(min(strips, len(items))))] if narrow else \
        [[i] for i in range(min(rows, len(items)))]
    images: list[Tensor] = []
    titles: list[str] = []
    for group in groups:
        names = ", ".join(str(items[i][2]) for i in group) if len(group) <= 2 else \
            f"{len(group)} bands"
        columns = [(f"{split}: {names}\n{input_label}", [items[i][0] for i in group])]
        columns += [(label, [outputs[label][i] for i in group]) for label in outputs]
        for title, imgs in columns:
            mean = sum(score(im, items[i][1]) for im, i in zip(imgs, group)) / len(group)
            images.append(side_by_side(imgs) if narrow else imgs[0])
            titles.append(f"{title} ({mean:.1f} dB{', mean' if len(group) > 1 else ''})")
        images.append(side_by_side([items[i][1] for i in group]) if narrow else items[group[0]][1])
        titles.append("ground truth")
    return images, titles


def make_grid(images: Tensor, nrow: int = 8, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """torchvision's ``make_grid`` on a B×3×H×W batch, mapped to [0, 1]."""
    from torchvision.utils import make_grid as tv_make_grid

    lo, hi = value_range
    return tv_make_grid(((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1), nrow=nrow, padding=2,
                        pad_value=1.0)


