"""What DiffLoss adds to one training step of a restorer, against a naive implementation and a floor.

Per training step of a restorer (forward, loss, backward, Adam step), median wall time (and peak
CUDA memory) of

  (a) fidelity only (L1);
  (b) L1 + ``diffloss.DiffLoss`` (frozen prior; target branch without autograd; one U-Net call per
      branch; channels-last; bf16 autocast on CUDA);
  (c) L1 + a naive DiffLoss: the prior's parameters left trainable (``requires_grad=True``, as in
      the authors' code but without its ``no_grad``), both branches recorded by autograd, two
      separate U-Net calls, float32, PyTorch's default memory layout (its own copy of the prior);
  (d) the floor: one prior forward+backward with gradient to the input only, plus one prior forward
      without autograd, same batch, size and layout as the prior sees in (b).

Ratios: (b−a)/(d) — the overhead of DiffLoss against the least any implementation must do — and
(b−a)/(c−a) — against the naive one. The four variants alternate inside each repeat so that load
from other processes affects them alike. The table is printed and, with ``--append``, appended with
machine information to ``benchmarks/RESULTS.md``.

    python benchmarks/bench_diffloss.py --append                       # CPU: tiny prior, MSBDN.small
    python benchmarks/bench_diffloss.py --prior adm-random --restorer msbdn --batch 4 --size 256 --append
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name as _cpu_name  # noqa: E402

from diffloss.loss import DiffLoss  # noqa: E402
from diffloss.models.msbdn import MSBDN  # noqa: E402
from diffloss.prior import DiffusionPrior, tiny_unet_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def build_prior(kind: str, device: torch.device) -> tuple[DiffusionPrior, str]:
    from diffusers import UNet2DModel

    if kind == "tiny":
        prior, name = DiffusionPrior.tiny(), "shipped tiny prior"
    elif kind == "tiny-random":
        torch.manual_seed(0)
        prior, name = DiffusionPrior(UNet2DModel(**tiny_unet_config())), "tiny architecture, random weights"
    elif kind == "adm-random":
        from diffloss import adm

        torch.manual_seed(0)
        unet = UNet2DModel(**adm.adm_unet_config(adm.ADM_256_UNCOND))
        prior, name = DiffusionPrior(unet), "ADM 256x256 uncond architecture (random weights)"
    else:
        raise SystemExit(f"unknown --prior {kind!r}")
    prior.to(device)
    n = prior.num_parameters()
    return prior, f"{name}, {n / 1e6:.1f} M params, native {prior.sample_size}²"


def build_restorer(kind: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MSBDN.small() if kind == "msbdn-small" else MSBDN()
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_diffloss(prior: DiffusionPrior, z: torch.Tensor, x: torch.Tensor, lambda_sem: float,
                   gen: torch.Generator, size: int) -> torch.Tensor:
    """Two U-Net calls, both recorded by autograd, trainable prior parameters, float32."""
    loss = DiffLoss(prior, prior_size=size, autocast=False, channels_last=False)
    z, x = loss.fit_to_prior(z, x, gen)
    b = z.shape[0]
    t = torch.randint(0, prior.schedule.T, (b,), generator=gen).to(z.device)
    noise = torch.randn(z.shape, generator=gen).to(z.device)
    zt = prior.schedule.q_sample(z * 2 - 1, t, noise)
    xt = prior.schedule.q_sample(x * 2 - 1, t, noise)
    oz, ox = prior(zt, t), prior(xt, t)
    return F.mse_loss(oz.eps, ox.eps) + lambda_sem * F.mse_loss(oz.hspace, ox.hspace)


def restorer_step(net: torch.nn.Module, opt: torch.optim.Optimizer, y: torch.Tensor, x: torch.Tensor,
                  extra=None, gamma: float = 1e-3) -> None:
    """One training step of the restorer: L1 (+ γ·``extra(out)``), backward, Adam."""
    out = net(y).clamp(0, 1)
    loss = F.l1_loss(out, x)
    if extra is not None:
        loss = loss + gamma * extra(out)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def prior_floor(prior: DiffusionPrior, xp: torch.Tensor, tp: torch.Tensor, bf16: bool,
                compiled: bool = False) -> None:
    """The floor (d): one prior forward without autograd, one forward+backward to the input."""
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and xp.device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    with ctx:
        with torch.no_grad():
            prior(xp, tp, compiled=compiled)
        inp = xp.clone().requires_grad_(True)
        o = prior(inp, tp, compiled=compiled)
        (o.eps.float().square().mean() + o.hspace.float().square().mean()).backward()


def time_variants(variants: dict, device: torch.device, warmup: int, repeats: int
                  ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """Per variant: ``warmup`` calls (the first one timed: compilation shows there), one more
    for its peak CUDA memory alone, then ``repeats`` rounds with the variants alternating so
    that load from other processes affects them alike. Returns (times, peak GiB, first call)."""
    first: dict[str, float] = {}
    peak: dict[str, float] = {}
    for k, fn in variants.items():
        for i in range(warmup):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i == 0:
                first[k] = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            sync(device)
            peak[k] = torch.cuda.max_memory_allocated(device) / 2**30
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times, peak, first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default="tiny", choices=["tiny", "tiny-random", "adm-random"])
    ap.add_argument("--restorer", default="msbdn-small", choices=["msbdn-small", "msbdn"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="restorer crop side")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-bf16", action="store_true", help="keep (b) and (d) in float32 on CUDA")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    prior, prior_name = build_prior(args.prior, device)
    size = min(prior.sample_size, args.size)
    net = build_restorer(args.restorer, device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    # as the trainer builds it: no per-call value checks (they read from the device)
    ours = DiffLoss(prior, prior_size=size, autocast=not args.no_bf16, check_values=False)
    gamma, lam = 1e-3, 1e-3
    g = torch.Generator().manual_seed(0)
    y = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    cuda = device.type == "cuda"

    def variant_a() -> None:
        restorer_step(net, opt, y, x)

    def variant_b() -> None:
        restorer_step(net, opt, y, x, lambda out: ours(out, x, generator=g).loss, gamma)

    # The naive implementation's own copy of the prior, in PyTorch's default memory layout
    # (DiffLoss switches the shared one to channels-last).
    naive = DiffusionPrior(copy.deepcopy(prior.unet).to(memory_format=torch.contiguous_format),
                           prior.schedule)

    def variant_c() -> None:
        naive.unet.requires_grad_(True)
        try:
            restorer_step(net, opt, y, x, lambda out: naive_diffloss(naive, out, x, lam, g, size), gamma)
        finally:
            naive.unet.requires_grad_(False)
            naive.unet.zero_grad(set_to_none=True)

    # the floor gets its input in the layout DiffLoss hands to the prior (channels-last)
    xp = (torch.rand(args.batch, 3, size, size, generator=g).to(device) * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    tp = torch.randint(0, prior.schedule.T, (args.batch,), generator=g).to(device)

    def variant_d() -> None:
        prior_floor(prior, xp, tp, bf16=not args.no_bf16)

    variants = {"a": variant_a, "b": variant_b, "c": variant_c, "d": variant_d}
    times, peak, _ = time_variants(variants, device, args.warmup, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    r_floor = (med["b"] - med["a"]) / med["d"]
    r_naive = (med["b"] - med["a"]) / (med["c"] - med["a"])

    labels = {
        "a": "(a) L1 only",
        "b": "(b) L1 + DiffLoss (this package)",
        "c": "(c) L1 + naive DiffLoss (trainable prior, 2 graphs, fp32)",
        "d": "(d) floor: prior fwd+bwd to input + prior fwd",
    }
    if cpu := (not cuda):
        dev_name = f"cpu ({_cpu_name()}, {torch.get_num_threads()} thread(s)), load average {os.getloadavg()[0]:.2f}"
    else:
        dev_name = f"cuda ({torch.cuda.get_device_name(device)}), prior in {'float32' if args.no_bf16 else 'bf16 autocast'} for (b), (d)"
    lines = [
        f"### DiffLoss step cost (bench_diffloss.py) — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"device: {dev_name}; torch {torch.__version__}; {platform.platform()}; restorer {args.restorer} "
        f"on {args.batch}×3×{args.size}²; prior: {prior_name}; the prior sees {size}² crops; "
        f"median of {args.repeats} repeats after {args.warmup} warm-up, variants alternating.",
        "",
        "| variant | median s/step | min–max (s) |" + ("" if cpu else " peak memory (GiB) |"),
        "|---|---|---|" + ("" if cpu else "---|"),
    ]
    for k in variants:
        row = f"| {labels[k]} | {med[k]:.4f} | {min(times[k]):.4f}–{max(times[k]):.4f} |"
        lines.append(row + ("" if cpu else f" {peak[k]:.2f} |"))
    lines += [
        "",
        f"(b−a)/(d) = **{r_floor:.2f}** (target ≤ 1.0 on CPU); (b−a)/(c−a) = **{r_naive:.2f}** "
        f"(target ≤ 0.5 on CPU, ≤ 0.4 on GPU)"
        + ("" if cpu else f"; peak memory (b)/(c) = **{peak['b'] / peak['c']:.2f}** (target ≤ 0.6)"),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with RESULTS.open("a") as fh:
            fh.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
