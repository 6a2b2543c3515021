"""OpenAI guided-diffusion (ADM) checkpoints -> a stock diffusers ``UNet2DModel``.

The DiffLoss authors use the unconditional ImageNet model ``256x256_diffusion_uncond.pt`` of
Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis" (NeurIPS 2021, the "ADM"
U-Net) as their frozen prior. diffusers cannot read that file, but every layer of the ADM U-Net
has an exact counterpart in diffusers' ``UNet2DModel``; this module chooses the ``UNet2DModel``
configuration from the guided-diffusion flags and renames/reshapes every tensor.

Correspondence (guided-diffusion ``unet.py`` -> diffusers), each checked numerically against
guided-diffusion's own forward pass (``tests/test_adm.py``: max relative error 2.1e-6 on the
output, 5.3e-7 on the h-space, float32):

* ``timestep_embedding`` (cos half first, then sin, frequencies ``exp(-ln(10^4) i / half)``)
  = diffusers ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``;
  ``time_embed`` (Linear, SiLU, Linear) = ``time_embedding.linear_1/linear_2``.
* ``ResBlock`` with ``use_scale_shift_norm``: ``norm(h) * (1 + scale) + shift`` with
  ``(scale, shift) = emb_layers(emb).chunk(2)`` = ``ResnetBlock2D(time_embedding_norm="scale_shift")``
  (``in_layers.0/2`` -> ``norm1/conv1``, ``emb_layers.1`` -> ``time_emb_proj``,
  ``out_layers.0/3`` -> ``norm2/conv2``, ``skip_connection`` (1x1 conv) -> ``conv_shortcut``).
* ``resblock_updown``: the down/up-sampling ResBlocks apply 2x2 average pooling / nearest x2
  after ``norm+SiLU`` to both branches = ``ResnetBlock2D(down=True / up=True)``, i.e.
  ``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D`` and ``AttnDownBlock2D`` /
  ``AttnUpBlock2D`` with ``downsample_type="resnet"`` / ``upsample_type="resnet"``.
* ``GroupNorm32`` = ``nn.GroupNorm(32, C)`` with PyTorch's default ``eps=1e-5``
  (``norm_num_groups=32, norm_eps=1e-5``); the mid-block attention needs
  ``attn_norm_num_groups=32`` because diffusers drops that norm for ``scale_shift`` otherwise.
* ``AttentionBlock``: ``x + proj_out(attn(qkv(norm(x))))`` with a 1x1 Conv1d ``qkv``. The legacy
  ``QKVAttentionLegacy`` reads the 3C output channels as ``[head][q|k|v][d]`` (interleaved per
  head); ``QKVAttention`` (``use_new_attention_order``) as ``[q|k|v][head][d]``. Both are split
  into diffusers' ``to_q/to_k/to_v`` Linear layers (head-major ``[head][d]`` rows), ``proj_out``
  -> ``to_out.0``, ``norm`` -> ``group_norm``. The ``1/sqrt(sqrt(d))`` applied to q and to k is
  diffusers' ``1/sqrt(d)`` score scale.
* ``middle_block`` (ResBlock, AttentionBlock, ResBlock) = ``UNetMidBlock2D``; its output is the
  "h-space" used by DiffLoss' semantic term.
* ``out`` (GroupNorm, SiLU, conv) = ``conv_norm_out/conv_act/conv_out``; with ``learn_sigma``
  the 6 output channels are (epsilon, variance interpolation ``v``), read by
  ``DDPMScheduler(variance_type="learned_range")``.

Weights are converted to float32 unless another ``dtype`` is asked for; ``use_fp16`` (a runtime
flag of guided-diffusion, the released files hold float32) is ignored.

CLI: ``diffloss convert-adm IN.pt OUT_DIR [--flags FLAGS.json]`` writes a diffusers
folder (``UNet2DModel`` safetensors + ``config.json`` + ``scheduler_config.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .pt_files import first_line

__all__ = [
    "ADM_256_UNCOND",
    "ADM_256_UNCOND_URL",
    "GUIDED_DIFFUSION_DEFAULTS",
    "adm_scheduler_config",
    "adm_unet_config",
    "convert_adm_checkpoint",
    "convert_adm_state_dict",
    "load_adm_checkpoint",
    "normalize_adm_flags",
    "read_adm_flags",
]

#: Public release URL of the paper's prior (openai/guided-diffusion README, July 2021 models).
ADM_256_UNCOND_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
)
# OpenAI publishes no checksum for it: :func:`convert_adm_checkpoint` records the SHA-256 of the
# file it converted (``adm_flags.json``: ``source_sha256``), so a converted folder says which
# bytes it came from.

#: guided-diffusion flags of ``256x256_diffusion_uncond.pt`` (the DiffLoss prior), as given in the
#: guided-diffusion README (``MODEL_FLAGS`` of the unconditional 256x256 model).
ADM_256_UNCOND: dict[str, Any] = {
    "image_size": 256,
    "num_channels": 256,
    "num_res_blocks": 2,
    "channel_mult": "1,1,2,2,4,4",
    "learn_sigma": True,
    "class_cond": False,
    "attention_resolutions": "32,16,8",
    "num_head_channels": 64,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_new_attention_order": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
}

#: ``script_util.model_and_diffusion_defaults()`` of guided-diffusion: the value a flag takes
#: when it is not given (the released models were all made by scripts with these defaults).
GUIDED_DIFFUSION_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
}

# Flags of guided-diffusion's scripts that change neither the network nor its training schedule.
_IGNORED_FLAGS = frozenset(
    {
        "use_fp16",  # runtime half precision; the weights are stored in float32
        "use_checkpoint",  # gradient checkpointing (diffusers: enable_gradient_checkpointing())
        "timestep_respacing",  # sampling-time respacing, not the trained schedule
        "use_kl",  # training loss
        "rescale_learned_sigmas",  # training loss
        "clip_denoised",
        "num_samples",
        "batch_size",
        "use_ddim",
        "model_path",
        "num_classes",  # checked separately (class conditioning)
    }
)

# channel_mult="" means "pick by image size" (guided-diffusion script_util.create_model).
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}

_GROUPNORM_GROUPS = 32  # guided-diffusion normalization() = GroupNorm32(32, channels)
_GROUPNORM_EPS = 1e-5  # GroupNorm32 does not set eps: PyTorch's default 1e-5


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.lower() in {"true", "1", "yes"}
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"ADM flag {name!r} must be a boolean, got {value!r}")


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ValueError(
            f"ADM flag {name!r} must be a comma-separated string or a list, got {value!r}"
        )
    try:
        return tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"ADM flag {name!r} must hold integers, got {value!r}") from None


def normalize_adm_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in guided-diffusion's defaults, parse string flags and reject unsupported ones.

    Returns a new dict with every key of :data:`GUIDED_DIFFUSION_DEFAULTS`, where
    ``channel_mult`` is a tuple of numbers (the per-level channel multipliers) and
    ``attention_resolutions`` a tuple of ints (feature-map sizes with attention, as in the flags).

    Raises ``ValueError`` naming the flag for anything the conversion cannot reproduce exactly:
    ``class_cond`` (class-conditional models), ``resblock_updown=False`` (conv up/downsampling),
    ``use_scale_shift_norm=False``, ``channel_mult`` not starting at 1 (diffusers ties the timestep
    embedding width to the first block's width), ``num_heads``/``num_heads_upsample`` that give a
    different head width per level (diffusers uses one ``attention_head_dim``), unknown schedules
    and unknown flag names.
    """
    if not isinstance(flags, Mapping):
        raise TypeError(
            f"flags must be a mapping of guided-diffusion flags, got {type(flags).__name__}"
        )
    unknown = sorted(set(flags) - set(GUIDED_DIFFUSION_DEFAULTS) - _IGNORED_FLAGS)
    if unknown:
        raise ValueError(
            f"unknown ADM flag(s) {unknown}; known flags: {sorted(GUIDED_DIFFUSION_DEFAULTS)}"
        )
    f: dict[str, Any] = {
        **GUIDED_DIFFUSION_DEFAULTS,
        **{k: v for k, v in flags.items() if k in GUIDED_DIFFUSION_DEFAULTS},
    }

    for name in (
        "class_cond",
        "use_checkpoint",
        "use_scale_shift_norm",
        "resblock_updown",
        "use_fp16",
        "use_new_attention_order",
        "learn_sigma",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
    ):
        f[name] = _as_bool(name, f[name])
    for name in (
        "image_size",
        "num_channels",
        "num_res_blocks",
        "num_heads",
        "num_heads_upsample",
        "num_head_channels",
        "diffusion_steps",
    ):
        value = f[name]
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"ADM flag {name!r} must be an integer, got {value!r}")
        try:
            f[name] = int(value)
        except ValueError:
            raise ValueError(f"ADM flag {name!r} must be an integer, got {value!r}") from None
    f["dropout"] = float(f["dropout"])

    if f["class_cond"] or flags.get("num_classes") is not None:
        raise ValueError(
            "ADM flag 'class_cond'=True (class-conditional model, label_emb) is not supported: "
            "DiffLoss uses the unconditional prior (256x256_diffusion_uncond.pt)"
        )
    if not f["resblock_updown"]:
        raise ValueError(
            "ADM flag 'resblock_updown'=False (convolutional Downsample/Upsample layers) is not "
            "supported; the released guided-diffusion models use resblock_updown=True"
        )
    if not f["use_scale_shift_norm"]:
        raise ValueError("ADM flag 'use_scale_shift_norm'=False is not supported")
    if f["rescale_timesteps"] and f["diffusion_steps"] != 1000:
        raise ValueError(
            "ADM flag 'rescale_timesteps'=True with diffusion_steps != 1000 feeds t*1000/T to the "
            "network, which a diffusers UNet2DModel does not do"
        )
    if f["noise_schedule"] not in ("linear", "cosine"):
        raise ValueError(
            f"ADM flag 'noise_schedule'={f['noise_schedule']!r}: expected 'linear' or 'cosine'"
        )
    if f["num_res_blocks"] < 1 or f["num_channels"] < 1 or f["image_size"] < 1:
        raise ValueError(
            "ADM flags 'num_res_blocks', 'num_channels', 'image_size' must be positive"
        )

    cm = f["channel_mult"]
    if cm in ("", None):
        if f["image_size"] not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"ADM flag 'channel_mult' is empty and image_size={f['image_size']} has no "
                f"guided-diffusion default; give channel_mult explicitly"
            )
        cm = _DEFAULT_CHANNEL_MULT[f["image_size"]]
    elif isinstance(cm, str):
        cm = _as_int_tuple("channel_mult", cm)
    else:
        cm = tuple(cm)
    if not cm:
        raise ValueError("ADM flag 'channel_mult' is empty")
    if cm[0] != 1:
        raise ValueError(
            f"ADM flag 'channel_mult'={cm} is not supported: the first multiplier must be 1 "
            "(diffusers derives the timestep-embedding width from the first block's channels)"
        )
    widths = [int(m * f["num_channels"]) for m in cm]
    if any(w % _GROUPNORM_GROUPS for w in widths):
        raise ValueError(
            f"ADM flags 'num_channels' x 'channel_mult' give widths {widths}; each must be a "
            f"multiple of {_GROUPNORM_GROUPS} (GroupNorm32)"
        )
    f["channel_mult"] = cm
    f["attention_resolutions"] = _as_int_tuple("attention_resolutions", f["attention_resolutions"])
    if any(r <= 0 for r in f["attention_resolutions"]):
        raise ValueError(
            f"ADM flag 'attention_resolutions'={f['attention_resolutions']} must be positive"
        )
    _attention_head_dim(f)  # validate head layout now, naming the flag
    return f


def _attention_levels(f: Mapping[str, Any]) -> list[bool]:
    """Per level: does it have attention blocks? guided-diffusion stores attention at
    downsample rate ``ds = image_size // res`` for each ``res`` in ``attention_resolutions``."""
    attn_ds = {f["image_size"] // r for r in f["attention_resolutions"]}
    return [2**level in attn_ds for level in range(len(f["channel_mult"]))]


def _attention_head_dim(f: Mapping[str, Any]) -> int:
    """The single ``attention_head_dim`` of the diffusers model, or ValueError naming the flag.

    guided-diffusion uses ``num_head_channels`` per head when it is not -1, else ``num_heads``
    heads (``num_heads_upsample`` in the output blocks, -1 meaning ``num_heads``).
    """
    widths = [int(m * f["num_channels"]) for m in f["channel_mult"]]
    levels = _attention_levels(f)
    # (channels, is-output-block) of every attention layer; the middle block always has one.
    layers = [(w, False) for w, a in zip(widths, levels) if a]
    layers += [(w, True) for w, a in zip(widths, levels) if a]
    layers.append((widths[-1], False))
    if f["num_head_channels"] != -1:
        d = f["num_head_channels"]
        if d <= 0:
            raise ValueError(f"ADM flag 'num_head_channels'={d} must be positive or -1")
        bad = sorted({c for c, _ in layers if c % d})
        if bad:
            raise ValueError(
                f"ADM flag 'num_head_channels'={d} does not divide attention widths {bad}"
            )
        return d
    heads_up = f["num_heads_upsample"] if f["num_heads_upsample"] != -1 else f["num_heads"]
    if f["num_heads"] <= 0 or heads_up <= 0:
        raise ValueError("ADM flags 'num_heads'/'num_heads_upsample' must be positive")
    dims = set()
    for c, up in layers:
        h = heads_up if up else f["num_heads"]
        if c % h:
            raise ValueError(f"ADM flag 'num_heads'={h} does not divide attention width {c}")
        dims.add(c // h)
    if len(dims) != 1:
        raise ValueError(
            f"ADM flags 'num_heads'={f['num_heads']}, 'num_heads_upsample'={f['num_heads_upsample']} "
            f"with num_head_channels=-1 give head widths {sorted(dims)} across levels; diffusers' "
            "UNet2DModel has one attention_head_dim (use flags with num_head_channels)"
        )
    return dims.pop()


def adm_unet_config(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers ``UNet2DModel`` config equivalent to a guided-diffusion ``UNetModel``.

    Levels with attention become ``AttnDownBlock2D``/``AttnUpBlock2D``, the others
    ``ResnetDownsampleBlock2D``/``ResnetUpsampleBlock2D``; ``downsample_type``/``upsample_type``
    ``"resnet"`` make every up/downsampler a ResBlock (``resblock_updown``). Each down block has
    ``num_res_blocks`` ResBlocks, each up block ``num_res_blocks + 1`` (diffusers adds the one).
    """
    f = normalize_adm_flags(flags)
    widths = [int(m * f["num_channels"]) for m in f["channel_mult"]]
    levels = _attention_levels(f)
    down = ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in levels]
    up = ["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(levels)]
    return {
        "sample_size": f["image_size"],
        "in_channels": 3,
        "out_channels": 6 if f["learn_sigma"] else 3,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": 4 * f["num_channels"],  # time_embed_dim = model_channels * 4
        "flip_sin_to_cos": True,  # timestep_embedding returns [cos, sin]
        "freq_shift": 0,  # frequencies exp(-ln(max_period) * i / half), no shift
        "down_block_types": tuple(down),
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": tuple(up),
        "block_out_channels": tuple(widths),
        "layers_per_block": f["num_res_blocks"],
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "resnet",
        "upsample_type": "resnet",
        "dropout": f["dropout"],
        "act_fn": "silu",
        "attention_head_dim": _attention_head_dim(f),
        "norm_num_groups": _GROUPNORM_GROUPS,
        "attn_norm_num_groups": _GROUPNORM_GROUPS,
        "norm_eps": _GROUPNORM_EPS,
        "resnet_time_scale_shift": "scale_shift",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": None,
    }


def adm_scheduler_config(flags: Mapping[str, Any]) -> dict[str, Any]:
    """``DDPMScheduler`` config of the ADM training diffusion (``create_gaussian_diffusion``).

    * ``linear``: guided-diffusion scales Ho et al.'s betas to the step count,
      ``beta = linspace(1e-4 * 1000/T, 0.02 * 1000/T, T)``.
    * ``cosine``: Nichol & Dhariwal's ``alpha_bar(t) = cos((t/T + 0.008)/1.008 * pi/2)^2`` with
      betas capped at 0.999 = diffusers' ``"squaredcos_cap_v2"``.
    * ``learn_sigma`` -> ``variance_type="learned_range"`` (the 2nd output half interpolates
      between log beta_t and log of the posterior variance); otherwise guided-diffusion's
      default ``FIXED_LARGE`` -> ``"fixed_large"``.
    * ``predict_xstart`` -> ``prediction_type="sample"``, else ``"epsilon"``.
    """
    f = normalize_adm_flags(flags)
    steps = f["diffusion_steps"]
    scale = 1000 / steps
    return {
        "num_train_timesteps": steps,
        "beta_start": scale * 0.0001,
        "beta_end": scale * 0.02,
        "beta_schedule": "linear" if f["noise_schedule"] == "linear" else "squaredcos_cap_v2",
        "variance_type": "learned_range" if f["learn_sigma"] else "fixed_large",
        "prediction_type": "sample" if f["predict_xstart"] else "epsilon",
        "clip_sample": True,
        "clip_sample_range": 1.0,
    }


class _Source:
    """A read-only view of the ADM state dict that records which keys were consumed."""

    def __init__(self, state_dict: Mapping[str, Tensor], dtype: torch.dtype):
        self.sd = state_dict
        self.dtype = dtype
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.shape_errors: list[str] = []
        self.non_finite: list[str] = []

    def take(self, key: str) -> Tensor | None:
        if key in self.used:  # a mapping bug, never the user's fault
            raise RuntimeError(f"internal error: ADM key {key!r} mapped twice")
        if key not in self.sd:
            self.missing.append(key)
            return None
        self.used.add(key)
        t = self.sd[key]
        if not isinstance(t, Tensor):
            raise ValueError(f"ADM state dict entry {key!r} is a {type(t).__name__}, not a tensor")
        out = t.to(dtype=self.dtype)
        if not t.is_meta and t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n:
                self.non_finite.append(f"{key} ({n} of {t.numel()} values NaN/inf)")
            elif not bool(torch.isfinite(out).all()):
                self.non_finite.append(f"{key} (overflows {self.dtype}: max |w| = {float(t.abs().max()):.3g})")
        return out


def _plan(f: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Module pairs ``(kind, adm_prefix, diffusers_prefix)`` in network order.

    ``kind`` is ``"resblock"``, ``"attention"`` or ``"layer"`` (a plain conv/linear/norm with
    ``weight`` and ``bias``). Mirrors the block bookkeeping of guided-diffusion's ``UNetModel``:
    ``input_blocks[0]`` is the stem conv; then per level ``num_res_blocks`` x (ResBlock
    [+ AttentionBlock]) and, except at the last level, one downsampling ResBlock; the output
    blocks walk the levels in reverse with ``num_res_blocks + 1`` x (ResBlock [+ AttentionBlock])
    and an upsampling ResBlock appended to the last one of every level but the first.
    """
    n_levels = len(f["channel_mult"])
    nrb = f["num_res_blocks"]
    attn = _attention_levels(f)
    plan = [
        ("layer", "time_embed.0", "time_embedding.linear_1"),
        ("layer", "time_embed.2", "time_embedding.linear_2"),
        ("layer", "input_blocks.0.0", "conv_in"),
    ]
    idx = 1
    for level in range(n_levels):
        for j in range(nrb):
            plan.append(("resblock", f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}"))
            if attn[level]:
                plan.append(
                    ("attention", f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}")
                )
            idx += 1
        if level != n_levels - 1:
            plan.append(
                ("resblock", f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0")
            )
            idx += 1
    plan += [
        ("resblock", "middle_block.0", "mid_block.resnets.0"),
        ("attention", "middle_block.1", "mid_block.attentions.0"),
        ("resblock", "middle_block.2", "mid_block.resnets.1"),
    ]
    idx = 0
    for i in range(n_levels):
        level = n_levels - 1 - i
        for j in range(nrb + 1):
            plan.append(("resblock", f"output_blocks.{idx}.0", f"up_blocks.{i}.resnets.{j}"))
            sub = 1
            if attn[level]:
                plan.append(
                    ("attention", f"output_blocks.{idx}.1", f"up_blocks.{i}.attentions.{j}")
                )
                sub = 2
            if level != 0 and j == nrb:
                plan.append(
                    ("resblock", f"output_blocks.{idx}.{sub}", f"up_blocks.{i}.upsamplers.0")
                )
            idx += 1
    plan += [("layer", "out.0", "conv_norm_out"), ("layer", "out.2", "conv_out")]
    return plan


# ResBlock sub-layers: guided-diffusion nn.Sequential indices -> ResnetBlock2D attributes.
_RESBLOCK_LAYERS = (
    ("in_layers.0", "norm1"),  # GroupNorm32
    ("in_layers.2", "conv1"),  # after SiLU
    ("emb_layers.1", "time_emb_proj"),  # after SiLU; 2*C outputs (scale, shift)
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),  # after SiLU, Dropout
)


def _split_qkv(w: Tensor, key: str, channels: int, heads: int, legacy: bool) -> tuple[Tensor, ...]:
    """Split the ``qkv`` Conv1d weight ``(3C, C, 1)`` or bias ``(3C,)`` into q, k, v.

    Legacy order (``QKVAttentionLegacy``): output channel ``o = (head*3 + which)*d + i``;
    new order (``QKVAttention``): ``o = (which*heads + head)*d + i``. diffusers' ``to_q`` rows are
    ``head*d + i`` (``Attention.head_to_batch_dim`` splits the last dim head-major).
    """
    d = channels // heads
    is_weight = w.dim() == 3
    expected = (3 * channels, channels, 1) if is_weight else (3 * channels,)
    if tuple(w.shape) != expected:
        raise ValueError(f"ADM tensor {key!r} has shape {tuple(w.shape)}, expected {expected}")
    rest = (channels,) if is_weight else ()
    w = w.reshape(3 * channels, *rest)
    if legacy:
        w = w.reshape(heads, 3, d, *rest)
        parts = [w[:, which] for which in range(3)]
    else:
        w = w.reshape(3, heads, d, *rest)
        parts = [w[which] for which in range(3)]
    # clone: own storage per tensor (safetensors refuses tensors that share memory)
    return tuple(
        p.reshape(channels, *rest).clone(memory_format=torch.contiguous_format) for p in parts
    )


def _conv1d_to_linear(w: Tensor, key: str) -> Tensor:
    """A 1x1 Conv1d weight ``(out, in, 1)`` is the Linear weight ``(out, in)``."""
    if w.dim() != 3 or w.shape[-1] != 1:
        raise ValueError(f"ADM tensor {key!r} has shape {tuple(w.shape)}, expected (out, in, 1)")
    return w[..., 0]


def _convert_tensors(
    src: _Source,
    plan: list[tuple[str, str, str]],
    model_keys: set[str],
    head_dim: int,
    legacy: bool,
    model_shapes: Mapping[str, torch.Size],
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}

    def put(dst: str, t: Tensor | None) -> None:
        if t is not None:
            out[dst] = t

    for kind, a, d in plan:
        if kind == "layer":
            for p in ("weight", "bias"):
                put(f"{d}.{p}", src.take(f"{a}.{p}"))
        elif kind == "resblock":
            for sa, sd in _RESBLOCK_LAYERS:
                for p in ("weight", "bias"):
                    put(f"{d}.{sd}.{p}", src.take(f"{a}.{sa}.{p}"))
            # a 1x1 skip conv exists iff in_channels != out_channels (both libraries)
            if f"{d}.conv_shortcut.weight" in model_keys:
                for p in ("weight", "bias"):
                    put(f"{d}.conv_shortcut.{p}", src.take(f"{a}.skip_connection.{p}"))
        elif kind == "attention":
            channels = model_shapes[f"{d}.to_q.weight"][0]
            heads = channels // head_dim
            for p in ("weight", "bias"):
                put(f"{d}.group_norm.{p}", src.take(f"{a}.norm.{p}"))
                qkv = src.take(f"{a}.qkv.{p}")
                if qkv is not None:
                    try:
                        q, k, v = _split_qkv(qkv, f"{a}.qkv.{p}", channels, heads, legacy)
                    except ValueError as exc:  # reported after the key check
                        src.shape_errors.append(str(exc))
                        continue
                    out[f"{d}.to_q.{p}"], out[f"{d}.to_k.{p}"], out[f"{d}.to_v.{p}"] = q, k, v
            w = src.take(f"{a}.proj_out.weight")
            if w is not None:
                try:
                    out[f"{d}.to_out.0.weight"] = _conv1d_to_linear(w, f"{a}.proj_out.weight")
                except ValueError as exc:
                    src.shape_errors.append(str(exc))
            put(f"{d}.to_out.0.bias", src.take(f"{a}.proj_out.bias"))
        else:  # pragma: no cover
            raise AssertionError(kind)
    return out


def _listing(keys: Sequence[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def convert_adm_state_dict(
    state_dict: Mapping[str, Tensor],
    flags: Mapping[str, Any] = ADM_256_UNCOND,
    *,
    dtype: torch.dtype = torch.float32,
):
    """Build the diffusers ``UNet2DModel`` equivalent to a guided-diffusion ``UNetModel``.

    Every tensor of ``state_dict`` (``time_embed``, ``input_blocks``, ``middle_block``,
    ``output_blocks``, ``out``) is consumed exactly once; keys the flags do not explain, keys
    the flags require but the dict lacks, and wrong shapes raise ``ValueError`` listing them.
    The model is built on the ``meta`` device and the converted tensors are assigned
    (``load_state_dict(strict=True, assign=True)``): no random initialisation, no second copy.
    Consequently the returned parameters share memory with ``state_dict``'s tensors wherever no
    reshaping or dtype cast was needed. Meta tensors in, meta model out (a free shape check).

    Every weight must be finite: a tensor holding NaN or ±inf (a corrupt file), or one that
    overflows ``dtype`` (float16 ends at 65504), is a ``ValueError`` naming the tensor.
    ``dtype`` must be a floating-point dtype.

    Returns the model in ``eval()`` mode, like ``UNet2DModel.from_pretrained``.
    """
    from diffusers import UNet2DModel

    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
    _check_dtype(dtype)
    f = normalize_adm_flags(flags)
    config = adm_unet_config(f)
    with torch.device("meta"):
        model = UNet2DModel(**config)
    model_shapes = {k: v.shape for k, v in model.state_dict().items()}
    model_keys = set(model_shapes)

    src = _Source(state_dict, dtype)
    converted = _convert_tensors(
        src,
        _plan(f),
        model_keys,
        config["attention_head_dim"],
        legacy=not f["use_new_attention_order"],
        model_shapes=model_shapes,
    )
    leftover = sorted(set(state_dict) - src.used)
    if src.missing or leftover:
        parts = []
        if src.missing:
            parts.append(
                f"missing ADM keys required by these flags ({len(src.missing)}): {_listing(src.missing)}"
            )
        if leftover:
            parts.append(
                f"unexpected ADM keys not explained by these flags ({len(leftover)}): {_listing(leftover)}"
            )
        raise ValueError("ADM state dict does not match the flags: " + "; ".join(parts))
    bad = src.shape_errors + [
        f"{k} (diffusers): got {tuple(t.shape)}, expected {tuple(model_shapes[k])}"
        for k, t in converted.items()
        if k in model_shapes and t.shape != model_shapes[k]
    ]
    if bad:
        raise ValueError(
            f"ADM tensors have wrong shapes for these flags ({len(bad)}): {_listing(bad)}"
        )
    if src.non_finite:
        overflow = any("overflows" in b for b in src.non_finite)
        raise ValueError(
            f"ADM checkpoint has non-finite weights in {len(src.non_finite)} tensor(s): "
            f"{_listing(src.non_finite)}. "
            + ("Convert to float32 or bfloat16 instead." if overflow else
               "The file is corrupt: download it again (data_scripts/download_adm_prior.py).")
        )
    unmapped = sorted(model_keys - set(converted))
    extra = sorted(set(converted) - model_keys)
    if unmapped or extra:  # a mapping bug, never the user's fault
        raise RuntimeError(
            f"internal error: unmapped diffusers keys {unmapped}, unknown targets {extra}"
        )

    model.load_state_dict(converted, strict=True, assign=True)
    all_meta = all(t.is_meta for t in converted.values())
    leftovers_on_meta = [
        n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta
    ]
    if leftovers_on_meta and not all_meta:  # pragma: no cover - guarded by the checks above
        raise RuntimeError(
            f"internal error: tensors left on the meta device: {leftovers_on_meta[:5]}"
        )
    return model.eval()


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating-point torch dtype (float32, bfloat16, float16), got {dtype!r}"
        )



def _read_checkpoint(path: str | Path) -> Mapping[str, Tensor]:
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder, not a guided-diffusion .pt file (a converted diffusers folder "
            "loads with DiffusionPrior.from_pretrained)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"ADM checkpoint not found: {path}. Download it with "
            f"`python data_scripts/download_adm_prior.py` (source: {ADM_256_UNCOND_URL})"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a truncated or foreign file: say what it is
        from .pt_files import describe_unreadable

        raise ValueError(
            f"{path} {describe_unreadable(path, exc)}; convert-adm reads the guided-diffusion prior "
            f"256x256_diffusion_uncond.pt (`python data_scripts/download_adm_prior.py`)"
        ) from exc
    if isinstance(obj, Mapping) and "format" in obj and "model" in obj and "config" in obj:
        raise ValueError(
            f"{path} is a diffloss training checkpoint (a run's last.pt or best.pt: a restorer, not a "
            "prior); convert-adm reads the guided-diffusion prior 256x256_diffusion_uncond.pt "
            "(`python data_scripts/download_adm_prior.py`)"
        )
    # a bare state dict (the released files) or a dict holding one under "state_dict"
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise ValueError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors); "
            f"got {type(obj).__name__}"
        )
    return obj


def load_adm_checkpoint(
    path: str | Path,
    flags: Mapping[str, Any] = ADM_256_UNCOND,
    *,
    dtype: torch.dtype = torch.float32,
):
    """Load a guided-diffusion ``.pt`` file (``torch.load(weights_only=True)``) as a ``UNet2DModel``.

    ``flags`` are the guided-diffusion flags the checkpoint was trained with (default: the DiffLoss
    prior ``256x256_diffusion_uncond.pt``). Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for a file that is not a state dict or does not match the flags.
    """
    return convert_adm_state_dict(_read_checkpoint(path), flags, dtype=dtype)


def convert_adm_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    flags: Mapping[str, Any] = ADM_256_UNCOND,
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Convert ``checkpoint`` into a diffusers folder ``out_dir`` and return its path.

    The folder holds ``config.json`` + ``diffusion_pytorch_model.safetensors``
    (``UNet2DModel.save_pretrained``), ``scheduler_config.json`` (a ``DDPMScheduler`` config,
    :func:`adm_scheduler_config`) and ``adm_flags.json`` (the flags used and the source file's
    name, size and SHA-256, for provenance).
    ``UNet2DModel.from_pretrained(out_dir)`` and ``DDPMScheduler.from_pretrained(out_dir)`` read it.

    Checked before the (slow) conversion: ``out_dir`` is a new folder, an empty one, or a
    previous conversion (only the files a conversion writes, ``adm_flags.json`` among them;
    replaced) -- an existing file there is a ``NotADirectoryError``, any other folder (a
    training run, a foreign model, notes of the user's) a ``FileExistsError``. The folder is written
    under a temporary name next to it and renamed into place at the end, so a failed write (disk
    full: an ``OSError`` naming the folder, no traceback text) leaves nothing half-written.
    """
    from diffusers import DDPMScheduler

    f = normalize_adm_flags(flags)
    _check_dtype(dtype)
    out = Path(out_dir).expanduser().absolute()
    _check_output_dir(out)
    unet = load_adm_checkpoint(checkpoint, f, dtype=dtype)
    source = Path(checkpoint).expanduser()
    provenance = {k: (list(v) if isinstance(v, tuple) else v) for k, v in f.items()}
    provenance.update(source_checkpoint=source.name, source_bytes=source.stat().st_size,
                      source_sha256=_sha256(source))
    nbytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        from .atomic import new_folder_mode

        os.chmod(tmp, new_folder_mode())  # mkdtemp's 0700 → the mode a new folder gets from the umask
        unet.save_pretrained(tmp, safe_serialization=True)
        DDPMScheduler(**adm_scheduler_config(f)).save_config(tmp)
        (tmp / "adm_flags.json").write_text(json.dumps(provenance, indent=2) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        reason = exc.strerror or first_line(exc, limit=200)
        err = OSError(
            f"could not write the converted prior to {out}: {reason}. Nothing was written there; "
            f"it needs about {nbytes / 2**30:.2f} GiB free in {out.parent}. Free some space or "
            "choose another folder."
        )
        err.errno = exc.errno
        raise err from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_output_dir(out: Path) -> None:
    """Refuse an output that is a file, lies under a file, or is a folder of unrelated files."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"output {out} is an existing file, not a folder: pass a folder path for the diffusers "
            "prior (it is created), or move the file away"
        )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"cannot create the output folder {out}: {parent} is a file")
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        if names and not _is_conversion(out, names):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise FileExistsError(
                f"output folder {out} holds files that a conversion does not write ({shown}); "
                "the conversion replaces its whole folder, so nothing was changed. Pass a new or "
                "empty folder, or one that holds only a previous conversion "
                f"({', '.join(CONVERSION_FILES)})"
            )


#: What :func:`convert_adm_checkpoint` writes; ``adm_flags.json`` marks a folder as its output.
CONVERSION_FILES: tuple[str, ...] = ("config.json", "diffusion_pytorch_model.safetensors",
                                     "scheduler_config.json", "adm_flags.json")


def _is_conversion(out: Path, names: list[str]) -> bool:
    """Whether ``out`` (whose entries are ``names``) is a previous conversion, which may be
    replaced: only the files a conversion writes, its marker ``adm_flags.json`` among them, and
    a ``config.json`` that describes a ``UNet2DModel``. A training run folder, a foreign model
    or a folder with notes of the user's own is not."""
    if "adm_flags.json" not in names or not set(names) <= set(CONVERSION_FILES):
        return False
    if not all((out / n).is_file() and not (out / n).is_symlink() for n in names):
        return False
    if "config.json" not in names:
        return True  # a conversion whose config.json was deleted
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "UNet2DModel"


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_adm_flags(path: str | Path) -> dict[str, Any]:
    """Flags from a JSON file: a flat dict of flags, or a dict holding one under ``"flags"`` or
    ``"config"`` (the layout of this project's test fixtures).

    A missing file is a ``FileNotFoundError``, a folder an ``IsADirectoryError``, a file that is
    not a JSON object a ``ValueError`` with the line and column; all name the file."""
    path = Path(path).expanduser()
    example = '{"image_size": 256, "num_channels": 256, "learn_sigma": true, ...}'
    if path.is_dir():
        raise IsADirectoryError(f"flags file {path} is a folder; pass a JSON file like {example}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"flags file not found: {path}. Pass a JSON file of guided-diffusion flags like "
            f"{example}, or no flags for 256x256_diffusion_uncond.pt's"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"flags file {path} is not a text (JSON) file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"flags file {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}); expected an object like {example}"
        ) from None
    if isinstance(data, dict):
        for key in ("flags", "config"):
            if isinstance(data.get(key), dict):
                return data[key]
        return data
    raise ValueError(f"{path}: expected a JSON object of guided-diffusion flags")


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _safetensors_shapes(folder: Path) -> list[tuple[int, ...]]:
    from safetensors import safe_open

    shapes = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            shapes += [tuple(fh.get_slice(k).get_shape()) for k in fh.keys()]
    return shapes
