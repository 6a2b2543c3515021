"""What state a trained IAT is in: its maps, its clamps, and one label for the whole.

IAT's output is ``z = clamp(C·(y·M + A), 1e-8, 1)^g`` (:mod:`diffloss.models.iat`). Two of its
parts can stop learning: ``M = ReLU(·)`` is *dead* where it is 0 (no gradient passes back
through it there), and a value at either clamp gets no gradient through that pixel from any
loss (the shared weights can still move it back; once most pixels are there, little does). :func:`iat_state` measures,
over some images, the share of pixels with ``M = 0`` in every channel, the mean of ``A``, the
exponent ``g``, the mean diagonal of ``C``, the shares of ``C·(y·M + A)`` at or past each clamp
(measured before the exponent, where the clamp acts), and the spread of ``z``; :func:`state_label`
reads them as one label, first match wins.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["STATE_RULES", "iat_state", "state_label"]

#: The labels of :func:`state_label`, in the order they are tried.
STATE_RULES: tuple[str, ...] = (
    "black: over 90% of the values at the lower clamp",
    "white: over 90% of the values at the upper clamp",
    "mostly clamped: over half the values at a clamp",
    "flat: the output barely depends on the input (its standard deviation below 0.02)",
    "M mostly dead: over half the pixels have M = 0, so the output no longer multiplies the input",
    "partly clamped: over 10% of the values at a clamp",
    "working",
)


@torch.no_grad()
def iat_state(net: nn.Module, images: Iterable[Tensor]) -> dict[str, float]:
    """The mean over ``images`` (each 3×H×W, degraded inputs) of IAT's internals (module
    docstring): ``dead``, ``add``, ``gamma``, ``diag``, ``low``, ``high`` (shares and means) and
    ``std`` (of the output), plus ``clamped = low + high`` and ``label`` (:func:`state_label`).
    ``net`` is an :class:`~diffloss.models.iat.IAT` (anything with its ``stages``)."""
    if not hasattr(net, "stages"):
        raise TypeError(f"iat_state needs an IAT (a network with .stages), got {type(net).__name__}")
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    rows = []
    try:
        for y in images:
            st = net.stages(y[None].to(device))
            rows.append({"dead": float((st["mul"] == 0).all(dim=1).float().mean()),
                         "add": float(st["add"].mean()),
                         "gamma": float(st["gamma"].mean()),
                         "diag": float(st["color"].diagonal(dim1=-2, dim2=-1).mean()),
                         "low": float((st["mixed"] <= 1e-8).float().mean()),
                         "high": float((st["mixed"] >= 1).float().mean()),
                         "std": float(st["z"].std())})
    finally:
        net.train(was_training)
    if not rows:
        raise ValueError("iat_state needs at least one image")
    mean: dict[str, float] = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    mean["clamped"] = mean["low"] + mean["high"]
    return {**mean, "label": state_label(mean)}  # type: ignore[dict-item]


def state_label(m: dict[str, float]) -> str:
    """One label from :func:`iat_state`'s means (:data:`STATE_RULES`, first match wins); a run
    with M mostly dead and over 10% clamped says both."""
    clamped = m["low"] + m["high"]
    if m["low"] > 0.9:
        return STATE_RULES[0]
    if m["high"] > 0.9:
        return STATE_RULES[1]
    if clamped > 0.5:
        return STATE_RULES[2]
    if m["std"] < 0.02:
        return STATE_RULES[3]
    if m["dead"] > 0.5:
        return STATE_RULES[4] + (f"; and partly clamped: {clamped:.0%} of the values at a clamp"
                                 if clamped > 0.1 else "")
    if clamped > 0.1:
        return f"partly clamped: {clamped:.0%} of the values at the two clamps together"
    return STATE_RULES[6]
