"""Training throughput of the trainer: seconds per step and images per second, L1 vs L1 + DiffLoss.

Usage::

    python benchmarks/bench_train.py                    # MSBDN.small, crop 64, batch 4, tiny prior
    python benchmarks/bench_train.py --random-prior     # a random tiny prior (same architecture)
    python benchmarks/bench_train.py --append           # also append the table to RESULTS.md
    python benchmarks/bench_train.py --prior adm:256x256_diffusion_uncond.pt   # CUDA: paper prior

Each configuration runs the real :func:`diffloss.training.train` loop (data loading, accelerate,
mixed precision, optimiser) for ``--warmup + --steps`` steps with evaluation and intermediate
checkpoints off; the time of a step is the wall time between consecutive step callbacks, and the
table gives the median over the steps after the warm-up (and the min–max). Images/s counts the
training crops of a step (``batch × grad_accum × processes``).

The script then measures what the trainer adds on top of the work itself: the trainer's steps
(:func:`~diffloss.training.train`, L1 + DiffLoss) against a bare hand-written loop that computes
the same loss on the same batches with the same initial weights (data loading, forward, L1 +
γ·DiffLoss, backward, Adam), the two alternating over ``--repeats`` rounds; it prints the median
over rounds of the ratio of their median step times as ``trainer/bare = R``.

On CUDA the script also runs the paper's setting: the full MSBDN (31.35 M parameters) on 256×256
crops with a 256×256 prior: ``--prior`` (a diffusers folder or ``adm:PATH``), or by default a
*randomly initialised* U-Net of the ADM ``256x256_diffusion_uncond`` architecture (same cost as
the real weights), and reports peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name as _cpu_name  # noqa: E402

from diffloss.training import TrainConfig, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def random_tiny_prior() -> Any:
    """A randomly initialised prior with the shipped tiny prior's architecture (same cost)."""
    from diffusers import UNet2DModel

    from diffloss.prior import DiffusionPrior, tiny_unet_config
    from diffloss.schedule import NoiseSchedule

    torch.manual_seed(0)
    return DiffusionPrior(UNet2DModel(**tiny_unet_config()), NoiseSchedule.linear())


def random_adm_prior() -> Any:
    """A randomly initialised U-Net with the ADM 256×256 unconditional architecture (552 M)."""
    from diffusers import UNet2DModel

    from diffloss import adm
    from diffloss.prior import DiffusionPrior
    from diffloss.schedule import NoiseSchedule

    torch.manual_seed(0)
    flags = adm.ADM_256_UNCOND
    unet = UNet2DModel(**adm.adm_unet_config(flags))
    return DiffusionPrior(unet, NoiseSchedule.from_diffusers_config(adm.adm_scheduler_config(flags)))


def step_times(history: Any, stamps: list[float], warmup: int) -> list[float]:
    """Seconds per step after ``warmup`` steps. The trainer calls the callback when it reads the
    step values back (every step on the CPU, every ``log_every`` on CUDA); a batch of callbacks
    then shares one read, so the time between reads is spread over the steps it covers."""
    every = history.config.resolved_log_every(torch.device(history.meta["device"]))
    if every == 1:
        return [b - a for a, b in zip(stamps, stamps[1:])][max(0, warmup - 1):]
    reads = [r["seconds"] for r in history.rows if r["step"] % every == 0 and r["step"] > warmup]
    return [(b - a) / every for a, b in zip(reads, reads[1:])]


def run(name: str, config: TrainConfig, prior: Any, warmup: int) -> dict[str, str]:
    """Train ``config`` and time its steps; returns one table row."""
    stamps: list[float] = []
    cuda = torch.cuda.is_available() and not config.cpu
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def tick(row: dict[str, Any], history: Any) -> None:
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    try:
        history = train(config, progress=False, callback=tick, prior=prior, overwrite=True)
    except torch.OutOfMemoryError:
        return {"run": name, "s/step": "OOM", "images/s": "OOM", "min–max (s)": "", "steps": "0",
                "peak mem": "OOM", "final loss": ""}
    total = time.perf_counter() - t0
    steps = step_times(history, stamps, warmup)
    med = statistics.median(steps)
    per_step = config.batch * config.grad_accum * history.meta["world_size"]
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a"
    return {
        "run": name,
        "s/step": f"{med:.3f}",
        "images/s": f"{per_step / med:.1f}",
        "min–max (s)": f"{min(steps):.3f}–{max(steps):.3f}",
        "steps": str(len(steps)),
        "peak mem": peak,
        "final loss": f"{history.rows[-1]['total']:.4f}",
        "_total": f"{total:.1f}",
    }


def bare_steps(config: TrainConfig, prior: Any, steps: int) -> list[float]:
    """Step times of a hand-written loop: the trainer's batches, loss and optimiser, nothing else."""
    from torch.utils.data import DataLoader

    from diffloss.loss import DiffLoss, fidelity_loss
    from diffloss.training import StepBatchSampler, build_datasets, build_model, prior_input
    from diffloss.training.data import KeyedPairs, mix_seed

    torch.manual_seed(config.seed)
    model = build_model(config.model)
    train_ds = build_datasets(config).train
    loader = DataLoader(KeyedPairs(train_ds), num_workers=0,
                        batch_sampler=StepBatchSampler(len(train_ds), config.batch, config.seed))
    diffloss = DiffLoss(prior, lambda_sem=config.lambda_sem, check_values=False)  # as the trainer
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    stamps, batches = [time.perf_counter()], iter(loader)
    for step in range(steps):
        hazy, clear = next(batches)
        gen = torch.Generator().manual_seed(mix_seed(config.seed, step, 0, 0xD1F))
        restored = model(hazy)
        dl = diffloss(prior_input(restored, "st-clamp"), clear, generator=gen).loss
        loss = fidelity_loss(restored, clear, "l1") + config.gamma_for("diffloss") * dl
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def trainer_overhead(prior: Any, args: argparse.Namespace, tmp: str) -> tuple[float, list[float]]:
    """``median over rounds of median(trainer step) / median(bare step)``, and every round's ratio."""
    config = TrainConfig(model="msbdn-small", loss="l1+diffloss", crop=args.crop, batch=args.batch,
                         iterations=args.warmup + args.steps, eval_every=0, seed=0, cpu=args.cpu,
                         train_items=256, val=0, out=str(Path(tmp) / "overhead"))
    ratios = []
    for r in range(args.repeats):
        stamps: list[float] = []
        history = train(config, progress=False, overwrite=True, prior=prior,
                        callback=lambda row, h, s=stamps: s.append(time.perf_counter()))
        trainer = step_times(history, stamps, args.warmup)
        bare = bare_steps(config, prior, args.warmup + args.steps)[args.warmup:]
        ratios.append(statistics.median(trainer) / statistics.median(bare))
        print(f"round {r + 1}: trainer {statistics.median(trainer):.4f} s/step, bare "
              f"{statistics.median(bare):.4f} s/step, ratio {ratios[-1]:.3f}", flush=True)
    return statistics.median(ratios), ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--random-prior", action="store_true",
                   help="a random tiny prior instead of the shipped one (same architecture)")
    p.add_argument("--prior", default=None,
                   help="CUDA: the 256×256 prior for the full-MSBDN run (folder or adm:PATH); "
                        "default a random ADM-256 U-Net")
    p.add_argument("--full-crop", type=int, default=256)
    p.add_argument("--full-batch", type=int, default=8)
    p.add_argument("--no-full", action="store_true", help="skip the full-MSBDN run on CUDA")
    p.add_argument("--cpu", action="store_true", help="force the CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    p.add_argument("--repeats", type=int, default=5, help="trainer/bare rounds")
    p.add_argument("--overhead-only", action="store_true", help="only the trainer/bare ratio")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    prior_note = "random tiny prior (tiny architecture, untrained)"
    if args.random_prior:
        tiny = random_tiny_prior()
    else:
        from diffloss.prior import DiffusionPrior

        try:
            tiny = DiffusionPrior.tiny()
            prior_note = "shipped tiny prior"
        except FileNotFoundError:
            print("the tiny prior is not there yet: using a random one (--random-prior)")
            tiny = random_tiny_prior()
    n_tiny = tiny.num_parameters()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ratio, ratios = trainer_overhead(tiny, args, tmp)
        overhead = (f"trainer/bare = {ratio:.3f} (median of {args.repeats} alternating rounds: "
                    f"{', '.join(f'{r:.3f}' for r in ratios)}; L1 + DiffLoss, MSBDN.small, "
                    f"{args.batch}×{args.crop}², {args.steps} timed steps each)")
        print(overhead, flush=True)
        common = dict(model="msbdn-small", crop=args.crop, batch=args.batch,
                      iterations=args.warmup + args.steps, eval_every=0, seed=0, cpu=args.cpu,
                      train_items=256)
        for loss in () if args.overhead_only else ("l1", "l1+diffloss"):
            cfg = TrainConfig(loss=loss, out=str(Path(tmp) / loss.replace("+", "_")), **common)
            name = f"MSBDN.small, {loss}, {args.batch}×{args.crop}²"
            print("running", name, flush=True)
            rows.append(run(name, cfg, tiny, args.warmup))
        if cuda and not args.no_full and not args.overhead_only:
            if args.prior:
                from diffloss.training import load_prior

                big, big_note = load_prior(args.prior), args.prior
            else:
                big, big_note = random_adm_prior(), "random ADM-256 uncond U-Net"
            common.update(model="msbdn", crop=args.full_crop, batch=args.full_batch)
            for loss in ("l1", "l1+diffloss"):
                cfg = TrainConfig(loss=loss, out=str(Path(tmp) / f"full_{loss.replace('+', '_')}"),
                                  **common)
                name = (f"MSBDN, {loss}, {args.full_batch}×{args.full_crop}²"
                        + (f", prior {big_note} ({big.num_parameters() / 1e6:.0f} M)"
                           if "diffloss" in loss else ""))
                print("running", name, flush=True)
                rows.append(run(name, cfg, big, args.warmup))

    mp = TrainConfig(cpu=args.cpu).resolved_mixed_precision()
    if cuda:
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = f"cpu ({_cpu_name()}, {torch.get_num_threads()} thread(s))"
    import accelerate

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"### Training throughput (bench_train.py) — {when}\n\n"
        f"device: {device}; torch {torch.__version__}; accelerate {accelerate.__version__}; "
        f"mixed precision: {mp}; {os.cpu_count()} CPU cores visible; load average at start "
        f"{load:.2f}. Real `diffloss.training.train` loop (data, accelerate, Adam), evaluation off; "
        f"median over {args.steps} steps after {args.warmup} warm-up steps. DiffLoss prior for "
        f"MSBDN.small: {prior_note}, {n_tiny / 1e6:.2f} M parameters, {tiny.sample_size}×"
        f"{tiny.sample_size} crops of the {args.crop}×{args.crop} restored image.\n"
    )
    cols = ["run", "s/step", "min–max (s)", "images/s", "peak mem", "steps", "final loss"]
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in rows:
        table += "| " + " | ".join(r.get(c, "") for c in cols) + " |\n"
    text = header + "\n" + overhead + "\n" + ("\n" + table if rows else "")
    print(text)
    if args.append:
        with open(RESULTS, "a") as f:
            f.write("\n" + text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
