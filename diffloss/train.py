"""Training a restoration network with a fidelity loss and, optionally, DiffLoss.

The pieces, in the order :func:`train` uses them:

- :class:`TrainConfig`: every knob of a run, saved as ``config.json`` next to the checkpoints
  (JSON and YAML round-trip, unknown keys and values are clear errors).
- Data: ``synthetic`` haze on the bundled images (:class:`~diffloss.data.SyntheticHaze`) or a
  paired folder layout (:class:`~diffloss.data.PairedImageDataset`: ``dense_haze``, ``lol``,
  ``rain``). The batches are a pure function of ``(seed, step)`` (:class:`StepBatchSampler`), so a
  resumed run sees exactly the batches the uninterrupted run would have seen.
- The loss ``L_total = fidelity(z, x) + γ·Σ terms`` (seed Eq. 8), with ``loss`` written as
  ``"l1"``, ``"mse"``, ``"l1+diffloss"``, ``"l1+perceptual"`` (VGG16, supplement Eq. 5),
  ``"l1+adversarial"`` (PatchGAN, supplement Eq. 7), ... (:data:`FIDELITIES` +
  :data:`LOSS_TERMS`; other terms are added with :func:`register_loss_term`). The adversarial
  term's discriminator is updated by its own Adam after every generator step (alternation).
- Hugging Face ``accelerate`` for the device, mixed precision (bf16 on CUDA), gradient
  accumulation and multi-GPU / multi-process runs (``accelerate launch`` or ``torchrun``). Only
  the restoration network is wrapped by ``accelerator.prepare``; the frozen prior is just moved
  to the device (it has no trainable parameter, so DDP must not wrap it).
- :func:`evaluate`: full-resolution test images through the model's own padding, eval mode, no
  autograd, optionally tiled with overlap (:func:`restore`), PSNR/SSIM from
  :mod:`diffloss.metrics` (RGB, mean of per-image values).
- :class:`History`: one row per step (loss parts) with test/validation PSNR/SSIM at the
  evaluation steps, written to ``history.csv`` and ``history.json`` as training goes.
- Checkpoints ``last.pt`` (everything needed to resume bit-identically on CPU, a
  discriminator and its optimizer included) and ``best.pt``
  (the best *validation* PSNR: never selected on the test set, DESIGN.md), written atomically:
  temporary file in the same folder, read back and verified, then ``os.replace``.

Command line: ``python -m diffloss.train --config cfg.yaml --loss l1+diffloss --iters 500``;
``python -m diffloss.train --help`` lists every flag.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from .metrics import psnr, ssim

__all__ = [
    "TrainConfig",
    "History",
    "EvalResult",
    "EMA",
    "LossTerm",
    "StepBatchSampler",
    "CheckpointError",
    "NonFiniteLossError",
    "train",
    "evaluate",
    "restore",
    "build_model",
    "build_datasets",
    "load_prior",
    "load_checkpoint",
    "save_checkpoint",
    "load_model",
    "register_loss_term",
    "main",
]

log = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("msbdn", "msbdn-small")
#: ``data`` values: the offline default and the folder layouts of :class:`PairedImageDataset`.
DATA: tuple[str, ...] = ("synthetic", "dense_haze", "lol", "rain")
#: The pixel fidelity terms (the first part of ``loss``).
FIDELITIES: tuple[str, ...] = ("l1", "mse")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
MIXED_PRECISION: tuple[str, ...] = ("auto", "no", "bf16", "fp16")

CONFIG_FILE = "config.json"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
LAST = "last.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = "diffloss-train-checkpoint"
CHECKPOINT_VERSION = 1

#: Config fields that may change when a run is resumed; any other difference is an error.
RESUMABLE_CHANGES: frozenset[str] = frozenset(
    {"iterations", "epochs", "eval_every", "save_every", "out", "workers", "eval_tile",
     "eval_overlap", "root"}
)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or a write that failed its verification."""


class NonFiniteLossError(FloatingPointError):
    """A loss part became NaN or infinite. ``step`` (1-based) and ``parts`` (name → value) say
    where; ``checkpoint`` is the last good checkpoint (``None`` if none was written yet)."""

    def __init__(self, message: str, step: int, parts: dict[str, float],
                 checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.parts = parts
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerm:
    """An extra loss term, added as ``γ·value`` to the fidelity.

    ``build(config, prior)`` returns a module whose call ``term(restored, target, generator)``
    returns a dict of scalar tensors: ``name`` (the value that is weighted by γ) and the other
    ``parts`` (logged only). ``needs_prior``: the term uses the diffusion prior.
    ``default_gamma``: γ when ``TrainConfig.gamma`` is ``None``.

    ``stateful``: the term has trainable state of its own (the adversarial term's
    discriminator). Its module then has ``step(restored, target, check)``, which the trainer
    calls after every generator update with the detached restored image (alternating updates)
    and which returns scalar tensors named in ``parts``; ``check(values)`` raises on a
    non-finite value before anything is updated. The module's ``state_dict`` (weights and
    optimizer state) is saved in ``last.pt`` and restored on resume.
    """

    name: str
    parts: tuple[str, ...]
    build: Callable[[TrainConfig, Any], nn.Module]
    needs_prior: bool = False
    description: str = ""
    default_gamma: float = 1e-3
    stateful: bool = False


#: How the restored image is handed to the prior (``TrainConfig.prior_input``).
PRIOR_INPUTS: tuple[str, ...] = ("st-clamp", "clamp", "raw")


def prior_input(restored: Tensor, mode: str) -> Tensor:
    """The restored image as the prior sees it.

    MSBDN has no output activation, and an untrained one returns values far outside [0, 1]
    (about [-2, 0.7] at initialisation), which :class:`~diffloss.loss.DiffLoss` rejects: the
    prior only knows images in [0, 1]. ``"st-clamp"`` (default) clamps to [0, 1] in the forward
    pass and passes the gradient straight through (``z + (clamp(z) − z).detach()``), so DiffLoss
    still trains every pixel; ``"clamp"`` is a plain clamp (no DiffLoss gradient for pixels
    outside [0, 1]); ``"raw"`` passes the output unchanged (DiffLoss raises if it is far out).
    """
    if mode == "raw":
        return restored
    clamped = restored.clamp(0, 1)
    if mode == "clamp":
        return clamped
    if mode == "st-clamp":
        return restored + (clamped - restored).detach()
    raise ValueError(f"unknown prior_input {mode!r}. Valid values: {', '.join(PRIOR_INPUTS)}")


class _DiffLossTerm(nn.Module):
    """Adapter: :class:`~diffloss.loss.DiffLoss` → ``{"diffloss", "nat", "sem"}``, with the
    restored image brought to [0, 1] by :func:`prior_input`."""

    def __init__(self, diffloss: nn.Module, mode: str = "st-clamp") -> None:
        super().__init__()
        self.diffloss = diffloss
        self.mode = mode

    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        out = self.diffloss(prior_input(restored, self.mode), target, generator=generator)
        return {"diffloss": out.loss, "nat": out.nat, "sem": out.sem}


def _build_diffloss(config: TrainConfig, prior: Any) -> nn.Module:
    from .loss import DiffLoss

    return _DiffLossTerm(DiffLoss(prior, lambda_sem=config.lambda_sem, nat_weight=config.nat_weight,
                                  t_range=config.t_range, prior_size=config.prior_size,
                                  size_policy=config.size_policy), config.prior_input)


class _PerceptualTerm(nn.Module):
    """Adapter: :class:`~diffloss.loss.PerceptualLoss` → ``{"perceptual"}`` (supplement Eq. 5)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"perceptual": self.loss(restored, target)}


def _build_perceptual(config: TrainConfig, prior: Any) -> nn.Module:
    from .loss import PerceptualLoss

    return _PerceptualTerm(PerceptualLoss(weights=config.vgg_weights))


class _AdversarialTerm(nn.Module):
    """Adapter: :class:`~diffloss.loss.AdversarialLoss` → ``{"adversarial"}`` (−log D(z),
    supplement Eq. 7) for the generator, and :meth:`step` (one discriminator update) after it."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, restored: Tensor, target: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"adversarial": self.loss.generator_loss(restored)}

    def step(self, restored: Tensor, target: Tensor,
             check: Callable[[dict[str, float]], None] | None = None) -> dict[str, Tensor]:
        return self.loss.discriminator_step(restored, target, check=check)


def _build_adversarial(config: TrainConfig, prior: Any) -> nn.Module:
    from .loss import AdversarialLoss

    return _AdversarialTerm(AdversarialLoss(channels=config.disc_channels, lr=config.lr,
                                            betas=(0.5, 0.999)))


#: Registered extra terms, by the name used in ``loss`` (``"l1+<name>"``).
LOSS_TERMS: dict[str, LossTerm] = {
    "diffloss": LossTerm("diffloss", ("nat", "sem"), _build_diffloss, needs_prior=True,
                         description="DiffLoss: nat_weight·L_nat + lambda_sem·L_sem (seed Eq. 8)"),
    "perceptual": LossTerm("perceptual", (), _build_perceptual,
                           description="VGG16 relu1_2/relu2_2/relu3_3 feature loss (supplement Eq. 5)"),
    "adversarial": LossTerm("adversarial", ("d_loss", "d_real", "d_fake"), _build_adversarial,
                            default_gamma=5e-3, stateful=True,
                            description="−log D(z) with a PatchGAN discriminator trained in "
                                        "alternation (supplement Eq. 7)"),
}


def register_loss_term(term: LossTerm) -> None:
    """Make ``"<fidelity>+<term.name>"`` a valid ``loss`` (e.g. perceptual, adversarial)."""
    if "+" in term.name or term.name in FIDELITIES:
        raise ValueError(f"invalid loss term name {term.name!r}")
    LOSS_TERMS[term.name] = term


def valid_losses() -> list[str]:
    """Every valid ``loss`` value with at most one extra term (more may be combined with ``+``)."""
    return [*FIDELITIES, *(f"{f}+{t}" for f in FIDELITIES for t in LOSS_TERMS)]


def parse_loss(loss: str) -> tuple[str, tuple[str, ...]]:
    """``"l1+diffloss"`` → ``("l1", ("diffloss",))``; a clear ``ValueError`` lists valid values."""
    names = [p.strip().lower() for p in str(loss).split("+")]
    if names[0] not in FIDELITIES or any(n not in LOSS_TERMS for n in names[1:]) or \
            len(set(names[1:])) != len(names[1:]):
        raise ValueError(
            f"unknown loss {loss!r}. Valid values: {', '.join(valid_losses())} "
            f"(a fidelity term {'/'.join(FIDELITIES)}, then '+' and any of the registered "
            f"terms: {', '.join(LOSS_TERMS) or 'none'})"
        )
    return names[0], tuple(names[1:])


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _choice(name: str, value: Any, valid: Sequence[str]) -> str:
    v = str(value).strip().lower()
    if v not in valid:
        raise ValueError(f"unknown {name} {value!r}. Valid values: {', '.join(valid)}")
    return v


@dataclass
class TrainConfig:
    """Every setting of a training run. Saved as ``config.json`` next to the checkpoints.

    Model and data:
        model: ``"msbdn"`` (the paper's network, 31.35 M parameters) or ``"msbdn-small"``.
        data: ``"synthetic"`` (haze on the bundled images; offline) or a folder layout,
            ``"dense_haze"``, ``"lol"`` or ``"rain"``, read from ``root``.
        root: the data folder for a layout (``data_scripts/`` write ``data/<layout>``).
        crop: side of the square training crops.
        augment: random flips / 90° rotations of the training crops (layouts only; the
            synthetic data flips its crops itself).
        max_size: synthetic data only: downscale the source images (longer side) first.
        train_items: synthetic data only: number of distinct training crops (default 256).
        data_seed: seed of the synthetic haze draws and of the validation hold-out; fixed by
            default so that runs with different ``seed`` see the same data.
        val: validation split, used to select ``best.pt`` (never the test set). Synthetic data:
            this many crops of the *training* images with their own haze draws (default 8).
            Layouts: this many training pairs held out of training, evaluated whole (default 0:
            no validation, ``best.pt`` is not written; report the last checkpoint).

    Loss:
        loss: ``"l1"``, ``"mse"``, ``"l1+diffloss"``, ``"l1+perceptual"``, ``"l1+adversarial"``,
            ``"mse+diffloss"``, ... (see :func:`valid_losses`).
        gamma: γ, weight of the extra term(s); ``None`` (default) takes each term's own default
            (:attr:`LossTerm.default_gamma`): 1e-3 for DiffLoss (the authors' value) and the
            perceptual loss, 5e-3 for the adversarial loss (the supplement's values).
        vgg_weights: the perceptual loss's VGG16 weights, ``"IMAGENET1K_V1"`` (from the local
            torch hub cache; never downloaded) or ``None``: random weights, a random-feature
            control that is *not* the perceptual loss (:class:`~diffloss.loss.PerceptualLoss`).
        disc_channels: width of the adversarial loss's PatchGAN discriminator (64 in pix2pix);
            it is trained with Adam(``lr``, betas (0.5, 0.999)) after every generator step.
        prior: ``"tiny"`` (shipped), a diffusers folder or hub id, or ``"adm:PATH"`` (an OpenAI
            guided-diffusion checkpoint such as ``256x256_diffusion_uncond.pt``).
        lambda_sem, nat_weight, t_range, prior_size, size_policy: see :class:`~diffloss.loss.DiffLoss`.
        prior_input: how the restored image is brought to [0, 1] for the prior: ``"st-clamp"``
            (clamp, straight-through gradient; default), ``"clamp"`` or ``"raw"`` (:func:`prior_input`).

    Optimisation:
        iterations: optimiser steps (``epochs``, if set, overrides it: ``ceil(epochs·N / B_global)``).
        lr, betas, weight_decay: Adam (1e-4, the MSBDN/DiffLoss setting).
        schedule: ``"constant"`` or ``"cosine"`` (to ``min_lr``), after ``warmup`` linear steps.
        batch: images per process and micro-step; ``grad_accum`` micro-steps per optimiser step.
        grad_clip: clip the global gradient norm (``None``: no clipping).
        ema: decay of an exponential moving average of the weights (``None``: off); evaluation
            and ``best.pt`` then use the EMA weights.
        mixed_precision: ``"auto"`` (bf16 on CUDA, none on CPU), ``"no"``, ``"bf16"``, ``"fp16"``.
        cpu: force the CPU even when CUDA is available.
        seed: initialisation, batch order and DiffLoss's (t, ε) draws.

    Evaluation and output:
        eval_every: evaluate at step 0, every ``eval_every`` steps and at the end (0: never).
        eval_max_size: downscale test (and whole-image validation) images to this longer side
            (CPU profiles); ``None``: full resolution.
        eval_tile, eval_overlap: tiled evaluation (:func:`restore`); ``None``: whole images.
        save_every: write ``last.pt`` every so many steps (default: ``eval_every``, or only at
            the end); ``last.pt`` is also written when training stops.
        out: output folder (config.json, history.csv/json, last.pt, best.pt).
        workers: DataLoader worker processes.
    """

    model: str = "msbdn-small"
    data: str = "synthetic"
    root: str | None = None
    crop: int = 64
    augment: bool = True
    max_size: int | None = None
    train_items: int | None = None
    data_seed: int = 0
    val: int | None = None

    loss: str = "l1"
    gamma: float | None = None
    vgg_weights: str | None = "IMAGENET1K_V1"
    disc_channels: int = 64
    prior: str = "tiny"
    lambda_sem: float = 1e-3
    nat_weight: float = 1.0
    t_range: tuple[int, int] | None = None
    prior_size: int | None = None
    size_policy: str = "crop"
    prior_input: str = "st-clamp"

    iterations: int = 1000
    epochs: float | None = None
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    min_lr: float = 0.0
    batch: int = 4
    grad_accum: int = 1
    grad_clip: float | None = None
    ema: float | None = None
    mixed_precision: str = "auto"
    cpu: bool = False
    seed: int = 0

    eval_every: int = 100
    eval_max_size: int | None = None
    eval_tile: int | None = None
    eval_overlap: int = 32
    save_every: int | None = None
    out: str = "runs/train"
    workers: int = 0

    def __post_init__(self) -> None:
        self.model = _choice("model", self.model, MODELS)
        self.data = _choice("data", self.data, DATA)
        fidelity, extra = parse_loss(self.loss)
        self.loss = "+".join((fidelity, *extra))
        self.schedule = _choice("schedule", self.schedule, SCHEDULES)
        self.mixed_precision = _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        self.size_policy = _choice("size_policy", self.size_policy, ("crop", "resize"))
        self.prior_input = _choice("prior_input", self.prior_input, PRIOR_INPUTS)
        if self.t_range is not None:
            if len(self.t_range) != 2:
                raise ValueError(f"t_range must be two integers (t_min, t_max), got {self.t_range!r}")
            self.t_range = (int(self.t_range[0]), int(self.t_range[1]))
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.data != "synthetic" and not self.root:
            raise ValueError(f"data={self.data!r} needs root, the folder that holds the layout "
                             "(e.g. data/ after running data_scripts/)")
        positive = {"crop": self.crop, "iterations": self.iterations, "batch": self.batch,
                    "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("eval_every", "warmup", "workers", "eval_overlap"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.vgg_weights is not None and self.vgg_weights.strip().lower() in ("none", "null", ""):
            self.vgg_weights = None
        if self.disc_channels < 1:
            raise ValueError(f"disc_channels must be >= 1, got {self.disc_channels}")
        if self.lr <= 0 or (self.gamma is not None and self.gamma < 0):
            raise ValueError(f"need lr > 0 and gamma >= 0, got lr={self.lr}, gamma={self.gamma}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1) or None, got {self.ema}")
        if self.val is not None and self.val < 0:
            raise ValueError(f"val must be >= 0, got {self.val}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.eval_tile is not None and self.eval_tile <= 2 * self.eval_overlap:
            raise ValueError(f"eval_tile ({self.eval_tile}) must exceed 2·eval_overlap ({self.eval_overlap})")

    # -- derived -------------------------------------------------------------------------------
    @property
    def fidelity(self) -> str:
        """The fidelity term, the first part of ``loss`` (``"l1"`` or ``"mse"``)."""
        return parse_loss(self.loss)[0]

    @property
    def terms(self) -> tuple[str, ...]:
        """The extra loss terms, the rest of ``loss`` (e.g. ``("diffloss",)``)."""
        return parse_loss(self.loss)[1]

    def gamma_for(self, term: str) -> float:
        """γ of the extra term ``term``: ``gamma`` when set, else the term's default."""
        return float(self.gamma) if self.gamma is not None else LOSS_TERMS[term].default_gamma

    def resolved_mixed_precision(self) -> str:
        """``"auto"`` → ``"bf16"`` on CUDA (unless ``cpu``), else ``"no"``."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return "bf16" if torch.cuda.is_available() and not self.cpu else "no"

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error that lists the valid ones."""
        if not isinstance(values, dict):
            raise TypeError(f"a config must be a mapping, got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(map(repr, unknown))}. "
                             f"Valid keys: {', '.join(names)}")
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON (or YAML for ``.yaml``/``.yml``), atomically."""
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        _atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a JSON or YAML config file (YAML for ``.yaml``/``.yml``; JSON otherwise)."""
        path = Path(path)
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return self.from_dict({**dataclasses.asdict(self), **changes})


# ---------------------------------------------------------------------------------------------
# Building blocks: model, prior, data
# ---------------------------------------------------------------------------------------------


def build_model(name: str) -> nn.Module:
    """``"msbdn"`` → ``MSBDN()``, ``"msbdn-small"`` → ``MSBDN.small()`` (seed torch first)."""
    from .models.msbdn import MSBDN

    name = _choice("model", name, MODELS)
    return MSBDN() if name == "msbdn" else MSBDN.small()


def load_prior(spec: str) -> Any:
    """``"tiny"`` → the shipped tiny prior; ``"adm:PATH"`` → an ADM checkpoint; otherwise a
    diffusers folder or hub id (:meth:`~diffloss.prior.DiffusionPrior.from_pretrained`)."""
    from .prior import DiffusionPrior

    if spec == "tiny":
        return DiffusionPrior.tiny()
    if spec.startswith("adm:"):
        return DiffusionPrior.from_adm_checkpoint(spec[4:])
    return DiffusionPrior.from_pretrained(spec)


class _Pairs(Dataset):
    """``(degraded, clean)`` only (drops the name), with per-item seeding of torch's RNG.

    Items are addressed by ``(index, item_seed)``: the global torch RNG, which
    :class:`~diffloss.data.PairedImageDataset`'s crop/flip/rotation draws from, is seeded with
    ``item_seed`` for the item and restored afterwards. Every item is thus a pure function of
    its key, whatever the worker or the process.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, item_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            degraded, clean = self.dataset[index][:2]
        return degraded, clean


class _Downscaled(Dataset):
    """Whole-image pairs downscaled (antialiased bilinear) so the longer side is ``max_size``."""

    def __init__(self, dataset: Dataset, max_size: int) -> None:
        self.dataset, self.max_size = dataset, int(max_size)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        degraded, clean, name = self.dataset[index]
        h, w = degraded.shape[-2:]
        scale = self.max_size / max(h, w)
        if scale < 1:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))

            def resize(x: Tensor) -> Tensor:
                return F.interpolate(x[None], size=size, mode="bilinear", antialias=True,
                                     align_corners=False)[0].clamp_(0, 1)

            degraded, clean = resize(degraded), resize(clean)
        return degraded, clean, name


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset | None, Dataset]:
    """``(train, val, test)`` for ``config``; items are ``(degraded, clean, name)``.

    ``train`` yields ``crop``-sized pairs; ``val`` (``None`` when ``val`` is 0) and ``test`` are
    evaluated image by image. The test images never take part in training or model selection.
    """
    from .data import PairedImageDataset, SyntheticHaze

    if config.data == "synthetic":
        n_val = 8 if config.val is None else config.val
        train_ds: Dataset = SyntheticHaze("train", crop=config.crop, n=config.train_items,
                                          seed=config.data_seed, max_size=config.max_size)
        val_ds: Dataset | None = None
        if n_val:
            # Crops of the *training* images (no test pixel), with their own windows and haze.
            val_ds = SyntheticHaze("train", crop=config.crop, n=n_val,
                                   seed=config.data_seed + 7919, max_size=config.max_size)
        test_ds: Dataset = SyntheticHaze("test", crop=None, seed=config.data_seed,
                                         max_size=config.eval_max_size)
        return train_ds, val_ds, test_ds

    root = str(config.root)
    train_full = PairedImageDataset(root, config.data, "train", crop=config.crop,
                                    augment=config.augment)
    test_ds = PairedImageDataset(root, config.data, "test")
    if config.eval_max_size:
        test_ds = _Downscaled(test_ds, config.eval_max_size)
    n_val = config.val or 0
    if not n_val:
        return train_full, None, test_ds
    if n_val >= len(train_full):
        raise ValueError(f"val={n_val} would hold out every one of the {len(train_full)} training pairs")
    order = np.random.default_rng(config.data_seed).permutation(len(train_full))
    held, kept = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    whole: Dataset = PairedImageDataset(root, config.data, "train")
    if config.eval_max_size:
        whole = _Downscaled(whole, config.eval_max_size)
    return Subset(train_full, kept), Subset(whole, held), test_ds


class StepBatchSampler:
    """Index batches as a pure function of ``(seed, micro-step, rank)``; infinite.

    The stream of training items is the concatenation of per-epoch permutations of the
    dataset (epoch ``e`` uses ``torch.randperm(n)`` seeded with ``(seed, e)``). Micro-step ``m``
    takes the ``batch·world`` items at positions ``m·batch·world …``, and process ``rank`` its
    ``batch`` of them. Each item carries a seed drawn from ``(seed, position)`` for its random
    crop/augmentation (:class:`_Pairs`). No state beyond ``start`` is needed to resume.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.batch, self.seed = int(n), int(batch), int(seed)
        self.start, self.rank, self.world = int(start), int(rank), int(world)
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(_mix(self.seed, epoch, 0x5EED))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def keys(self, micro_step: int) -> list[tuple[int, int]]:
        """The ``(index, item_seed)`` keys of this process's batch at ``micro_step``."""
        first = (micro_step * self.world + self.rank) * self.batch
        out = []
        for pos in range(first, first + self.batch):
            epoch, k = divmod(pos, self.n)
            out.append((int(self._perm(epoch)[k]), _mix(self.seed, pos, 0xA06)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start
        while True:
            yield self.keys(m)
            m += 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFFFFFFFFFF for v in values])
               .generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _forward_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
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
    forward = model if not isinstance(model, nn.Module) else _forward_fn(model)
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
    """Mean PSNR/SSIM over the images (RGB, mean of per-image values) and the per-image rows."""

    psnr: float
    ssim: float
    per_image: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate(model: nn.Module, dataset: Dataset, tile: int | None = None, overlap: int = 32,
             device: torch.device | str | None = None, max_items: int | None = None,
             amp: bool = False) -> EvalResult:
    """PSNR/SSIM of ``model`` on ``dataset`` items ``(degraded, clean[, name])``, image by image.

    Full resolution through the model's own padding (or :func:`restore` tiles), eval mode,
    ``torch.no_grad``, fp32 unless ``amp`` (bf16 autocast on CUDA). The output is clamped to
    [0, 1] before scoring. The model's train/eval mode is restored afterwards.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    n = len(dataset) if max_items is None else min(max_items, len(dataset))  # type: ignore[arg-type]
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and dev.type == "cuda"
           else contextlib.nullcontext())
    try:
        with torch.no_grad(), ctx:
            for i in range(n):
                item = dataset[i]
                degraded, clean = item[0], item[1]
                name = item[2] if len(item) > 2 else str(i)
                pred = restore(model, degraded[None].to(dev), tile=tile, overlap=overlap)
                target = clean[None].to(dev)
                rows.append({"name": name, "psnr": float(psnr(pred, target)),
                             "ssim": float(ssim(pred, target))})
    finally:
        model.train(was_training)
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows])) if rows else float("nan")

    return EvalResult(psnr=mean("psnr"), ssim=mean("ssim"), per_image=rows,
                      seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's weights (a frozen copy, ``shadow``).

    After optimiser step ``n`` (1-based): ``θ̄ ← d·θ̄ + (1 − d)·θ`` with
    ``d = min(decay, (1 + n)/(10 + n))``, the usual warm-up so early averages are not dominated
    by the random initialisation. Buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach().to(s.dtype), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.shadow.load_state_dict(state["shadow"])


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints
# ---------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None],
                  verify: Callable[[Path], None] | None = None) -> None:
    """Write through a temporary file in the same folder, verify it, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def _serialize(state: dict[str, Any], f: io.BufferedWriter) -> None:
    """How a checkpoint is encoded (``torch.save``); one function so tests can inject faults."""
    torch.save(state, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a trainer checkpoint (``weights_only`` unpickling, on the CPU).

    Raises :class:`CheckpointError` naming the file when it is truncated, corrupt or not a
    checkpoint of this trainer, and ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a bad file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). Delete it to start "
            f"over, or restore a copy; {BEST} in the same folder (if any) holds weights only."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a diffloss training checkpoint "
                              f"(no format={CHECKPOINT_FORMAT!r} entry)")
    missing = [k for k in ("step", "model", "config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return state


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, verify: bool = True) -> None:
    """Write ``state`` atomically: temp file in the same folder, read back and checked, then
    ``os.replace``. If anything fails, the previous file at ``path`` is untouched and the
    temporary file is removed; a failed verification raises :class:`CheckpointError`."""
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}

    def check(tmp: Path) -> None:
        if not verify:
            return
        try:
            back = load_checkpoint(tmp)
        except (CheckpointError, FileNotFoundError) as exc:
            raise CheckpointError(f"writing {path} failed: the new file did not read back "
                                  f"({exc}); the previous {path.name} is kept") from exc
        if back["step"] != state["step"] or set(back["model"]) != set(state["model"]):
            raise CheckpointError(f"writing {path} failed: the new file does not match what was "
                                  f"saved; the previous {path.name} is kept")

    _atomic_write(path, lambda f: _serialize(state, f), check)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model(path: str | os.PathLike, which: str = "best", ema: bool | None = None,
               device: torch.device | str = "cpu") -> nn.Module:
    """The trained network from a run folder (``which``: ``"best"`` or ``"last"``) or a ``.pt``.

    ``ema``: use the EMA weights (default: when the run has them). ``"best"`` falls back to
    ``"last"`` when the run wrote no ``best.pt`` (no validation split). Returns it in eval mode.
    """
    path = Path(path)
    if path.is_dir():
        ckpt = path / (BEST if which == "best" else LAST)
        if which == "best" and not ckpt.exists():
            ckpt = path / LAST
        path = ckpt
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config.model)
    use_ema = state.get("ema") is not None if ema is None else ema
    if use_ema:
        if state.get("ema") is None:
            raise ValueError(f"{path} has no EMA weights (the run had ema=None)")
        model.load_state_dict(state["ema"]["shadow"])
    else:
        model.load_state_dict(state["model"])
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------


@dataclass
class History:
    """What a run did: one row per step, written to ``history.csv``/``history.json``.

    Row keys (``columns``): ``step``, ``seconds`` (wall time since the start of the run, across
    resumes), ``lr``, ``total``, ``fidelity`` and each extra term's parts (``diffloss``, ``nat``,
    ``sem``; DiffLoss values are unweighted, ``total = fidelity + γ·diffloss``), then at
    evaluation steps ``test_psnr``, ``test_ssim`` and, with a validation split, ``val_psnr``,
    ``val_ssim``. Step 0 holds the evaluation of the untrained network. Missing values are
    ``None`` (empty in the CSV). ``evals`` keeps the per-image values of every evaluation.

    After :func:`train`, ``model`` is the trained network (eval mode; EMA weights when the
    run used EMA; ``raw_model`` holds the plain weights then). Neither is saved.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    config: TrainConfig | None = None
    folder: Path | None = None
    best: dict[str, Any] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)
    raw_model: nn.Module | None = field(default=None, repr=False)

    # -- access -----------------------------------------------------------------------------
    @property
    def paths(self) -> dict[str, Path | None]:
        """Files of the run: ``config``, ``csv``, ``json``, ``last``, ``best`` (``None`` if absent)."""
        if self.folder is None:
            return {k: None for k in ("config", "csv", "json", "last", "best")}
        f = self.folder
        return {"config": f / CONFIG_FILE, "csv": f / HISTORY_CSV, "json": f / HISTORY_JSON,
                "last": f / LAST, "best": (f / BEST) if (f / BEST).exists() else None}

    def column(self, name: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of the rows where ``name`` has a value (e.g. ``"test_psnr"``)."""
        pairs = [(r["step"], r[name]) for r in self.rows if r.get(name) is not None]
        return [p[0] for p in pairs], [float(p[1]) for p in pairs]

    @property
    def eval_rows(self) -> list[dict[str, Any]]:
        """The rows with a test evaluation."""
        return [r for r in self.rows if r.get("test_psnr") is not None]

    @property
    def final(self) -> dict[str, Any] | None:
        """The last evaluated row (final test PSNR/SSIM)."""
        rows = self.eval_rows
        return rows[-1] if rows else None

    def __len__(self) -> int:
        return len(self.rows)

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "best": self.best,
                "config": self.config.to_dict() if self.config else None,
                "evals": self.evals, "meta": self.meta}

    def write_json(self, folder: Path | None = None) -> None:
        folder = Path(folder or self.folder or ".")
        _atomic_write_text(folder / HISTORY_JSON, json.dumps(_json_safe(self.to_json()), indent=1) + "\n")

    def write_csv(self, folder: Path | None = None) -> None:
        folder = Path(folder or self.folder or ".")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(_csv_row(row, self.columns))
        _atomic_write_text(folder / HISTORY_CSV, buf.getvalue())

    def append_csv(self, row: dict[str, Any], folder: Path | None = None) -> None:
        folder = Path(folder or self.folder or ".")
        with open(folder / HISTORY_CSV, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                _csv_row(row, self.columns))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> History:
        """Read ``history.json`` of a run folder (the CSV holds the same rows)."""
        folder = Path(folder)
        path = folder / HISTORY_JSON if folder.is_dir() else folder
        if not path.exists():
            raise FileNotFoundError(f"no {HISTORY_JSON} in {folder}")
        data = json.loads(path.read_text())
        config = TrainConfig.from_dict(data["config"]) if data.get("config") else None
        return cls(rows=data["rows"], columns=data["columns"], config=config, folder=path.parent,
                   best=data.get("best"), evals=data.get("evals", []), meta=data.get("meta", {}))


def _csv_row(row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    return {c: ("" if row.get(c) is None else row[c]) for c in columns}


def _json_safe(obj: Any) -> Any:
    """NaN/inf → strings JSON can hold (``"nan"``, ``"inf"``), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _make_accelerator(config: TrainConfig, mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if AcceleratorState._shared_state and not distributed:
        # A previous run in this process (a notebook, the tests) fixed accelerate's singleton
        # settings; a single-process run may start afresh with its own.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       cpu=config.cpu or not torch.cuda.is_available())


def _barrier(accelerator: Any) -> None:
    """Wait for every process. For CPU (gloo) runs this avoids ``accelerator.wait_for_everyone``,
    which passes ``device_ids=[local_rank]`` to the barrier: on a machine with fewer GPUs than
    processes that names a GPU that does not exist."""
    if accelerator.num_processes == 1:
        return
    if accelerator.device.type == "cpu":
        torch.distributed.barrier()
    else:
        _barrier(accelerator)


def _lr_lambda(config: TrainConfig, iterations: int) -> Callable[[int], float]:
    warmup, ratio = config.warmup, config.min_lr / config.lr

    def factor(step: int) -> float:  # step = optimiser steps done so far
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, iterations - warmup))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _columns(config: TrainConfig, has_val: bool) -> list[str]:
    cols = ["step", "seconds", "lr", "total", "fidelity"]
    for name in config.terms:
        cols += [name, *LOSS_TERMS[name].parts]
    cols += ["test_psnr", "test_ssim"]
    if has_val:
        cols += ["val_psnr", "val_ssim"]
    return cols


def _check_resume_config(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} → {current[k]!r}" for k in current
             if k not in RESUMABLE_CHANGES and _norm(saved.get(k)) != _norm(current[k])]
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the config differs from the saved one in "
            f"{'; '.join(diffs)}. Only {', '.join(sorted(RESUMABLE_CHANGES))} may change "
            "(start a new run in another folder to change the rest)."
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _finite_message(step: int, parts: dict[str, float], ckpt: Path | None,
                    restored_bad: int) -> str:
    def finite(k: str) -> bool:
        return math.isfinite(parts[k])

    # The parts themselves (fidelity, nat, sem, ...) first, then the sums they make up.
    bad = [k for k in parts if k not in LOSS_TERMS and k != "total" and not finite(k)]
    derived = [k for k in (*[t for t in parts if t in LOSS_TERMS], "total")
               if k in parts and not finite(k)]
    if not bad:
        bad, derived = derived, []
    also = f" (and so {', '.join(derived)})" if derived else ""
    shown = ", ".join(f"{k} = {parts[k]:.4g}" for k in parts if k != "total")
    where = ("; the restored image itself has "
             f"{restored_bad} non-finite value(s): the network diverged") if restored_bad else ""
    keep = (f"The last good checkpoint is {ckpt}." if ckpt is not None
            else "No checkpoint had been written yet.")
    return (f"non-finite loss at step {step}: {' and '.join(bad)} "
            f"{'is' if len(bad) <= 1 else 'are'} not finite{also} ({shown}){where}. Training stopped; "
            f"nothing from this step was applied. {keep} Try a lower lr, grad_clip, or "
            "mixed_precision='no'.")


def train(config: TrainConfig | dict[str, Any] | str | os.PathLike, progress: bool = True,
          callback: Callable[[dict[str, Any], History], bool | None] | None = None, *,
          resume: bool = False, overwrite: bool = False, prior: Any = None,
          stop_after: int | None = None) -> History:
    """Train the restoration network of ``config`` and return its :class:`History`.

    Args:
        config: a :class:`TrainConfig`, a dict of its fields, or a JSON/YAML file.
        progress: show a tqdm progress bar (``tqdm.auto``) with the live loss and test PSNR.
        callback: called on the main process after every step as ``callback(row, history)``;
            returning ``False`` stops training there (``last.pt`` is written).
        resume: continue from ``<out>/last.pt`` (when it exists; otherwise start afresh). The
            config must match the saved one except for :data:`RESUMABLE_CHANGES`.
        overwrite: start afresh even if ``out`` already holds a run (its files are replaced).
        prior: a :class:`~diffloss.prior.DiffusionPrior` to use instead of loading
            ``config.prior`` (e.g. one loaded once for several runs).
        stop_after: stop after this step as if interrupted (``last.pt`` written): resuming
            then gives the same weights as never stopping.

    Raises:
        NonFiniteLossError: a loss part became NaN/inf (names the step and the part);
            nothing of that step is applied and the last good ``last.pt`` is kept.
        CheckpointError: ``last.pt`` is corrupt on resume, or a new checkpoint failed to verify.
        FileExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    if not isinstance(config, TrainConfig):
        config = (TrainConfig.from_dict(config) if isinstance(config, dict)
                  else TrainConfig.load(config))
    out = Path(config.out)
    mixed = config.resolved_mixed_precision()
    accelerator = _make_accelerator(config, mixed)
    device, main_proc = accelerator.device, accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes

    last_path, best_path = out / LAST, out / BEST
    state: dict[str, Any] | None = None
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        _check_resume_config(state["config"], config, last_path)
    elif not resume and not overwrite and last_path.exists():
        raise FileExistsError(f"{out} already holds a run ({last_path}); pass resume=True "
                              "(--resume) to continue it or overwrite=True (--overwrite) to start over")
    elif resume and main_proc:
        log.info("resume: no %s yet, starting from step 0", last_path)

    # -- build --------------------------------------------------------------------------------
    _seed_all(config.seed)
    model = build_model(config.model)
    train_ds, val_ds, test_ds = build_datasets(config)
    n_train = len(train_ds)  # type: ignore[arg-type]
    micro = config.batch * world  # items per micro-step, all processes
    iterations = (math.ceil(config.epochs * n_train / (micro * config.grad_accum))
                  if config.epochs is not None else config.iterations)

    terms: dict[str, nn.Module] = {}
    if any(LOSS_TERMS[t].needs_prior for t in config.terms):
        prior = prior if prior is not None else load_prior(config.prior)
    for name in config.terms:
        # The frozen prior is only moved to the device: accelerator.prepare (DDP) would wrap a
        # module without trainable parameters for nothing, and all-reduce nothing.
        terms[name] = LOSS_TERMS[name].build(config, prior).to(device)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, iterations))
    history = History(columns=_columns(config, val_ds is not None), config=config, folder=out,
                      meta={"world_size": world, "device": str(device), "mixed_precision": mixed,
                            "iterations": iterations, "train_items": n_train,
                            "val_items": 0 if val_ds is None else len(val_ds),  # type: ignore[arg-type]
                            "test_items": len(test_ds),  # type: ignore[arg-type]
                            "best_selection": ("val_psnr" if val_ds is not None else
                                               "none: no validation split, best.pt is not written "
                                               "(report the last checkpoint)")})
    start, elapsed0 = 0, 0.0
    last_good: Path | None = None
    if state is not None:
        model.load_state_dict(state["model"])
        start, elapsed0 = int(state["step"]), float(state.get("elapsed", 0.0))
        history.rows = [r for r in state.get("history", []) if r["step"] <= start]
        history.best = state.get("best")
        history.evals = [e for e in state.get("evals", []) if e["step"] <= start]
        scheduler.load_state_dict(state["scheduler"])
        last_good = last_path

    model, optimizer = accelerator.prepare(model, optimizer)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
    raw = accelerator.unwrap_model(model)
    # The EMA copy is made on the device, from the (possibly loaded) weights.
    ema = EMA(raw, config.ema) if config.ema is not None else None
    # Terms with trainable state of their own (the discriminator) resume with the generator.
    stateful = [name for name in terms if LOSS_TERMS[name].stateful]
    if state is not None:
        for name in stateful:
            saved_terms = state.get("terms") or {}
            if name not in saved_terms:
                raise CheckpointError(f"{last_path} has no state for the {name!r} loss term")
            terms[name].load_state_dict(saved_terms[name])
    if ema is not None and state is not None:
        if state.get("ema") is None:
            raise CheckpointError(f"{last_path} has no EMA state but the config asks for ema={config.ema}")
        ema.load_state_dict(state["ema"])

    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:  # a fresh run: no stale checkpoint of an earlier one may survive
            for name in (LAST, BEST):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
        config.save(out / CONFIG_FILE)
        history.write_csv()
        history.write_json()

    sampler = StepBatchSampler(n_train, config.batch, config.seed, start=start * config.grad_accum,
                               rank=rank, world=world)
    loader = DataLoader(_Pairs(train_ds), batch_sampler=sampler, num_workers=config.workers,
                        pin_memory=device.type == "cuda")
    batches = iter(loader)

    eval_model = ema.shadow if ema is not None else raw
    t_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_start

    def run_eval(step: int, row: dict[str, Any]) -> None:
        if main_proc:
            res = evaluate(eval_model, test_ds, tile=config.eval_tile, overlap=config.eval_overlap,
                           device=device)
            row.update(test_psnr=res.psnr, test_ssim=res.ssim)
            history.evals.append({"step": step, "split": "test", **res.to_dict()})
            if val_ds is not None:
                v = evaluate(eval_model, val_ds, tile=config.eval_tile, overlap=config.eval_overlap,
                             device=device)
                row.update(val_psnr=v.psnr, val_ssim=v.ssim)
                history.evals.append({"step": step, "split": "val", **v.to_dict()})
                if step > 0 and (history.best is None or v.psnr > history.best["val_psnr"]):
                    history.best = {"step": step, "val_psnr": v.psnr, "val_ssim": v.ssim,
                                    "test_psnr": res.psnr, "test_ssim": res.ssim}
                    save_checkpoint({"kind": "best", "step": step, "model": raw.state_dict(),
                                     "ema": ema.state_dict() if ema is not None else None,
                                     "config": config.to_dict(), "best": history.best}, best_path)
        _barrier(accelerator)

    def save_last(step: int) -> None:
        nonlocal last_good
        if main_proc:
            save_checkpoint({
                "kind": "last", "step": step, "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "rng": _rng_state(),
                "terms": {name: terms[name].state_dict() for name in stateful},
                "data": {"seed": config.seed, "micro_step": step * config.grad_accum,
                         "world_size": world, "batch": config.batch},
                "config": config.to_dict(), "elapsed": elapsed(), "history": history.rows,
                "evals": history.evals, "best": history.best,
            }, last_path)
            history.write_json()
        last_good = last_path
        _barrier(accelerator)

    bar = None
    if progress and main_proc:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, initial=start, desc=config.loss, dynamic_ncols=True)
    last_psnr: float | None = next((r["test_psnr"] for r in reversed(history.rows)
                                    if r.get("test_psnr") is not None), None)
    save_every = config.save_every or config.eval_every or iterations
    end = iterations if stop_after is None else min(iterations, int(stop_after))

    try:
        if start == 0 and config.eval_every and end > 0:
            row0: dict[str, Any] = {c: None for c in history.columns}
            row0.update(step=0, seconds=0.0, lr=scheduler.get_last_lr()[0])
            run_eval(0, row0)
            history.rows.append(row0)
            last_psnr = row0["test_psnr"]
            if main_proc:
                history.append_csv(row0)
                history.write_json()
        model.train()
        step = start
        while step < end:
            step += 1
            sums: dict[str, float] = {}
            for a in range(config.grad_accum):
                m = (step - 1) * config.grad_accum + a
                degraded, clean = next(batches)
                degraded = degraded.to(device, non_blocking=True)
                clean = clean.to(device, non_blocking=True)
                gen = torch.Generator().manual_seed(_mix(config.seed, m, rank, 0xD1F))
                with accelerator.accumulate(model):
                    restored = model(degraded)
                    parts, restored_bad = _loss_parts(restored, clean, config, terms, gen)
                    names = list(parts)
                    values = accelerator.reduce(torch.stack([parts[k].detach().float()
                                                             for k in names]), "mean")
                    vals = dict(zip(names, values.tolist()))
                    if not all(math.isfinite(v) for v in vals.values()):
                        raise NonFiniteLossError(
                            _finite_message(step, vals, last_good, restored_bad), step, vals, last_good)
                    accelerator.backward(parts["total"])
                    if config.grad_clip is not None and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for name in stateful:  # alternating updates: the discriminator after the generator

                    def check(values: dict[str, float], _vals: dict[str, float] = vals,
                              _step: int = step) -> None:
                        merged = {**_vals, **values}
                        if not all(math.isfinite(v) for v in values.values()):
                            raise NonFiniteLossError(_finite_message(_step, merged, last_good, 0),
                                                     _step, merged, last_good)

                    aux = terms[name].step(restored.detach().float(), clean, check=check)
                    vals.update({k: float(v) for k, v in aux.items()})
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v / config.grad_accum
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            if ema is not None:
                ema.update(raw)

            row = {c: None for c in history.columns}
            row.update(step=step, lr=lr, **sums)
            is_eval = bool(config.eval_every) and (step % config.eval_every == 0
                                                   or step == iterations)
            if is_eval:
                run_eval(step, row)
                last_psnr = row["test_psnr"]
            row["seconds"] = elapsed()
            history.rows.append(row)
            if main_proc:
                history.append_csv(row)
                if is_eval:
                    history.write_json()
            if bar is not None:
                post = {"loss": f"{sums['total']:.4f}"}
                if last_psnr is not None:
                    post["test_psnr"] = f"{last_psnr:.2f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            stop = False
            if callback is not None and main_proc:
                stop = callback(row, history) is False
            if world > 1:
                flag = torch.tensor([1.0 if stop else 0.0], device=device)
                stop = bool(accelerator.reduce(flag, "sum").item() > 0)
            if stop or step == end or step % save_every == 0:
                save_last(step)
            if stop:
                break
    except NonFiniteLossError:
        if main_proc:
            history.meta["stopped"] = "non-finite loss"
            history.write_json()
        raise
    finally:
        if bar is not None:
            bar.close()

    if main_proc:
        history.meta["finished"] = step >= iterations
        history.write_json()
    raw.eval()
    history.raw_model = raw
    history.model = ema.shadow if ema is not None else raw
    _barrier(accelerator)
    return history


def _loss_parts(restored: Tensor, target: Tensor, config: TrainConfig, terms: dict[str, nn.Module],
                generator: torch.Generator) -> tuple[dict[str, Tensor], int]:
    """``{"total", "fidelity", <term>, <term parts>...}`` and the number of non-finite
    values in ``restored`` (the extra terms are skipped, as NaN, when it is not finite)."""
    from .loss import fidelity_loss

    restored = restored.float()
    fid = fidelity_loss(restored, target, config.fidelity)
    parts: dict[str, Tensor] = {"fidelity": fid}
    bad = int((~torch.isfinite(restored.detach())).sum())
    total = fid
    for name, term in terms.items():
        if bad:
            nan = fid.new_full((), float("nan"))
            parts.update({name: nan, **{p: nan for p in LOSS_TERMS[name].parts}})
            continue
        values = term(restored, target, generator=generator)
        parts.update(values)
        total = total + config.gamma_for(name) * values[name]
    if bad:
        total = fid.new_full((), float("nan"))
    return {"total": total, **parts}, bad


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

#: Short flags besides the ``--field-name`` ones.
ALIASES: dict[str, str] = {"iters": "iterations", "accum": "grad_accum"}


def _field_parser(hint: Any) -> tuple[Callable[[str], Any], int | None]:
    """A string → value converter for a config field's type hint, and its ``nargs``."""
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], len(typing.get_args(hint))
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(base) is tuple:
        return typing.get_args(base)[0], len(typing.get_args(base))

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return base(text)

    return convert, None


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m diffloss.train`` argument parser (one flag per config field)."""
    p = argparse.ArgumentParser(
        prog="python -m diffloss.train",
        description="Train a restoration network (MSBDN) with L1/MSE and optionally DiffLoss "
                    "(or a perceptual / adversarial term, for comparison). "
                    "Flags override the values of --config (JSON or YAML).",
    )
    p.add_argument("--config", type=Path, help="JSON/YAML file with TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start over even if OUT holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    hints = typing.get_type_hints(TrainConfig)
    aliases = {v: k for k, v in ALIASES.items()}
    for f in dataclasses.fields(TrainConfig):
        convert, nargs = _field_parser(hints[f.name])
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name in aliases:
            flags.append(f"--{aliases[f.name]}")
        if hints[f.name] is bool:  # --cpu / --no-cpu
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default {f.default!r})")
            continue
        metavar = f.name.upper() if nargs is None else ("A", "B")
        p.add_argument(*flags, dest=f.name, type=convert, nargs=nargs, default=None, metavar=metavar,
                       help=f"(default {f.default!r})")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """``--config`` values, overridden by every flag given."""
    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if value is not None:
            base[f.name] = value
    return TrainConfig.from_dict(base)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (0 ok, 1 error with a message, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        history = train(config, progress=not args.no_progress, resume=args.resume,
                        overwrite=args.overwrite)
    except (NonFiniteLossError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    final = history.final
    if final is not None and history.folder is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"done: step {final['step']}, test PSNR {final['test_psnr']:.2f} dB, "
              f"SSIM {final['test_ssim']:.4f}; files in {history.folder}")
    return 0


class _CallableModule(types.ModuleType):
    """``diffloss.train`` is both this module and the :func:`train` function (DESIGN.md lists
    ``train`` as the package's entry): once the submodule is imported, ``diffloss.train`` is the
    module, so calling it calls :func:`train`."""

    def __call__(self, *args: Any, **kwargs: Any) -> History:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
