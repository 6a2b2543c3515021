"""Loading and saving priors: diffusers folders, pipeline folders, the hub, a run profile's prior.

:func:`load_prior` is :meth:`DiffusionPrior.from_pretrained`. It reads

* a **pixel** prior: a ``UNet2DModel`` folder (``config.json`` + safetensors, here or in
  ``unet/``) with ``scheduler_config.json`` (or ``scheduler/``);
* a **latent** prior: a diffusers pipeline folder (Stable Diffusion 1.x/2.x, SDXL) with
  ``unet/`` (``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``), ``scheduler/`` and the text
  encoder(s) and tokenizer(s), or ``conditioning.safetensors`` in their place
  (:mod:`~diffloss.priors.conditioning`);
* a Hugging Face hub id of either kind;

and refuses everything else with a message that names the path and says what belongs there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from ..schedule import NoiseSchedule
from .checks import (
    CONDITIONING_FILE,
    SCHEDULER_CONFIG,
    UnsupportedPriorError,
    _damaged_folder,
    _looks_like_path,
    _no_such_folder,
    _read_json_object,
    _write_json,
    check_all_loaded,
    check_unet_class,
)
from .prediction import prediction_type_of


def _training_run(path: Path) -> dict[str, Any] | None:
    """The config of the diffloss training run that ``path`` is (its folder, or a ``.pt`` in it),
    else ``None``: a run folder holds ``config.json`` with the trainer's keys and ``last.pt``."""
    folder = path if path.is_dir() else path.parent
    if path.exists() and not path.is_dir() and path.suffix.lower() != ".pt":
        return None
    config = folder / "config.json"
    if not (config.is_file() and ((folder / "last.pt").exists() or (folder / "best.pt").exists())):
        return None
    try:
        values = _read_json_object(config)
    except (OSError, ValueError):
        return None
    return values if {"model", "loss", "iterations"} <= values.keys() else None


def load_prior(cls: type, name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """Load a prior (an instance of ``cls``, a :class:`DiffusionPrior`) from a local folder or a hub id.

    The U-Net is read from the folder (or its ``unet/`` subfolder); the schedule and the
    ``prediction_type`` from ``scheduler_config.json`` (or ``scheduler/scheduler_config.json``),
    linear 1e-4..0.02 with T = 1000 and ε-prediction when there is none. A folder whose
    ``unet/`` holds a ``UNet2DConditionModel`` is a latent-diffusion pipeline
    (:func:`load_latent_pipeline`). ``kwargs`` go to the U-Net's ``from_pretrained``.

    Checked, with a clear exception naming the path: a name that looks like a local path
    (a ``Path``; starts with ``/``, ``.`` or ``~``; more than one ``/``; a first folder that
    exists here; a file extension such as ``.pt``; characters a hub id cannot have) but does
    not exist is ``FileNotFoundError("no such folder: ...")``, never a hub download; a file
    instead of a folder, a folder without ``config.json``, damaged weights or config
    (``OSError`` saying to write the folder again), an unreadable scheduler config, a
    ``prediction_type`` other than ε, v or x̂_0, and a conditional U-Net without its pipeline.
    """
    path = Path(name_or_path).expanduser()
    run = _training_run(path)
    if run is not None:
        prior = f" (its own prior: {run.get('prior')!r})" if run.get("prior") else ""
        raise ValueError(f"{path} is {'a checkpoint of ' if path.is_file() else ''}a training run of "
                         f"diffloss{prior}, not a diffusion prior: give a prior (a diffusers folder, "
                         "'tiny', 'ffdnet', 'adm:CKPT.pt' or a hub id)")
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
        unet_config = _read_json_object(unet_dir / "config.json")
        if unet_config.get("_class_name") == "UNet2DConditionModel" and unet_dir != path:
            from .conditioning import load_latent_pipeline

            prior = load_latent_pipeline(cls, path, **kwargs)
            prior.source = str(name_or_path)
            return prior
        check_unet_class(unet_config, unet_dir)
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, **kwargs)
        except OSError as exc:  # a truncated weights file, a broken config.json, ...
            raise _damaged_folder(
                exc, "the prior", unet_dir, "The folder is incomplete or damaged: write it again "
                "(DiffusionPrior.save_pretrained, `diffloss convert-adm`, or "
                "data_scripts/download_adm_prior.py).") from exc
        sched_cfg, where = None, str(path)
        for cand in (path / SCHEDULER_CONFIG, path / "scheduler" / SCHEDULER_CONFIG):
            if cand.exists():
                sched_cfg, where = _read_json_object(cand), str(cand)
                break
    elif _looks_like_path(name_or_path):
        raise FileNotFoundError(_no_such_folder(path))
    else:
        try:
            unet, sched_cfg = _from_hub(str(name_or_path), **kwargs)
        except _LatentPipelineOnHub as latent:
            from .conditioning import load_latent_pipeline

            prior = load_latent_pipeline(cls, latent.folder, **kwargs)
            prior.source = str(name_or_path)
            return prior
        where = f"{name_or_path} (hub)"
    kind = prediction_type_of(sched_cfg, where)
    check_all_loaded(unet, name_or_path, "U-Net", "UNet2DModel")
    schedule = NoiseSchedule.from_diffusers_config(sched_cfg) if sched_cfg else NoiseSchedule.linear()
    prior = cls(unet, schedule, prediction_type=kind)
    prior.source = str(name_or_path)
    return prior


def save_prior(prior: Any, folder: str | os.PathLike) -> None:
    """Write ``prior`` so that :func:`load_prior` reads it back (see ``DiffusionPrior.save_pretrained``)."""
    folder = Path(folder)
    sched = scheduler_config(prior.schedule, prior.learned_variance, prior.prediction_type)
    if not prior.latent:
        prior.unet.save_pretrained(folder, safe_serialization=True)
        _write_json(folder / SCHEDULER_CONFIG, sched)
        return
    from safetensors.torch import save_file

    prior.unet.save_pretrained(folder / "unet", safe_serialization=True)
    prior.vae.save_pretrained(folder / "vae", safe_serialization=True)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    _write_json(folder / "scheduler" / SCHEDULER_CONFIG, sched)
    tensors = {"encoder_hidden_states": prior.encoder_hidden_states}
    if prior.text_embeds is not None:
        tensors["text_embeds"] = prior.text_embeds
    tmp = folder / (CONDITIONING_FILE + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, folder / CONDITIONING_FILE)


def scheduler_config(schedule: NoiseSchedule, learned_variance: bool = False,
                     prediction_type: str = "epsilon") -> dict[str, Any]:
    """A diffusers ``DDPMScheduler`` config that reproduces ``schedule`` (and the U-Net's
    ``prediction_type``) exactly."""
    kw: dict[str, Any] = {
        "num_train_timesteps": schedule.T,
        "variance_type": "learned_range" if learned_variance else "fixed_small",
        "clip_sample": True,
        "prediction_type": prediction_type,
    }
    linear = NoiseSchedule.linear(schedule.T, float(schedule.betas[0]), float(schedule.betas[-1]))
    if torch.equal(linear.betas, schedule.betas):
        kw.update(beta_schedule="linear", beta_start=float(schedule.betas[0]), beta_end=float(schedule.betas[-1]))
    elif torch.equal(NoiseSchedule.cosine(schedule.T).betas, schedule.betas):
        kw.update(beta_schedule="squaredcos_cap_v2")
    else:
        kw.update(trained_betas=schedule.betas.tolist())
    return dict(DDPMScheduler(**kw).config)


class _LatentPipelineOnHub(Exception):
    """Raised by :func:`_from_hub` when the hub id is a latent-diffusion pipeline, downloaded to ``folder``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder))
        self.folder = folder


#: The files of a latent-diffusion pipeline that a latent prior needs (no safety checker, no
#: duplicate .bin/.ckpt weights, no other precisions).
PIPELINE_FILES = [
    "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/*.json",
    "text_encoder*/config.json", "text_encoder*/model.safetensors", "tokenizer*/*",
]


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
        except UnsupportedPriorError as err:
            if err.kind == "UNet2DConditionModel":  # a latent-diffusion pipeline: fetch its parts
                from huggingface_hub import snapshot_download

                raise _LatentPipelineOnHub(Path(snapshot_download(repo_id, allow_patterns=PIPELINE_FILES))) from None
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
