"""Cost of the cheaper DiffLoss options, side by side: seconds per training step and peak memory.

    python benchmarks/bench_cheaper_diffloss.py [--append] [--rounds 5]

Every variant runs the trainer's own step (:func:`diffloss.training.train_step`) on the same
fixed batch from the same initial weights: L1 alone, full DiffLoss, DiffLoss on a random quarter
of each batch (``diffloss_fraction=0.25``), on a random quarter of the steps
(``diffloss_every=4``), and with prior crops of half the prior's native size
(``prior_size``). The variants take turns for ``--rounds`` rounds so that a busy machine slows
them alike; the table gives the median s/step and its ratio to L1 and to full DiffLoss. On CUDA
it uses the profile's full MSBDN and a random ADM-256 prior and reports peak memory as well.
Their *effect* on training is measured by ``tools/experiments.py cheaper`` (paired seeds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name  # noqa: E402
from bench_train import random_adm_prior  # noqa: E402

from diffloss import profiles  # noqa: E402
from diffloss.prior import DiffusionPrior  # noqa: E402
from diffloss.training import TrainConfig, build_datasets, build_model, build_terms, train_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def variants(prior_size: int) -> dict[str, dict]:
    return {"L1": dict(loss="l1"), "full DiffLoss": dict(loss="l1+diffloss"),
            "DiffLoss on 1/4 of the batch": dict(loss="l1+diffloss", diffloss_fraction=0.25),
            "DiffLoss on 1/4 of the steps": dict(loss="l1+diffloss", diffloss_every=4),
            f"DiffLoss, prior crops {prior_size}²": dict(loss="l1+diffloss", prior_size=prior_size)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    profile = profiles.get("gpu" if cuda else "small")
    prior = (random_adm_prior() if cuda else DiffusionPrior.tiny()).to(device).eval()
    base = TrainConfig.for_profile(profile, None, device, cpu=not cuda, mixed_precision="no")
    hazy, clear = (torch.stack(x).to(device) for x in
                   zip(*[build_datasets(base).train[i][:2] for i in range(base.batch)]))
    steppers, peaks = {}, {}
    for name, kw in variants(prior.sample_size // 2).items():
        cfg = base.replace(**kw)
        torch.manual_seed(0)
        net = build_model(cfg.model).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        terms = {k: t.to(device) for k, t in build_terms(cfg, prior).items()}
        gens = iter(torch.Generator().manual_seed(s) for s in range(10**6))

        def step(net=net, cfg=cfg, terms=terms, opt=opt, gens=gens) -> None:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
            with autocast:
                train_step(net, hazy, clear, cfg, terms, opt, generator=next(gens))

        steppers[name] = step
    times: dict[str, list[float]] = {n: [] for n in steppers}
    for name, step in steppers.items():  # warm-up, and peak memory per variant
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step()
        if cuda:
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    for _ in range(args.rounds):
        for name, step in steppers.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {n: statistics.median(v) for n, v in times.items()}
    where = (f"cuda ({torch.cuda.get_device_name(0)}), bf16, full MSBDN, random ADM-256 prior"
             if cuda else f"cpu ({cpu_name()}, {torch.get_num_threads()} thread(s)), MSBDN.small, "
                          "tiny prior")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"### Cheaper DiffLoss options (bench_cheaper_diffloss.py) — "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}", "",
             f"{where}; batch {base.batch}×{base.crop}²; median of {args.rounds} alternating rounds "
             f"of {args.steps} steps; load average {load:.2f}.", "",
             "| variant | s/step | × L1 | × full DiffLoss | DiffLoss's extra cost vs full | peak mem |",
             "|---|---|---|---|---|---|"]
    extra_full = med["full DiffLoss"] - med["L1"]
    for n, s in med.items():
        extra = "—" if n == "L1" else f"{(s - med['L1']) / extra_full:.2f}"
        peak = f"{peaks[n]:.2f} GiB" if n in peaks else "n/a"
        lines.append(f"| {n} | {s:.4f} | {s / med['L1']:.2f} | {s / med['full DiffLoss']:.2f} | "
                     f"{extra} | {peak} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(RESULTS, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
