"""Widgets for the chapters: a knob over precomputed pictures, so that moving it is instant.

Every chapter widget is the same idea: the chapter computes one picture per value of a knob
(a timestep, a training step, a loss), encodes each as PNG once, and :func:`frame_viewer` shows
them under a slider (numbers) or toggle buttons (names). The callback only swaps bytes, so it
never recomputes and can be tested headless: set ``viewer.control.value`` and
``viewer.image.value`` is the precomputed frame. A chapter also saves a static figure of a few
frames, so the page reads on GitHub, where widgets do not run.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchvision.io import encode_png

__all__ = ["FrameViewer", "figure_png", "frame_viewer", "image_png"]


def image_png(img: Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """A 3×H×W (or 1×H×W) image tensor as PNG bytes (values in ``value_range``, clamped)."""
    lo, hi = value_range
    x = ((img.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return encode_png((x * 255).round().to(torch.uint8)).numpy().tobytes()


def figure_png(fig: plt.Figure, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed afterwards)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class FrameViewer:
    """A control over precomputed frames: ``control`` (slider or buttons), ``image``, ``box``."""

    frames: dict[Hashable, bytes]
    control: Any
    image: Any
    box: Any

    def show(self, key: Hashable) -> None:
        """Select ``key``'s frame (what moving the control does)."""
        self.control.value = key

    def _ipython_display_(self) -> None:  # display(viewer) shows the box
        from IPython.display import display

        display(self.box)


def frame_viewer(frames: Mapping[Hashable, bytes | Tensor], description: str, title: str = "",
                 value: Hashable | None = None,
                 render: Callable[[Any], bytes] | None = None) -> FrameViewer:
    """A widget that shows ``frames[key]`` for the key the control selects.

    ``frames`` maps each knob value to PNG bytes or an image tensor in [0, 1] (encoded once here).
    Numeric keys get a ``SelectionSlider`` (in the frames' order, floats shown to 3 digits);
    other keys ``ToggleButtons``.
    ``value``: the initial key (default the first).
    """
    import ipywidgets as widgets

    if not frames:
        raise ValueError("frame_viewer needs at least one frame")
    encode = render or image_png
    pngs = {k: (v if isinstance(v, bytes) else encode(v)) for k, v in frames.items()}
    keys = list(pngs)
    start = keys[0] if value is None else value
    if start not in pngs:
        raise ValueError(f"initial value {start!r} is not one of the frames' keys {keys}")
    if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys):
        labels = [str(k) if isinstance(k, int) else f"{k:.3g}" for k in keys]
        control = widgets.SelectionSlider(options=list(zip(labels, keys)), value=start,
                                          description=description, continuous_update=True)
    else:
        control = widgets.ToggleButtons(options=keys, value=start, description=description)
    image = widgets.Image(value=pngs[start], format="png")
    control.observe(lambda change: setattr(image, "value", pngs[change["new"]]), names="value")
    parts = ([widgets.Label(title)] if title else []) + [control, image]
    return FrameViewer(pngs, control, image, widgets.VBox(parts))
