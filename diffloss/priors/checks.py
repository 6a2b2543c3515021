"""Checks a prior must pass before DiffLoss uses it, and the messages that say how to fix it."""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: Files a prior folder holds besides the diffusers model files.
SCHEDULER_CONFIG = "scheduler_config.json"
PROVENANCE = "provenance.json"
#: Where a latent prior saved by ``DiffusionPrior.save_pretrained`` keeps the encoded empty prompt.
CONDITIONING_FILE = "conditioning.safetensors"
#: The tiny prior that ships in the package (``diffloss/assets/tiny_prior``).
TINY_PRIOR_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_prior"


class UnsupportedPriorError(ValueError):
    """A model that :class:`DiffusionPrior` cannot use as a prior (its class or its weights).
    ``kind`` is the diffusers class the files hold, when that is the reason."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


def check_unet_class(config: dict[str, Any], where: Any) -> None:
    """:class:`UnsupportedPriorError` unless the diffusers ``config`` describes a
    ``UNet2DModel``, the U-Net of a pixel prior. Any other class would load with weights left
    unset (diffusers loads what matches by name and leaves the rest on the ``meta`` device). A
    ``UNet2DConditionModel`` is a latent prior's U-Net: it is loaded from its pipeline folder
    (with ``vae/``, ``scheduler/`` and the text encoder), never alone."""
    kind = config.get("_class_name", "UNet2DModel")
    if kind == "UNet2DModel":
        return
    hint = (" It is a text-conditioned U-Net, as in latent diffusion (Stable Diffusion): pass the "
            "pipeline folder that holds it in unet/, beside vae/, scheduler/ and text_encoder/ + "
            "tokenizer/ (or DiffusionPrior.from_components(unet=..., vae=..., "
            "encoder_hidden_states=...))." if kind == "UNet2DConditionModel" else "")
    raise UnsupportedPriorError(
        f"{where} holds a {kind}, not a UNet2DModel: DiffusionPrior loads pixel-space UNet2DModel "
        f"folders, latent-diffusion pipeline folders and guided-diffusion ADM checkpoints.{hint}",
        kind=kind)


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


def _damaged_folder(exc: OSError, what: str, folder: Any, remedy: str) -> OSError:
    """diffusers' error on a truncated weights file or a broken config, as one line naming the
    folder and saying how to write it again."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return OSError(f"cannot load {what} in {folder}: {line} {remedy}")


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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def check_latent_parts(unet: nn.Module, vae: nn.Module | None, encoder_hidden_states: Tensor | None,
                       text_embeds: Tensor | None) -> None:
    """The parts of a prior fit together: a VAE whose latents the U-Net takes (none for an RGB
    U-Net), the empty prompt's encoding for a conditional U-Net (1×L×cross_attention_dim; SDXL's
    pooled embedding too), nothing of the kind for an unconditional one."""
    from diffusers import UNet2DConditionModel

    conditional = isinstance(unet, UNet2DConditionModel)
    if vae is not None:
        from diffusers import AutoencoderKL

        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        if vae.config.latent_channels != unet.config.in_channels:
            raise ValueError(f"the VAE has {vae.config.latent_channels} latent channels but the U-Net "
                             f"takes {unet.config.in_channels}: they are not one pipeline's parts")
    elif unet.config.in_channels != 3:
        raise ValueError(f"the U-Net takes {unet.config.in_channels} channels: a pixel prior takes RGB "
                         "(3); a latent U-Net needs its VAE (DiffusionPrior(..., vae=AutoencoderKL))")
    if conditional and encoder_hidden_states is None:
        raise ValueError("a UNet2DConditionModel needs encoder_hidden_states: the text encoder's output "
                         "for the empty prompt (DiffusionPrior.from_pretrained(PIPELINE_FOLDER) encodes it)")
    if not conditional and (encoder_hidden_states is not None or text_embeds is not None):
        raise ValueError("encoder_hidden_states/text_embeds condition a UNet2DConditionModel; this "
                         f"{type(unet).__name__} takes none")
    if encoder_hidden_states is not None:
        dim = unet.config.cross_attention_dim
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != 1 or (
                isinstance(dim, int) and encoder_hidden_states.shape[-1] != dim):
            raise ValueError(f"encoder_hidden_states must be 1×L×{dim} (the empty prompt's encoding), "
                             f"got {tuple(encoder_hidden_states.shape)}")
    if conditional and unet.config.get("addition_embed_type") == "text_time" and text_embeds is None:
        raise ValueError("this U-Net (SDXL-like, addition_embed_type='text_time') needs text_embeds: "
                         "the pooled text embedding of the empty prompt")


def check_all_loaded(model: torch.nn.Module, name: Any, what: str, kind: str) -> None:
    """:class:`UnsupportedPriorError` when some of ``model``'s weights were not in the files
    (diffusers leaves them on the ``meta`` device)."""
    unloaded = [n for n, p in (*model.named_parameters(), *model.named_buffers()) if p.is_meta]
    if unloaded:
        raise UnsupportedPriorError(
            f"cannot use the prior {name}: {len(unloaded)} of its {what}'s weights are "
            f"missing from the files (e.g. {unloaded[0]}); the folder does not hold a "
            f"{kind}'s weights")
