"""Evaluation: restore whole images (optionally in blended tiles) and score PSNR/SSIM.

Full resolution through the model's own padding, eval mode, no autograd; scores are RGB in
[0, 1], the mean of per-image values (:mod:`diffloss.metrics`, which match scikit-image).
Tiling (``tile``/``overlap``) keeps a 1600×1200 Dense-Haze image within a small GPU's memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..metrics import psnr, ssim
from ..precision import autocast_dtype

__all__ = ["EvalResult", "evaluate", "forward_fn", "restore", "saturated_share"]


def saturated_share(image: Tensor) -> float:
    """The share of the values of an image in [0, 1] within 1/255 of 0 or 1 (at the clamp;
    :mod:`.validation`)."""
    return float(((image <= 1 / 255) | (image >= 1 - 1 / 255)).float().mean())


def forward_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model's own forward without accelerate's autocast wrapper (fp32 evaluation)."""
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_original_forward", inner)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _blend_window(h: int, w: int, overlap: int, device: torch.device) -> Tensor:
    """Weights that ramp linearly from 1/(overlap+1) at a tile's border to 1 inside."""
    def ramp(n: int) -> Tensor:
        i = torch.arange(n, device=device, dtype=torch.float32)
        d = torch.minimum(i, n - 1 - i) + 1
        return (d / (overlap + 1)).clamp(max=1.0) if overlap > 0 else torch.ones(n, device=device)

    return ramp(h)[:, None] * ramp(w)[None, :]


@torch.no_grad()
def restore(model: nn.Module | Callable[[Tensor], Tensor], image: Tensor, tile: int | None = None,
            overlap: int = 32) -> Tensor:
    """Run ``model`` on a ``B×3×H×W`` image, whole or in ``tile×tile`` tiles.

    Tiles overlap by ``overlap`` pixels and are blended with linear ramps, which hides seams;
    each tile goes through the model's own padding. ``tile=None`` (or a tile not smaller than
    the image) runs the image whole. The output is clamped to [0, 1].
    """
    forward = model if not isinstance(model, nn.Module) else forward_fn(model)
    h, w = image.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return forward(image).float().clamp_(0, 1)
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must exceed 2·overlap ({overlap})")
    out = torch.zeros(image.shape[0], 3, h, w, device=image.device)
    weight = torch.zeros(1, 1, h, w, device=image.device)
    th, tw = min(tile, h), min(tile, w)
    win = _blend_window(th, tw, overlap, image.device)[None, None]
    for y in _starts(h, th, overlap):
        for x in _starts(w, tw, overlap):
            patch = forward(image[..., y:y + th, x:x + tw]).float()
            out[..., y:y + th, x:x + tw] += patch * win
            weight[..., y:y + th, x:x + tw] += win
    return (out / weight).clamp_(0, 1)


@dataclass
class EvalResult:
    """Mean PSNR/SSIM over the images (mean of per-image values) and the per-image rows;
    ``space``: ``"RGB"``, or ``"Y"`` (the Y channel of YCbCr, as deraining papers report)."""

    psnr: float
    ssim: float
    per_image: list[dict[str, Any]]
    seconds: float
    space: str = "RGB"
    lpips: float | None = None
    saturated: float | None = None  # share of output values at the clamp (:mod:`.validation`)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate(model: nn.Module, dataset: Dataset, tile: int | None = None, overlap: int = 32,
             device: torch.device | str | None = None, max_items: int | None = None,
             amp: bool | str = False, y_channel: bool = False,
             lpips: Callable[[Tensor, Tensor], Tensor] | None = None) -> EvalResult:
    """PSNR/SSIM of ``model`` on ``dataset`` items ``(degraded, clean[, name])``, image by image.

    Full resolution through the model's own padding (or :func:`restore` tiles), eval mode,
    ``torch.no_grad``, fp32 unless ``amp`` (on CUDA: the card's half precision,
    :func:`diffloss.precision.native_half`, or ``"bf16"``/``"fp16"``). The output is clamped to
    [0, 1] before scoring. ``y_channel``: score the Y channel of YCbCr (BT.601, as MATLAB's
    ``rgb2ycbcr``; deraining's convention) instead of RGB. ``lpips``: also score LPIPS (on RGB,
    as papers report it) with this metric, e.g. :func:`diffloss.lpips.load_lpips`. The model's
    train/eval mode is restored afterwards.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    n = len(dataset) if max_items is None else min(max_items, len(dataset))  # type: ignore[arg-type]
    half = autocast_dtype(dev, amp) if amp and dev.type == "cuda" else None
    ctx = torch.autocast("cuda", dtype=half) if half is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), ctx:
            for i in range(n):
                item = dataset[i]
                degraded, clean = item[0], item[1]
                name = item[2] if len(item) > 2 else str(i)
                pred = restore(model, degraded[None].to(dev), tile=tile, overlap=overlap)
                target = clean[None].to(dev)
                row = {"name": name, "psnr": float(psnr(pred, target, y_channel=y_channel)),
                       "ssim": float(ssim(pred, target, y_channel=y_channel)),
                       "saturated": saturated_share(pred)}
                if lpips is not None:
                    row["lpips"] = float(lpips(pred.clamp(0, 1), target)[0])
                rows.append(row)
    finally:
        model.train(was_training)
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows])) if rows else float("nan")

    return EvalResult(psnr=mean("psnr"), ssim=mean("ssim"), per_image=rows,
                      seconds=time.perf_counter() - t0, space="Y" if y_channel else "RGB",
                      lpips=mean("lpips") if lpips is not None else None, saturated=mean("saturated"))


def check_finite_scores(res: EvalResult, split: str, step: int, checkpoint: Path | None) -> None:
    """A :class:`~diffloss.training.guards.NonFiniteLossError` when an evaluation's PSNR or SSIM
    is NaN/inf: a network finite in training but not in ``eval()`` mode (BatchNorm statistics,
    dropout) must stop the run, never be chosen as ``best.pt``."""
    from .guards import NonFiniteLossError

    if math.isfinite(res.psnr) and math.isfinite(res.ssim):
        return
    raise NonFiniteLossError(
        f"evaluation at step {step} gave {split} PSNR {res.psnr} dB, SSIM {res.ssim}: the network's "
        "output in eval() mode is not finite (e.g. BatchNorm or dropout layers that behave "
        "differently there), although training was. No best checkpoint is chosen on it.", step,
        {f"{split}_psnr": res.psnr, f"{split}_ssim": res.ssim}, checkpoint)
