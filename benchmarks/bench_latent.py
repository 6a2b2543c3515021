"""What DiffLoss with a *latent* prior (Stable-Diffusion-1.5-shaped) adds to a restorer's step,
next to the paper's pixel prior (ADM-256-shaped).

Both priors are built from their published configurations with random weights (nothing is
downloaded; speed and memory do not depend on the weights):

* SD 1.5: ``UNet2DConditionModel`` (860 M parameters; 4 levels 320/640/1280/1280, cross-attention
  to a 1×77×768 "empty prompt") on the latents of its ``AutoencoderKL`` (84 M, 8× downsampling,
  ``scaling_factor`` 0.18215), scaled-linear schedule;
* ADM 256×256 uncond (552 M parameters, pixel space, :mod:`diffloss.adm`).

Per training step of the restorer (forward, loss, backward, Adam), median wall time (and peak
CUDA memory on a GPU) of

  (a) L1 only;
  (b) L1 + DiffLoss, latent prior (VAE encoder of both images, gradients through it for the
      restored one; U-Net on the latents);
  (c) as (b) with diffusers' VAE memory savings: slicing and gradient checkpointing of the encoder;
  (d) L1 + DiffLoss, ADM pixel prior (the image at ``--adm-size``, cropped by DiffLoss).

The variants alternate inside each repeat. ``--compile`` also compiles the priors' U-Nets
(``DiffusionPrior.compile_unet``). On a CPU use a small ``--size`` (default 128) "for the record";
on a GPU the paper's sizes: ``--size 512 --adm-size 256`` (bf16 autocast, as the trainer runs).

    python benchmarks/bench_latent.py --append                     # CPU, 128², batch 1
    python benchmarks/bench_latent.py --size 512 --batch 4 --append  # GPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name  # noqa: E402
from bench_diffloss import RESULTS, build_restorer, restorer_step, time_variants  # noqa: E402

from diffloss.loss import DiffLoss  # noqa: E402
from diffloss.priors import DiffusionPrior  # noqa: E402

#: Stable Diffusion 1.5's unet/config.json and vae/config.json (the fields that shape the networks).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      num_train_timesteps=1000, prediction_type="epsilon")


def sd15_prior(device: torch.device) -> DiffusionPrior:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
    hidden = torch.randn(1, 77, 768)
    return DiffusionPrior.from_components(unet, DDPMScheduler(**SD15_SCHEDULER), vae=vae,
                                          encoder_hidden_states=hidden).to(device)


def adm_prior(device: torch.device) -> DiffusionPrior:
    from diffusers import UNet2DModel

    from diffloss import adm

    torch.manual_seed(0)
    return DiffusionPrior(UNet2DModel(**adm.adm_unet_config(adm.ADM_256_UNCOND))).to(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128, help="image side for the latent prior (and the restorer)")
    ap.add_argument("--adm-size", type=int, default=None, help="side shown to ADM (default: --size, ≤ 256)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--restorer", default="msbdn-small", choices=["msbdn-small", "msbdn"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="torch.compile the priors' U-Nets")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="DiffLoss shows the prior")  # small sizes on the CPU
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    adm_size = args.adm_size or min(args.size, 256)
    sd, adm = sd15_prior(device), adm_prior(device)
    if args.compile:
        sd.compile_unet()
        adm.compile_unet()
    net = build_restorer(args.restorer, device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    y = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    latent = DiffLoss(sd, prior_size=args.size, check_values=False)
    pixel = DiffLoss(adm, prior_size=adm_size, check_values=False)

    def with_savings(on: bool):
        def step() -> None:
            sd.enable_vae_memory_savings(slicing=on, checkpointing=on)
            restorer_step(net, opt, y, x, lambda out: latent(out, x, generator=g).loss)
        return step

    variants = {
        "(a) L1 only": lambda: restorer_step(net, opt, y, x),
        "(b) + DiffLoss, SD-1.5 latent": with_savings(False),
        "(c) + DiffLoss, SD-1.5 latent, VAE slicing + checkpointing": with_savings(True),
        f"(d) + DiffLoss, ADM-256 pixel at {adm_size}²": lambda: restorer_step(
            net, opt, y, x, lambda out: pixel(out, x, generator=g).loss),
    }
    times, peak, first = time_variants(variants, device, args.warmup, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["(a) L1 only"]
    name = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    lines = [
        f"\n### Latent vs pixel prior: DiffLoss's added cost ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n",
        f"Machine: {name}; torch {torch.__version__}, Python {platform.python_version()}; "
        f"{'bf16 autocast' if cuda else 'float32'}{', compiled U-Nets' if args.compile else ', eager'}. "
        f"Restorer {args.restorer}, batch {args.batch}, {args.size}² images; random weights "
        f"(SD 1.5 U-Net {sum(p.numel() for p in sd.unet.parameters()) / 1e6:.0f} M + VAE "
        f"{sum(p.numel() for p in sd.vae.parameters()) / 1e6:.0f} M; ADM {adm.num_parameters() / 1e6:.0f} M). "
        f"Median of {args.repeats} alternating repeats after {args.warmup} warm-up step(s). "
        f"Command: `python benchmarks/bench_latent.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n",
        "| variant | s/step | added over (a) | × (a) | first call, s |" + (" peak CUDA GiB |" if cuda else ""),
        "|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for k in variants:
        row = (f"| {k} | {med[k]:.3f} | {med[k] - base:+.3f} | {med[k] / base:.1f} | {first[k]:.2f} |"
               + (f" {peak[k]:.2f} |" if cuda else ""))
        lines.append(row)
    if not cuda:
        lines.append("\nPeak memory is measured on CUDA only (torch's allocator); none on this CPU run.")
    text = "\n".join(lines)
    print(text)
    if args.append:
        with RESULTS.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
