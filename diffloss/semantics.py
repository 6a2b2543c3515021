"""Semantic recovery: does an ImageNet classifier see the same thing in a restoration as in the
clean image?

The paper's "low for high" test (Section 4: low-light images of CUB-200 classified after
restoration) asks whether restoring an image restores what a recogniser finds in it. Here the
recogniser is :func:`diffloss.classifier.imagenet_classifier` (EfficientNet-Lite0, ImageNet-1k),
and the question is asked of pairs (restored z, clean x) without labels: for crops cut at the
same place from both,

- **top-1 agreement**: ``argmax p(z) = argmax p(x)``;
- **top-5 overlap**: ``|top5 p(z) ∩ top5 p(x)| / 5``;
- **KL** of the clean prediction from the restored one, ``KL(p(x) ‖ p(z)) = Σ_k p_k(x)·log(p_k(x)/p_k(z))``
  in nats (0 when the classifier's beliefs match),

averaged over crops and images. The degraded input scored the same way is the baseline a
restorer has to beat.

Why crops: a test split here has a handful of images, and an ImageNet classifier wants one
object at 224 px. ``crops`` square windows per image, of a side drawn between half and all of the
shorter side, at positions drawn from ``seed`` (the same windows for every network and for the
input, so scores are paired), each resized to 224 px, give many views of every scene. 16 crops
per image by default: with n test images that is 16·n views per split (chapter 07: 4 unseen
scenes, 64 views; 12 in-distribution images, 192 views), so that one view's flip of the top class
moves a split's agreement by 1/(16·n), at the cost of seconds to a minute on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .classifier import normalize

__all__ = ["SemanticScores", "crop_boxes", "semantic_agreement", "semantic_scores"]

#: Crops per image (module docstring: why).
DEFAULT_CROPS = 16


@dataclass
class SemanticScores:
    """Means over every crop of every image; ``views`` is how many crops they are;
    ``clean_confidence`` is the classifier's mean top-1 probability on the clean crops (how sure
    the judge is of the reference: near 1/1000 it sees nothing, near 1 one clear class)."""

    top1_agreement: float
    top5_overlap: float
    kl: float
    views: int
    clean_confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def crop_boxes(height: int, width: int, crops: int, generator: torch.Generator,
               min_share: float = 0.5) -> list[tuple[int, int, int]]:
    """``crops`` square windows ``(top, left, side)`` inside an image: side uniform between
    ``min_share`` and all of the shorter side, position uniform where the window fits."""
    short = min(height, width)
    low = max(1, int(short * min_share))
    boxes = []
    for _ in range(crops):
        side = int(torch.randint(low, short + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        boxes.append((top, left, side))
    return boxes


def _views(image: Tensor, boxes: list[tuple[int, int, int]]) -> Tensor:
    return torch.cat([normalize(image[None, :, t:t + s, left:left + s]) for t, left, s in boxes])


@torch.no_grad()
def semantic_agreement(classifier: nn.Module, restored: Tensor, clean: Tensor,
                       boxes: list[tuple[int, int, int]], log_clean: Tensor | None = None) -> dict[str, Tensor]:
    """Per-crop top-1 agreement, top-5 overlap and KL(p(clean) ‖ p(restored)) for one image pair
    (``3×H×W`` in [0, 1]) over the crop ``boxes``, and the clean crops' top-1 probability
    (``confidence``) and log-probabilities (``log_clean``: pass them back to skip the clean
    image's forward pass when the same crops are scored again)."""
    if restored.shape != clean.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and clean {tuple(clean.shape)} differ in shape")
    dev = next(classifier.parameters()).device
    log_z = classifier(_views(restored.clamp(0, 1), boxes).to(dev)).float().log_softmax(-1)
    log_x = (log_clean.to(dev) if log_clean is not None else
             classifier(_views(clean.clamp(0, 1), boxes).to(dev)).float().log_softmax(-1))
    top5_z, top5_x = log_z.topk(5, -1).indices, log_x.topk(5, -1).indices
    overlap = (top5_z[:, :, None] == top5_x[:, None, :]).any(-1).float().mean(-1)
    return {"top1": (log_z.argmax(-1) == log_x.argmax(-1)).float(), "top5": overlap,
            "kl": (log_x.exp() * (log_x - log_z)).sum(-1), "confidence": log_x.exp().amax(-1),
            "log_clean": log_x}


def semantic_scores(model: nn.Module, dataset: Dataset, classifier: nn.Module,
                    crops: int = DEFAULT_CROPS, seed: int = 0,
                    device: torch.device | str = "cpu",
                    clean_cache: dict[int, Tensor] | None = None) -> SemanticScores:
    """:class:`SemanticScores` of ``model``'s restorations of ``dataset`` (items ``(degraded,
    clean[, name])``) against the clean images; ``nn.Identity()`` scores the degraded input. The
    crop windows depend on ``seed`` and each image's size only, so two models are scored on the
    same views. ``clean_cache``: a dict kept by the caller for one (dataset, crops, seed, classifier);
    the clean crops' predictions are stored there and reused by the next call."""
    from .training.evaluation import restore

    if crops < 1:
        raise ValueError(f"crops must be at least 1, got {crops}")
    was_training = model.training
    model.eval()
    rows: dict[str, list[Tensor]] = {"top1": [], "top5": [], "kl": [], "confidence": []}
    try:
        for i in range(len(dataset)):  # type: ignore[arg-type]
            degraded, clean = dataset[i][0], dataset[i][1]
            with torch.no_grad():
                restored = restore(model, degraded[None].to(device))[0].float().cpu()
            g = torch.Generator().manual_seed(seed * 100_003 + i)
            boxes = crop_boxes(clean.shape[-2], clean.shape[-1], crops, g)
            cached = clean_cache.get(i) if clean_cache is not None else None
            got = semantic_agreement(classifier, restored, clean.float(), boxes, log_clean=cached)
            if clean_cache is not None:
                clean_cache[i] = got["log_clean"].cpu()
            for k in rows:
                rows[k].append(got[k].cpu())
    finally:
        model.train(was_training)
    if not rows["top1"]:
        raise ValueError("the dataset is empty: nothing to score")
    top1, top5, kl, conf = (torch.cat(rows[k]) for k in ("top1", "top5", "kl", "confidence"))
    return SemanticScores(float(top1.mean()), float(top5.mean()), float(kl.mean()), len(top1),
                          float(conf.mean()))
