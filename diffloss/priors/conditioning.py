"""Latent priors from a diffusers pipeline folder: U-Net, VAE, schedule and the empty prompt.

A text-to-image latent diffusion model (Rombach et al. 2022) denoises VAE latents conditioned on
a text encoding. DiffLoss asks it about natural images in general, so it is conditioned on the
*empty* prompt, the same condition classifier-free guidance uses for its unconditional branch:

* Stable Diffusion 1.x/2.x: ``text_encoder(tokenizer(""))[0]``, the last hidden state, 1×77×D;
* SDXL: the penultimate hidden states of both text encoders, concatenated (1×77×2048), and the
  pooled projection of the second (1×1280), plus ``time_ids`` built from the image size at
  each call (:meth:`DiffusionPrior._conditioning`).

The prompt is encoded once, at load, and the text encoders are dropped: only the 1×77×D tensor
stays in memory. A folder written by ``DiffusionPrior.save_pretrained`` holds that tensor in
``conditioning.safetensors`` instead of the text encoders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from .checks import (
    CONDITIONING_FILE,
    SCHEDULER_CONFIG,
    UnsupportedPriorError,
    _damaged_folder,
    _read_json_object,
    check_all_loaded,
)
from .prediction import prediction_type_of

#: (tokenizer, text encoder) subfolders of a pipeline, in the order the pipeline concatenates them.
TEXT_PARTS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))


def load_latent_pipeline(cls: type, folder: str | Path, **kwargs: Any) -> Any:
    """A latent prior (an instance of ``cls``) from a pipeline folder: ``unet/``
    (``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``), ``scheduler/`` and the text parts
    or ``conditioning.safetensors``. ``kwargs`` go to both models' ``from_pretrained``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    missing = [p for p in ("unet/config.json", "vae/config.json") if not (folder / p).exists()]
    if missing:
        raise UnsupportedPriorError(
            f"{folder} holds a UNet2DConditionModel in unet/ but no {', '.join(missing)}: a latent prior "
            "needs its VAE. Pass the whole pipeline folder (unet/, vae/, scheduler/, text_encoder/, "
            "tokenizer/), e.g. a local copy of stable-diffusion-v1-5/stable-diffusion-v1-5.",
            kind="UNet2DConditionModel")
    vae_class = _read_json_object(folder / "vae" / "config.json").get("_class_name", "AutoencoderKL")
    if vae_class != "AutoencoderKL":
        raise UnsupportedPriorError(f"{folder / 'vae'} holds a {vae_class}; latent priors use an AutoencoderKL",
                                    kind=vae_class)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs)
    except OSError as exc:
        raise _damaged_folder(exc, "the latent prior", folder, "The pipeline folder is incomplete "
                              "or damaged: download or save it again.") from exc
    check_all_loaded(unet, folder, "U-Net", "UNet2DConditionModel")
    check_all_loaded(vae, folder, "VAE", "AutoencoderKL")
    sched_path = folder / "scheduler" / SCHEDULER_CONFIG
    sched_cfg = _read_json_object(sched_path) if sched_path.exists() else None
    kind = prediction_type_of(sched_cfg, sched_path)
    schedule = NoiseSchedule.from_diffusers_config(sched_cfg) if sched_cfg else NoiseSchedule.linear()
    sdxl = unet.config.get("addition_embed_type") == "text_time"
    if (folder / CONDITIONING_FILE).exists():
        from safetensors.torch import load_file

        saved = load_file(str(folder / CONDITIONING_FILE))
        hidden, pooled = saved["encoder_hidden_states"], saved.get("text_embeds")
    else:
        hidden, pooled = encode_empty_prompt(folder, sdxl=sdxl)
    dtype = next(unet.parameters()).dtype
    return cls(unet, schedule, prediction_type=kind, vae=vae, encoder_hidden_states=hidden.to(dtype),
               text_embeds=pooled.to(dtype) if sdxl and pooled is not None else None)


@torch.no_grad()
def encode_empty_prompt(folder: str | Path, sdxl: bool = False) -> tuple[Tensor, Tensor | None]:
    """The pipeline's encoding of the prompt ``""`` (module docstring): ``(hidden, pooled)``,
    hidden 1×L×D, pooled 1×D from the last text encoder (used by SDXL), computed in float32 on
    the CPU. The text encoders are loaded here and freed on return."""
    folder = Path(folder)
    parts = [(t, e) for t, e in TEXT_PARTS if (folder / e / "config.json").exists()]
    if not parts:
        raise FileNotFoundError(
            f"{folder} has no text_encoder/ (nor conditioning.safetensors): a latent prior is "
            "conditioned on the encoded empty prompt. Pass the whole pipeline folder, or save the prior "
            "once with DiffusionPrior.save_pretrained, which writes conditioning.safetensors.")
    try:
        import transformers
    except ImportError:
        raise ImportError("encoding the empty prompt of a latent prior needs the `transformers` package: "
                          "pip install 'diffloss[latent]' (or pip install transformers)") from None
    index = _model_index(folder)
    hidden, pooled = [], None
    for tok_name, enc_name in parts:
        if not (folder / tok_name).is_dir():
            raise FileNotFoundError(f"{folder / enc_name} has no tokenizer beside it ({folder / tok_name} is missing)")
        tokenizer = _transformers_class(transformers, index, tok_name, "CLIPTokenizer").from_pretrained(
            folder / tok_name)
        encoder = _transformers_class(transformers, index, enc_name, "CLIPTextModel").from_pretrained(
            folder / enc_name, torch_dtype=torch.float32)
        ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2] if sdxl else out[0])
        pooled = out[0] if sdxl else getattr(out, "pooler_output", None)
        del encoder
    return torch.cat(hidden, dim=-1), pooled


def _model_index(folder: Path) -> dict[str, Any]:
    path = folder / "model_index.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _transformers_class(transformers: Any, index: dict[str, Any], name: str, default: str) -> Any:
    """The class ``model_index.json`` names for the part ``name`` (``["transformers", "CLIPTextModel"]``)."""
    entry = index.get(name)
    cls_name = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[1] else default
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        raise UnsupportedPriorError(f"model_index.json names {cls_name} for {name}, which this transformers "
                                    f"({transformers.__version__}) does not have", kind=cls_name)
    return cls
