"""Cost of ``prior(xt, t)`` (ε and h-space, full U-Net) versus ``prior.hspace(xt, t)`` (stops after
the middle block), on the same batch.

Usage::

    python benchmarks/bench_prior.py                 # the shipped tiny prior, B=8, 32x32
    python benchmarks/bench_prior.py --random        # same architecture, random weights (no asset needed)
    python benchmarks/bench_prior.py --batch 16 --size 64 --repeats 30 --no-append
    python benchmarks/bench_prior.py --threads 1     # on a CPU shared with other jobs

Two modes, each timed for both calls:

* ``no_grad``: inference only, under ``torch.no_grad()``;
* ``grad to x_t``: forward + backward to the input, as in DiffLoss training (the U-Net's parameters
  are frozen; the loss is ``mean(eps²) + mean(h²)`` for the full call, ``mean(h²)`` for ``hspace``).

Times are the median (and min–max) over ``--repeats`` runs after ``--warmup`` warm-up runs; the two
calls alternate within each repeat so that load from other processes affects both alike. The table
is printed and appended, with machine information, to ``benchmarks/RESULTS.md`` (append-only).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name as cpu_name  # noqa: E402

from diffloss.prior import DiffusionPrior, tiny_unet_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def load_prior(random: bool, device: torch.device) -> tuple[DiffusionPrior, str]:
    if random:
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        prior = DiffusionPrior(UNet2DModel(**tiny_unet_config()))
        name = "tiny architecture, random weights"
    else:
        prior = DiffusionPrior.tiny()
        name = "DiffusionPrior.tiny()"
    return prior.to(device), name


def time_pair(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call for each function; the functions alternate within each repeat."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def bench(
    prior: DiffusionPrior, batch: int, size: int, repeats: int, warmup: int, device: torch.device
) -> list[dict[str, object]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    t = torch.randint(0, prior.schedule.T, (batch,), generator=g).to(device)

    with torch.no_grad():  # same tensor from both calls, checked before timing
        assert torch.equal(prior(x, t).hspace, prior.hspace(x, t))

    def full_nograd() -> None:
        with torch.no_grad():
            prior(x, t)

    def hspace_nograd() -> None:
        with torch.no_grad():
            prior.hspace(x, t)

    def full_grad() -> None:
        xt = x.detach().requires_grad_(True)
        out = prior(xt, t)
        (out.eps.square().mean() + out.hspace.square().mean()).backward()

    def hspace_grad() -> None:
        xt = x.detach().requires_grad_(True)
        prior.hspace(xt, t).square().mean().backward()

    rows = []
    for mode, fns in (
        ("no_grad", {"full": full_nograd, "hspace": hspace_nograd}),
        ("grad to x_t (fwd+bwd)", {"full": full_grad, "hspace": hspace_grad}),
    ):
        times = time_pair(fns, repeats, warmup, device)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rng = {k: (min(v) * 1e3, max(v) * 1e3) for k, v in times.items()}
        rows.append({"mode": mode, "median": med, "range": rng})
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| mode | `prior(xt, t)` median (ms) | `prior.hspace(xt, t)` median (ms) | hspace / full "
        "| full min–max (ms) | hspace min–max (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        med, rng = r["median"], r["range"]
        lines.append(
            f"| {r['mode']} | {med['full']:.1f} | {med['hspace']:.1f} | "
            f"{med['hspace'] / med['full']:.2f} | {rng['full'][0]:.1f}–{rng['full'][1]:.1f} | "
            f"{rng['hspace'][0]:.1f}–{rng['hspace'][1]:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--random", action="store_true", help="tiny architecture with random weights")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--no-append", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    prior, name = load_prior(args.random, device)
    rows = bench(prior, args.batch, args.size, args.repeats, args.warmup, device)
    hw = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} thread(s)"
    )
    try:
        load = "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "load average n/a"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = f"### DiffusionPrior: full call vs hspace() — {now}"
    info = (
        f"prior: {name} ({prior.num_parameters():,} params, U-Net downsampling ×"
        f"{prior.downsampling_factor}); input {args.batch}×3×{args.size}×{args.size}, one t per image; "
        f"device: {device.type} ({hw}); {platform.platform()}; {os.cpu_count()} CPU cores visible; "
        f"{load}; python {platform.python_version()}; torch {torch.__version__}; "
        f"median of {args.repeats} repeats after {args.warmup} warm-up, the two calls alternating. "
        "Full call = ε and h-space from one U-Net pass; fwd+bwd loss: mean(ε²)+mean(h²) (full), "
        "mean(h²) (hspace), backward to x_t only (the prior is frozen)."
    )
    text = f"{header}\n\n{info}\n\n{table(rows)}\n"
    print(text)
    if not args.no_append:
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppend-only; newest at the bottom.\n")
        with RESULTS.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
