"""The tiny prior that ships in ``diffloss/assets/tiny_prior``: its architecture and its training.

A DDPM (Ho et al. 2020, ε-prediction, linear schedule, T = 1000) of 1.43 M parameters (1,429,227 at ``width=24``),
trained on crops of the bundled images in minutes on a CPU. Run
``diffloss train-tiny-prior --out DIR`` to (re)train it.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor

from ..schedule import NoiseSchedule
from .checks import PROVENANCE, SCHEDULER_CONFIG, _write_json
from .wrapper import DiffusionPrior


def tiny_unet_config(sample_size: int = 32, width: int = 24) -> dict[str, Any]:
    """The tiny prior's architecture: 3 levels (width, 2·width, 4·width) of ResNet blocks and
    self-attention in the middle block only (cheap on a CPU); 1,429,227 parameters at ``width=24``."""
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


def train_tiny(out: str | os.PathLike, steps: int = 1200, batch_size: int = 16, size: int = 32,
               width: int = 24, lr: float = 2e-3, seed: int = 0, ema_decay: float = 0.995,
               n_eval: int = 96, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train the tiny prior as a DDPM (ε-prediction, linear schedule, T = 1000) on random crops
    of the restorers' training region of the bundled training photos
    (:func:`~diffloss.data.samples.prior_training_images`: no test or guard pixel), and write
    it (EMA weights) with provenance. The defaults make the shipped prior.

    ``command`` is recorded in provenance.json (the CLI passes its command line); by default the
    equivalent ``train_tiny(...)`` call is recorded."""
    from tqdm.auto import tqdm

    from ..data import sample_images, samples
    from ..data.samples import TRAIN_REGION, train_columns

    _check_prior_output(Path(out))  # before training, not after: no work is lost
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    schedule = NoiseSchedule.linear()
    unet = UNet2DModel(**tiny_unet_config(size, width))
    ema = UNet2DModel(**tiny_unet_config(size, width))
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    train_imgs = samples.prior_training_images()  # the restorers' training region only
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
        "train_region": {
            "rule": f"columns [0, floor({TRAIN_REGION[1]}*width)) of each training photo at full size "
                    "(the restorers' training region; never the guard gap, the in-distribution "
                    "test band or the held-out scenes), cut before any resizing",
            "columns": {s.name: [0, train_columns(s.image.shape[-1])[1], int(s.image.shape[-1])]
                        for s in sample_images("train")}},
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

