"""The one figure style of diffloss.viz: no text under 8 pt, a profile stamp that never overlaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from diffloss import viz  # noqa: E402


@pytest.fixture
def figures(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLOSS_FIGURES", str(tmp_path))
    monkeypatch.setenv("DIFFLOSS_PROFILE", "small")
    yield tmp_path
    plt.close("all")


def test_style_font_sizes_are_at_least_8_pt():
    assert viz.MIN_FONT_SIZE >= 8
    assert all(size >= 8 for size in viz.STYLE.values())
    sizes = viz.style_font_sizes()  # what the rcParams resolve to after importing diffloss.viz
    assert set(sizes) == set(viz.STYLE)
    assert all(size >= viz.MIN_FONT_SIZE for size in sizes.values()), sizes
    for key in ("axes.titlesize", "xtick.labelsize", "ytick.labelsize", "legend.fontsize"):
        assert key in sizes


def _texts(fig):
    return [t for t in fig.findobj(Text) if t.get_text()]


def test_save_figure_raises_small_text_and_stamps_below_everything(figures):
    fig, axes = plt.subplots(1, 2, figsize=(6, 2.5))
    axes[0].plot([0, 1], [0, 1])
    axes[0].set_title("a title set too small", fontsize=5)
    axes[0].tick_params(labelsize=4)
    axes[0].set_xlabel("t", fontsize=6)
    im = axes[1].imshow(np.arange(16.0).reshape(4, 4))
    fig.colorbar(im, ax=axes[1], label="MSE")
    fig.tight_layout()
    path = viz.save_figure(fig, "style_check")
    assert path == figures / "style_check.png" and path.exists()
    assert min(t.get_fontsize() for t in _texts(fig)) >= viz.MIN_FONT_SIZE
    stamps = [t for t in fig.texts if t.get_gid() == viz.STAMP_GID]
    assert len(stamps) == 1 and "profile: small" in stamps[0].get_text()
    renderer = fig.canvas.get_renderer()
    stamp = stamps[0].get_window_extent(renderer)
    assert len(fig.axes) == 3  # two axes and the colour bar
    for ax in fig.axes:
        box = ax.get_tightbbox(renderer)  # the axes with its ticks and labels
        assert not box.overlaps(stamp), ax
        assert stamp.y1 <= box.y0
    viz.save_figure(fig, "style_check")  # saving again replaces the stamp
    assert len([t for t in fig.texts if t.get_gid() == viz.STAMP_GID]) == 1


def test_stamp_with_subfigures(figures):
    fig = plt.figure(figsize=(6, 2))
    left, right = fig.subfigures(1, 2)
    left.subplots().plot([0, 1])
    ax = right.subplots()
    ax.set_xlabel("a label")
    viz.save_figure(fig, "subfigures")
    renderer = fig.canvas.get_renderer()
    stamp = next(t for t in fig.texts if t.get_gid() == viz.STAMP_GID).get_window_extent(renderer)
    assert stamp.y1 <= ax.get_tightbbox(renderer).y0


def test_image_grid_keeps_its_signature(figures):
    imgs = [torch.rand(3, 8, 8) for _ in range(4)]
    fig = viz.image_grid(imgs, ["a", "b", "c", "d"], ncols=2, size=1.0, value_range=(0, 1),
                         row_labels=["row 1", "row 2"])
    assert len(fig.axes) == 4
    assert min(t.get_fontsize() for t in _texts(fig)) >= viz.MIN_FONT_SIZE
    viz.save_figure(fig, "grid")
    assert (figures / "grid.png").exists()


def test_side_by_side_joins_strips_into_one_panel():
    a, b = torch.zeros(3, 10, 4), torch.zeros(3, 7, 5)
    panel = viz.side_by_side([a, b], gap=2)
    assert panel.shape == (3, 10, 4 + 2 + 5)
    assert bool((panel[:, :, 4:6] == 1).all()) and bool((panel[:, 7:, 6:] == 1).all())
    assert bool((panel[:, :7, 6:] == 0).all())
    with pytest.raises(ValueError):
        viz.side_by_side([])


def test_comparison_rows_join_narrow_strips_and_keep_wide_images_apart():
    g = torch.Generator().manual_seed(0)
    strips = [(torch.rand(3, 30, 10, generator=g), torch.rand(3, 30, 10, generator=g), f"s{i}")
              for i in range(5)]
    outs = {"A": [x for _, x, _ in strips], "B": [h for h, _, _ in strips]}
    images, titles = viz.comparison_rows("test", strips, outs, strips=3)
    assert len(images) == 4 and images[0].shape == (3, 30, 3 * 10 + 2 * 3)  # one row of 3 strips
    assert titles[1] == "A (inf dB, mean)" and titles[-1] == "ground truth"
    assert titles[0].startswith("test: 3 bands\nhazy (")
    wide = [(torch.rand(3, 10, 30, generator=g), torch.rand(3, 10, 30, generator=g), f"w{i}")
            for i in range(3)]
    images, titles = viz.comparison_rows("ood", wide, {"A": [h for h, _, _ in wide]}, rows=2)
    assert len(images) == 2 * 3 and images[0].shape == (3, 10, 30)


def test_image_grid_title_is_laid_out_above_the_panel_titles():
    """Review finding 16: a suptitle added after image_grid's tight_layout was drawn over the first
    row's (two-line) titles; ``title=`` is laid out with them."""
    imgs = [torch.rand(3, 16, 16) for _ in range(6)]
    fig = viz.image_grid(imgs, [f"L1 + DiffLoss,\nstep {k}" for k in range(6)], ncols=3,
                         title="ood: flower, seed 0; DiffLoss judged by ffdnet / the tiny prior")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    top_of_titles = max(ax.title.get_window_extent(r).y1 for ax in fig.axes[:3])
    assert fig._suptitle.get_window_extent(r).y0 >= top_of_titles
    plt.close(fig)
