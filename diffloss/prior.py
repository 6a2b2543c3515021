"""A frozen, pretrained diffusion U-Net used as a prior: ε_θ(x_t, t) and h-space in one call.

DiffLoss (Tan et al., ACCV 2024) reads two things from an unconditional pixel-space diffusion
model: the predicted noise ε_θ(x_t, t) (the *naturalness* signal, seed Eq. 6) and the output of
the U-Net's middle block, the bottleneck "h-space" of Kwon et al. (the *semantic* signal, Eq. 7).
:class:`DiffusionPrior` wraps a diffusers ``UNet2DModel`` (never hand-written here) and its
:class:`~diffloss.schedule.NoiseSchedule`, keeps it frozen, and returns both from one U-Net call
through a forward hook on ``unet.mid_block``.

Run ``diffloss train-tiny-prior --out DIR`` to (re)train the tiny prior shipped in
``diffloss/assets/tiny_prior``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import platform
import re
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from .device import to_device
from .schedule import NoiseSchedule

TINY_PRIOR_DIR = Path(__file__).parent / "assets" / "tiny_prior"
SCHEDULER_CONFIG = "scheduler_config.json"
PROVENANCE = "provenance.json"


@dataclass
class PriorOutput:
    """What the prior says about x_t: ε_θ(x_t, t) and the middle-block features h(x_t, t).

    ``variance`` holds the learned-variance channels of models that predict them (ADM's
    ``learn_sigma``: 6 output channels), else ``None``.
    """

    eps: Tensor
    hspace: Tensor
    variance: Tensor | None = None


class _StopAfterMidBlock(Exception):
    """Raised by the h-space hook to leave the U-Net before its up path runs."""

    def __init__(self, hspace: Tensor) -> None:
        super().__init__("h-space captured")
        self.hspace = hspace


class DiffusionPrior(nn.Module):
    """A frozen diffusers ``UNet2DModel`` plus its noise schedule.

    ``prior(xt, t)`` returns :class:`PriorOutput` (ε and h-space from one U-Net call);
    ``prior.hspace(xt, t)`` stops after the middle block. Inputs live in the diffusion model's
    space, [-1, 1]. Nothing runs under ``no_grad``: gradients flow back to ``xt`` (that is what
    DiffLoss needs), while the U-Net's own parameters never require or receive gradients.
    """

    def __init__(self, unet: UNet2DModel, schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        if not isinstance(unet, UNet2DModel):
            raise TypeError(f"DiffusionPrior wraps a diffusers UNet2DModel, got {type(unet).__name__}")
        if unet.mid_block is None:
            raise ValueError("this UNet2DModel has no middle block (mid_block_type=None): there is no h-space")
        self.unet = unet
        self.schedule = schedule if schedule is not None else NoiseSchedule.linear()
        #: Where the weights came from (``"tiny"``, a folder, a hub id, ``"adm:PATH"``; ``None``
        #: for a U-Net built in memory): the trainer records it as ``TrainConfig.prior``.
        self.source: str | None = None
        n_train = unet.config.get("num_train_timesteps")
        if n_train is not None and int(n_train) != self.schedule.T:
            raise ValueError(
                f"the U-Net was trained with {n_train} timesteps but the schedule has T = {self.schedule.T}"
            )
        bad = _non_finite_parameters(unet)
        if bad:
            raise ValueError(
                f"the U-Net's weights hold NaN/inf values ({_listing(bad)}): the checkpoint is "
                "corrupt. Download or convert it again."
            )
        self.unet.requires_grad_(False)
        self.eval()  # the wrapper too, not only the U-Net: prior.training is False
        self._captured: list[Tensor] | None = None
        self._stop_after_mid = False
        # (torch.compile'd U-Net,) once compile_unet() was called; a tuple so that nn.Module
        # does not register it (its parameters are the U-Net's own).
        self._compiled: tuple[Any, ...] = ()
        self.unet.mid_block.register_forward_hook(self._mid_block_hook)

    # ------------------------------------------------------------------ freezing
    def train(self, mode: bool = True) -> DiffusionPrior:
        """A frozen prior stays in eval mode, whatever a parent module asks for."""
        return super().train(False)

    def _mid_block_hook(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self._captured is not None:
            self._captured.append(output)
        if self._stop_after_mid:
            raise _StopAfterMidBlock(output)

    # ------------------------------------------------------------------ properties
    @property
    def downsampling_factor(self) -> int:
        """Total downsampling of the U-Net: image sides must be multiples of it."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def sample_size(self) -> int:
        """The U-Net's native (training) resolution."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def learned_variance(self) -> bool:
        return self.unet.config.out_channels == 2 * self.unet.config.in_channels

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    # ------------------------------------------------------------------ checks
    def check_input(self, xt: Tensor, t: Tensor) -> Tensor:
        """Validate (x_t, t); clear ``ValueError`` for every wrong shape, size or timestep."""
        if not isinstance(xt, Tensor) or xt.ndim != 4:
            shape = tuple(xt.shape) if isinstance(xt, Tensor) else type(xt).__name__
            raise ValueError(f"x_t must be a 4-D tensor B×C×H×W, got {shape}")
        c = self.unet.config.in_channels
        if xt.shape[1] != c:
            raise ValueError(f"x_t must have {c} channels (RGB in [-1, 1]), got {xt.shape[1]}")
        f = self.downsampling_factor
        h, w = xt.shape[-2:]
        if h % f or w % f:
            raise ValueError(
                f"x_t is {h}×{w}, but this U-Net downsamples by {f}: height and width must be multiples "
                f"of {f} (e.g. {max(f, h // f * f)}×{max(f, w // f * f)}; native size "
                f"{self.sample_size}×{self.sample_size}). Crop or pad the image."
            )
        return self.schedule.check_t(t, xt.shape[0])

    # ------------------------------------------------------------------ calls
    def _split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.learned_variance:
            c = self.unet.config.in_channels
            return out[:, :c], out[:, c:]
        return out, None

    # ------------------------------------------------------------------ compilation
    @property
    def compiled(self) -> bool:
        """Whether DiffLoss's calls run the ``torch.compile``'d U-Net (:meth:`compile_unet`)."""
        return bool(self._compiled)

    def compile_unet(self, mode: str | None = None, backend: str = "inductor") -> bool:
        """Run DiffLoss's calls ``prior(xt, t, compiled=True)`` (ε and h-space) through
        ``torch.compile(unet)``; every other call of the prior stays eager.

        The U-Net is frozen and DiffLoss shows it fixed shapes, so it is compiled with
        ``dynamic=False``: one graph per (batch, size, dtype, autograd on/off) — DiffLoss uses
        two, its constant x branch and its z branch with gradients — and no recompilation
        after the first step. The work happens at the first call and first backward (about a
        minute for ADM-256 on a GPU); :func:`~diffloss.training.train` shows it in the progress
        bar. ``mode``/``backend`` are ``torch.compile``'s (``"max-autotune"``, ``"aot_eager"``).
        ``prior.hspace`` stays eager. Returns False, with a warning, and stays eager where
        ``torch.compile`` is unavailable; if compiling fails at the first call, that call and
        all later ones run eagerly, with a warning.
        """
        try:
            import torch._dynamo

            if not torch._dynamo.is_dynamo_supported():
                raise RuntimeError(f"torch.compile does not support this Python/platform ({platform.python_version()})")
            self._compiled = (torch.compile(self.unet, dynamic=False, mode=mode, backend=backend),)
        except Exception as err:  # noqa: BLE001 - compile is an optimisation: eager is the fallback
            warnings.warn(f"torch.compile is unavailable ({type(err).__name__}: {err}); the prior runs "
                          "eagerly", RuntimeWarning, stacklevel=2)
            self._compiled = ()
        return self.compiled

    def _run_unet(self, xt: Tensor, t: Tensor, compiled: bool) -> Tensor:
        if compiled and self._compiled:
            from torch._dynamo.exc import TorchDynamoException

            try:
                return self._compiled[0](xt, t).sample
            except TorchDynamoException as err:
                warnings.warn(f"compiling the prior's U-Net failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it runs eagerly from "
                              "now on", RuntimeWarning, stacklevel=3)
                self._compiled = ()
                if self._captured is not None:
                    self._captured.clear()
        return self.unet(xt, t).sample

    def forward(self, xt: Tensor, t: Tensor, *, compiled: bool = False) -> PriorOutput:
        """ε_θ(x_t, t) and h(x_t, t) from ONE U-Net call (forward hook on ``mid_block``).

        ``t`` may be on the CPU (then it is checked there, without a host–device sync, and
        copied to the device asynchronously). ``compiled=True`` (DiffLoss's calls) runs the
        compiled U-Net when :meth:`compile_unet` was called; other calls stay eager, so that
        evaluating or sampling at new image sizes does not recompile."""
        t = self.check_input(xt, t)
        self._captured = []
        try:
            out = self._run_unet(xt, to_device(t, xt.device), compiled)
            hspace = self._captured[0]
        finally:
            self._captured = None
        eps, variance = self._split(out)
        return PriorOutput(eps=eps, hspace=hspace, variance=variance)

    def hspace(self, xt: Tensor, t: Tensor) -> Tensor:
        """h(x_t, t) only: diffusers' own forward runs up to the middle block and stops there,
        so the up path (about half the cost) never runs. Same tensor as ``prior(xt, t).hspace``."""
        t = self.check_input(xt, t)
        self._stop_after_mid = True
        try:
            self.unet(xt, to_device(t, xt.device))
        except _StopAfterMidBlock as stop:
            return stop.hspace
        finally:
            self._stop_after_mid = False
        raise RuntimeError("the U-Net returned without running its middle block")  # pragma: no cover

    def eps(self, xt: Tensor, t: Tensor) -> Tensor:
        """ε_θ(x_t, t) alone (the ε half for learned-variance models)."""
        return self(xt, t).eps

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a diffusers folder: the U-Net (safetensors + config.json) and scheduler_config.json."""
        folder = Path(folder)
        self.unet.save_pretrained(folder, safe_serialization=True)
        _write_json(folder / SCHEDULER_CONFIG, scheduler_config(self.schedule, self.learned_variance))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> DiffusionPrior:
        """Load a prior from a local diffusers folder or a Hugging Face hub id.

        The U-Net is read from the folder (or its ``unet/`` subfolder); the schedule from
        ``scheduler_config.json`` (or ``scheduler/scheduler_config.json``), linear 1e-4..0.02 with
        T = 1000 when there is none. ``kwargs`` go to ``UNet2DModel.from_pretrained``.

        Checked, with a clear exception naming the path: a name that looks like a local path
        (a ``Path``; starts with ``/``, ``.`` or ``~``; more than one ``/``; a first folder that
        exists here; a file extension such as ``.pt``; characters a hub id cannot have) but does
        not exist is ``FileNotFoundError("no such folder: ...")``, never a hub download; a file
        instead of a folder, a folder without ``config.json``, damaged weights or config
        (``OSError`` saying to write the folder again), an unreadable scheduler config
        and a scheduler whose ``prediction_type`` is not ``"epsilon"`` (DiffLoss compares
        predicted noise; a v- or x0-prediction model's output is not ε) are errors too.
        """
        path = Path(name_or_path).expanduser()
        if path.exists():
            if not path.is_dir():
                hint = (" It looks like a guided-diffusion checkpoint: load it with "
                        "DiffusionPrior.from_adm_checkpoint(path), or convert it once with "
                        f"`diffloss convert-adm {path} FOLDER`."
                        if path.suffix.lower() in (".pt", ".pth", ".ckpt") else "")
                raise ValueError(f"{path} is a file; expected a diffusers folder (config.json + "
                                 f"diffusion_pytorch_model.safetensors).{hint}")
            unet_dir = path if (path / "config.json").exists() else path / "unet"
            if not (unet_dir / "config.json").exists():
                raise FileNotFoundError(
                    f"{path} holds no diffusers U-Net (no config.json here or in unet/). "
                    "Write one with DiffusionPrior.save_pretrained(folder) or "
                    "`diffloss convert-adm CKPT.pt FOLDER`."
                )
            check_unet_class(_read_json_object(unet_dir / "config.json"), unet_dir)
            try:
                unet = UNet2DModel.from_pretrained(unet_dir, **kwargs)
            except OSError as exc:  # a truncated weights file, a broken config.json, ...
                line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise OSError(
                    f"cannot load the prior in {unet_dir}: {line} The folder is incomplete or "
                    "damaged: write it again (DiffusionPrior.save_pretrained, `diffloss convert-adm`, "
                    "or data_scripts/download_adm_prior.py)."
                ) from exc
            sched_cfg, where = None, None
            for cand in (path / SCHEDULER_CONFIG, path / "scheduler" / SCHEDULER_CONFIG):
                if cand.exists():
                    sched_cfg, where = _read_json_object(cand), str(cand)
                    break
        elif _looks_like_path(name_or_path):
            raise FileNotFoundError(_no_such_folder(path))
        else:
            unet, sched_cfg = _from_hub(str(name_or_path), **kwargs)
            where = f"{name_or_path} (hub)"
        check_epsilon_prediction(sched_cfg, where)
        unloaded = [n for n, p in (*unet.named_parameters(), *unet.named_buffers()) if p.is_meta]
        if unloaded:  # weights the folder does not have for this class
            raise UnsupportedPriorError(
                f"cannot use the prior {name_or_path}: {len(unloaded)} of its U-Net's weights are "
                f"missing from the files (e.g. {unloaded[0]}); the folder does not hold a "
                "UNet2DModel's weights")
        schedule = NoiseSchedule.from_diffusers_config(sched_cfg) if sched_cfg else NoiseSchedule.linear()
        prior = cls(unet, schedule)
        prior.source = str(name_or_path)
        return prior

    @classmethod
    def tiny(cls) -> DiffusionPrior:
        """The tiny prior that ships in the repository (trained by ``train-tiny``; see provenance.json)."""
        if not (TINY_PRIOR_DIR / "config.json").exists():
            raise FileNotFoundError(
                f"The tiny prior is missing from {TINY_PRIOR_DIR}. Reinstall diffloss, or retrain it with "
                f"`diffloss train-tiny-prior --out {TINY_PRIOR_DIR}`."
            )
        prior = cls.from_pretrained(TINY_PRIOR_DIR)
        prior.source = "tiny"
        return prior

    @classmethod
    def from_adm_checkpoint(cls, path: str | os.PathLike, flags: dict[str, Any] | None = None) -> DiffusionPrior:
        """The paper's prior: an OpenAI guided-diffusion checkpoint converted exactly to diffusers
        (see :mod:`diffloss.adm`). ``flags`` default to ``256x256_diffusion_uncond.pt``'s."""
        from . import adm

        flags = dict(adm.ADM_256_UNCOND if flags is None else flags)
        sched_cfg = adm.adm_scheduler_config(flags)
        check_epsilon_prediction(sched_cfg, f"{path} (flags: predict_xstart)")
        unet = adm.load_adm_checkpoint(path, flags)
        prior = cls(unet, NoiseSchedule.from_diffusers_config(sched_cfg))
        prior.source = f"adm:{path}"
        return prior


class UnsupportedPriorError(ValueError):
    """A model that :class:`DiffusionPrior` cannot use as a prior (its class or its weights)."""


def check_unet_class(config: dict[str, Any], where: Any) -> None:
    """:class:`UnsupportedPriorError` unless the diffusers ``config`` describes a
    ``UNet2DModel``: an unconditional, pixel-space U-Net, the kind of model DiffLoss's prior is
    (seed Eq. 6). Any other class would load with weights left unset (diffusers loads what
    matches by name and leaves the rest on the ``meta`` device)."""
    kind = config.get("_class_name", "UNet2DModel")
    if kind == "UNet2DModel":
        return
    hint = (" It is a text-conditioned U-Net, as in latent diffusion (Stable Diffusion): "
            "latent priors are not supported yet." if kind == "UNet2DConditionModel" else "")
    raise UnsupportedPriorError(
        f"{where} holds a {kind}, not a UNet2DModel: DiffusionPrior loads unconditional "
        f"pixel-space diffusers UNet2DModel priors (or guided-diffusion ADM checkpoints).{hint}")


def check_epsilon_prediction(sched_cfg: dict[str, Any] | None, where: Any) -> None:
    """``ValueError`` unless the scheduler config describes an ε-prediction model
    (``prediction_type`` ``"epsilon"``, diffusers' default when the key is absent): DiffLoss
    reads the U-Net's output as the predicted noise ε_θ(x_t, t) (seed Eq. 6)."""
    kind = (sched_cfg or {}).get("prediction_type", "epsilon")
    if kind != "epsilon":
        raise ValueError(
            f"{where}: the scheduler config says prediction_type={kind!r}, but DiffLoss needs an "
            "ε-prediction prior (prediction_type='epsilon'): it compares predicted noise, and a "
            f"{kind!r} model's output is not ε. Use an ε-prediction model, e.g. the ADM "
            "256x256_diffusion_uncond.pt (data_scripts/download_adm_prior.py) or "
            "google/ddpm-ema-church-256."
        )


#: File extensions of weights and configs: a name ending so is a local path, never a hub id.
_PATH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json", ".pkl", ".npz")
#: A Hugging Face hub id: ``name`` or ``namespace/name`` of letters, digits, ``-``, ``_``, ``.``.
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def _looks_like_path(name: str | os.PathLike) -> bool:
    """Whether a name that does not exist was meant as a local path rather than a hub id."""
    if not isinstance(name, str):
        return True  # a Path object
    if name.startswith(("/", ".", "~")) or "\\" in name or name.lower().endswith(_PATH_SUFFIXES):
        return True
    if not _HUB_ID.fullmatch(name) or ".." in name or "--" in name:
        return True
    first = name.split("/", 1)[0]
    return "/" in name and Path(first).is_dir()


def _no_such_folder(path: Path) -> str:
    """``no such folder: PATH``, what belongs there, and close names next to it."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    hint = ""
    if parent.is_dir() and parent == path.parent:
        try:
            names = sorted(p.name for p in parent.iterdir())
        except OSError:
            names = []
        close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.5)
        if close:
            hint = " Did you mean " + " or ".join(str(parent / c) for c in close) + "?"
    elif parent.is_dir():
        hint = f" (The nearest existing folder is {parent}.)"
    return (
        f"no such folder: {path}. A prior folder holds a diffusers U-Net: config.json + "
        "diffusion_pytorch_model.safetensors (+ scheduler_config.json), as written by "
        "DiffusionPrior.save_pretrained or data_scripts/download_adm_prior.py." + hint
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``ValueError`` naming the file and the problem."""
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                         f"{exc.colno}); write it again or delete it") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (JSON) file") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(obj).__name__}")
    return obj


def _non_finite_parameters(module: nn.Module) -> list[str]:
    """Names (with counts) of parameters and buffers that hold NaN or ±inf."""
    bad = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not t.is_meta:
            n = int((~torch.isfinite(t.detach())).sum())
            if n:
                bad.append(f"{name}: {n}")
    return bad


def _listing(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def scheduler_config(schedule: NoiseSchedule, learned_variance: bool = False) -> dict[str, Any]:
    """A diffusers ``DDPMScheduler`` config that reproduces ``schedule`` exactly."""
    kw: dict[str, Any] = {
        "num_train_timesteps": schedule.T,
        "variance_type": "learned_range" if learned_variance else "fixed_small",
        "clip_sample": True,
        "prediction_type": "epsilon",
    }
    linear = NoiseSchedule.linear(schedule.T, float(schedule.betas[0]), float(schedule.betas[-1]))
    if torch.equal(linear.betas, schedule.betas):
        kw.update(beta_schedule="linear", beta_start=float(schedule.betas[0]), beta_end=float(schedule.betas[-1]))
    elif torch.equal(NoiseSchedule.cosine(schedule.T).betas, schedule.betas):
        kw.update(beta_schedule="squaredcos_cap_v2")
    else:
        kw.update(trained_betas=schedule.betas.tolist())
    return dict(DDPMScheduler(**kw).config)


def _from_hub(repo_id: str, **kwargs: Any) -> tuple[UNet2DModel, dict[str, Any] | None]:
    from huggingface_hub import hf_hub_download

    errors = []
    for sub in (None, "unet"):
        try:
            unet = UNet2DModel.from_pretrained(repo_id, subfolder=sub, **kwargs)
            # its config.json is in the cache now: read the class it was saved as
            config = UNet2DModel.load_config(repo_id, subfolder=sub,
                                             **{**kwargs, "local_files_only": True})
            check_unet_class(dict(config), f"{repo_id} (hub{f', {sub}/' if sub else ''})")
            break
        except UnsupportedPriorError:
            raise
        except (OSError, ValueError, EnvironmentError) as err:  # noqa: UP024 (diffusers raises both)
            errors.append(err)
            if _hub_unreachable(err):
                # Offline or no network: look for the unet/ subfolder in the local cache only, rather
                # than waiting out huggingface_hub's network retries (about 25 s) a second time.
                kwargs = {**kwargs, "local_files_only": True}
    else:
        raise OSError(
            f"Could not load the diffusion prior {repo_id!r}: it is not a local folder, and it could not "
            "be fetched from the Hugging Face hub or found in its cache (offline?). On a machine with "
            f"internet run `huggingface-cli download {repo_id}` (or DiffusionPrior.from_pretrained once), "
            "or pass a local folder written by DiffusionPrior.save_pretrained. "
            f"Last error: {errors[-1]}"
        ) from errors[-1]
    sched_cfg = None
    for name in (SCHEDULER_CONFIG, f"scheduler/{SCHEDULER_CONFIG}"):
        try:
            local = Path(hf_hub_download(repo_id, name))
        except Exception:  # noqa: BLE001 - absent file: fall back to the default schedule
            continue
        sched_cfg = _read_json_object(local)
        break
    return unet, sched_cfg


def _hub_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it wraps) says the hub could not be reached and the file is not
    cached (``LocalEntryNotFoundError``; raised offline and after failed network retries)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ====================================================================== the tiny prior
def tiny_unet_config(sample_size: int = 32, width: int = 24) -> dict[str, Any]:
    """The tiny prior's architecture: 3 levels (width, 2·width, 4·width) of ResNet blocks and
    self-attention in the middle block only (cheap on a CPU); about 1.1 M parameters at ``width=24``."""
    return dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(width, 2 * width, 4 * width),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=width,  # 4 heads in the middle block
        norm_num_groups=8 if width % 8 == 0 else 1,
        num_train_timesteps=1000,
    )


def denoising_loss(unet: UNet2DModel, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """DDPM's simple loss, Ho et al. Eq. 14: ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖², per sample."""
    xt = schedule.q_sample(x0, t, noise)
    out = unet(xt, t).sample[:, : x0.shape[1]]
    return F.mse_loss(out, noise, reduction="none").flatten(1).mean(1)


def random_crops(images: list[Tensor], n: int, size: int, generator: torch.Generator,
                 scale_range: tuple[float, float] = (0.25, 0.6)) -> Tensor:
    """``n`` random ``size``² crops in [-1, 1] of randomly downscaled images, with random flips.

    Downscaling by a factor in ``scale_range`` makes a 32-pixel crop show structure (edges,
    textures) rather than a nearly flat patch of a 512-pixel photograph.
    """
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        s = scale_range[0] + (scale_range[1] - scale_range[0]) * float(torch.rand(1, generator=generator))
        h, w = img.shape[-2:]
        hh, ww = max(size, round(h * s)), max(size, round(w * s))
        small = F.interpolate(img[None], size=(hh, ww), mode="bilinear", antialias=True, align_corners=False)[0]
        y = int(torch.randint(hh - size + 1, (1,), generator=generator))
        x = int(torch.randint(ww - size + 1, (1,), generator=generator))
        crop = small[:, y : y + size, x : x + size]
        if float(torch.rand(1, generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop
    return out.clamp(0, 1) * 2 - 1


@torch.no_grad()
def evaluate_loss(unet: UNet2DModel, schedule: NoiseSchedule, x0: Tensor, n_t: int = 20, seed: int = 0,
                  batch: int = 64) -> float:
    """ε-prediction loss averaged over ``n_t`` evenly spaced t and over the crops ``x0`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    ts = torch.linspace(0, schedule.T - 1, n_t).round().long()
    was_training = unet.training
    unet.eval()
    total, count = 0.0, 0
    for t_val in ts:
        for i in range(0, x0.shape[0], batch):
            xb = x0[i : i + batch]
            noise = torch.randn(xb.shape, generator=g)
            t = torch.full((xb.shape[0],), int(t_val), dtype=torch.long)
            total += float(denoising_loss(unet, schedule, xb, t, noise).sum())
            count += xb.shape[0]
    unet.train(was_training)
    return total / count


def _check_prior_output(out: Path) -> None:
    """``out`` may be written by :func:`train_tiny`: a new or empty folder, or one that holds
    only a prior's files (replaced). Anything else is refused with a message."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} is an existing file, not a folder: pass a folder "
                                 "path for the prior (it is created)")
    mine = {"config.json", "diffusion_pytorch_model.safetensors", SCHEDULER_CONFIG, PROVENANCE}
    others = sorted(p.name for p in out.iterdir() if p.name not in mine) if out.is_dir() else []
    if others:
        raise FileExistsError(f"output folder {out} holds files that are not a prior's "
                              f"({', '.join(others[:6])}); pass a new or empty folder")


def train_tiny(out: str | os.PathLike, steps: int = 2500, batch_size: int = 16, size: int = 32,
               width: int = 24, lr: float = 2e-3, seed: int = 0, ema_decay: float = 0.995,
               n_eval: int = 96, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train the tiny prior as a DDPM (ε-prediction, linear schedule, T = 1000) on random crops
    of the *training* split of the bundled images, and write it (EMA weights) with provenance.

    ``command`` is recorded in provenance.json (the CLI passes its command line); by default the
    equivalent ``train_tiny(...)`` call is recorded."""
    from tqdm.auto import tqdm

    from .data import sample_images

    _check_prior_output(Path(out))  # before training, not after: no work is lost
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    schedule = NoiseSchedule.linear()
    unet = UNet2DModel(**tiny_unet_config(size, width))
    ema = UNet2DModel(**tiny_unet_config(size, width))
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    train_imgs = [s.image for s in sample_images("train")]
    test_imgs = [s.image for s in sample_images("test")]
    eval_train = random_crops(train_imgs, n_eval, size, torch.Generator().manual_seed(10_000 + seed))
    eval_test = random_crops(test_imgs, n_eval, size, torch.Generator().manual_seed(20_000 + seed))
    init_loss = evaluate_loss(unet, schedule, eval_test)

    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(200, steps // 10))

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.time()
    running = None
    bar = tqdm(range(steps), desc="train-tiny", disable=not progress)
    unet.train()
    for _step in bar:
        x0 = random_crops(train_imgs, batch_size, size, g)
        t = torch.randint(0, schedule.T, (batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = denoising_loss(unet, schedule, x0, t, noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - ema_decay)
        lv = loss.item()
        running = lv if running is None else 0.98 * running + 0.02 * lv
        bar.set_postfix(loss=f"{running:.4f}")
    wall = time.time() - start

    train_loss = evaluate_loss(ema, schedule, eval_train)
    test_loss = evaluate_loss(ema, schedule, eval_test)
    prior = DiffusionPrior(ema, schedule)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior.save_pretrained(out)
    info = {
        "command": command if command is not None else (
            f"train_tiny(out={str(out)!r}, steps={steps}, batch_size={batch_size}, size={size}, width={width}, "
            f"lr={lr}, seed={seed}, ema_decay={ema_decay}, n_eval={n_eval})"),
        "steps": steps, "batch_size": batch_size, "size": size, "width": width, "lr": lr, "seed": seed,
        "ema_decay": ema_decay,
        "parameters": prior.num_parameters(),
        "wall_time_s": round(wall, 1),
        "final_running_train_loss": round(running or float("nan"), 5),
        "eval_loss_train_crops": round(train_loss, 5),
        "eval_loss_heldout_crops": round(test_loss, 5),
        "eval_loss_at_init_heldout": round(init_loss, 5),
        "eval_protocol": f"{n_eval} crops, 20 evenly spaced t, seeded noise; EMA weights",
        "train_images": [s.name for s in sample_images("train")],
        "heldout_images": [s.name for s in sample_images("test")],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    _write_json(out / PROVENANCE, info)
    return info


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "diffloss"], cwd=root, capture_output=True,
                               text=True, check=True)
        return sha.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ====================================================================== the prior of a run profile
#: Where ``data_scripts/download_adm_prior.py`` writes the converted ADM 256 uncond prior.
ADM_PRIOR_DIR = Path("checkpoints") / "adm-256x256-uncond-diffusers"


def load_profile_prior(profile: Any = None, root: str | os.PathLike | None = None) -> DiffusionPrior:
    """The prior a run profile asks for (``profile.prior``; DESIGN.md, "Run profiles").

    ``profile``: a :class:`~diffloss.profiles.Profile`, a profile name, or ``None`` for the current
    one (``DIFFLOSS_PROFILE``). ``"tiny"`` gives :meth:`DiffusionPrior.tiny`; ``"adm"`` the paper's
    ADM 256 uncond prior from the converted folder ``checkpoints/adm-256x256-uncond-diffusers``,
    looked for under ``root`` (default: the current folder and its parents, then the repository
    checkout holding this package), with a clear ``FileNotFoundError`` saying how to make it when
    it is absent. Any other value is passed to :meth:`DiffusionPrior.from_pretrained` (a hub id or
    a local folder).
    """
    from . import profiles

    if profile is None:
        profile = profiles.current()
    elif isinstance(profile, str):
        profile = profiles.get(profile)
    kind = profile.prior
    if kind == "tiny":
        return DiffusionPrior.tiny()
    if kind != "adm":
        return DiffusionPrior.from_pretrained(kind)
    if root is not None:
        bases = [Path(root)]
    else:
        cwd = Path.cwd().resolve()
        bases = [cwd, *cwd.parents, Path(__file__).resolve().parents[1]]
    for base in bases:
        folder = base / ADM_PRIOR_DIR
        if (folder / "config.json").exists() or (folder / "unet" / "config.json").exists():
            return DiffusionPrior.from_pretrained(folder)
    where = str(Path(root) / ADM_PRIOR_DIR) if root is not None else f"{ADM_PRIOR_DIR} (in the repository root)"
    raise FileNotFoundError(
        f"Profile {profile.name!r} uses the paper's ADM 256x256 uncond prior, but its converted diffusers folder "
        f"{where} does not exist. Make it with `python data_scripts/download_adm_prior.py` (downloads the "
        "2.2 GB guided-diffusion checkpoint and converts it; `--from-file PATH` converts a copy you already "
        "have), or use another prior: DiffusionPrior.from_pretrained('google/ddpm-ema-church-256') or "
        "DIFFLOSS_PROFILE=small for the tiny prior."
    )
