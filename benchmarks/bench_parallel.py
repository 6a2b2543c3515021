"""Paired CPU runs one after the other against two at a time (``run_paired(parallel=2)``).

Usage::

    python benchmarks/bench_parallel.py                 # 4 runs (2 losses × 2 seeds), 40 steps
    python benchmarks/bench_parallel.py --steps 100 --append

The chapters' CPU comparisons train many short runs of MSBDN.small on 64² crops. This script
trains the same ``runs`` (L1 and L1 + DiffLoss with the shipped tiny prior, the ``small``
profile's recipe, evaluation at the end only) three ways, side by side in one process tree:

- (a) one after the other, 1 torch thread (what chapters 04 and 05 did before);
- (b) one after the other, 2 torch threads;
- (c) two at a time, each in a process of its own with 1 thread (``parallel=2``).

It prints the wall time of each, their ratios to (a), and checks that (c) gives the same final
weights as (a), bit for bit (the same code, seeds and thread count; (b) need not: two threads
may sum in another order). Worker start-up (a spawned Python importing torch) is inside (c)'s
time.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name  # noqa: E402

from diffloss.experiments import run_paired  # noqa: E402
from diffloss.parallel import available_cores  # noqa: E402
from diffloss.prior import load_profile_prior  # noqa: E402
from diffloss.profiles import PROFILES  # noqa: E402
from diffloss.training import TrainConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def weights_hash(histories: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(histories, key=str):
        sd = histories[key].model.state_dict()
        for name in sorted(sd):
            h.update(sd[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="training steps per run")
    ap.add_argument("--seeds", type=int, default=2, help="seeds (2 runs each: L1, L1 + DiffLoss)")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    small = PROFILES["small"]
    prior = load_profile_prior(small).eval()
    # the small profile's recipe (chapter 04's), evaluated once at the end
    base = TrainConfig.for_profile(small, None, "cpu", iterations=args.steps, eval_every=args.steps,
                                   warmup=min(small.warmup, args.steps // 4))
    losses = {"L1": dict(loss="l1"), "L1 + DiffLoss": dict(loss="l1+diffloss", gamma=small.gamma)}
    seeds = list(range(args.seeds))
    runs = len(seeds) * len(losses)
    variants = {"(a) one after the other, 1 thread": (1, 1),
                "(b) one after the other, 2 threads": (2, 1),
                "(c) two at a time, 1 thread each": (1, 2)}
    times, hashes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (threads, parallel) in variants.items():
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            hist = run_paired(base, losses, seeds, Path(tmp) / name[:3], prior=prior, log=None,
                              parallel=parallel)
            times[name] = time.perf_counter() - t0
            hashes[name] = weights_hash(hist)
            print(f"{name}: {times[name]:.1f} s", flush=True)
    ref = "(a) one after the other, 1 thread"
    same = hashes["(c) two at a time, 1 thread each"] == hashes[ref]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### Paired CPU runs in parallel processes (bench_parallel.py) — {stamp}", "",
             f"Machine: {cpu_name()}, {available_cores()} cores; torch {torch.__version__}. "
             f"{runs} runs ({len(losses)} losses × {len(seeds)} seeds) of {small.restorer}, "
             f"{args.steps} steps of {small.batch_size}×{small.crop}², the `small` recipe, tiny prior. "
             f"Command: `python benchmarks/bench_parallel.py --steps {args.steps} --seeds {args.seeds}`",
             "", "| variant | wall s | × (a) |", "|---|---|---|"]
    lines += [f"| {name} | {t:.1f} | {t / times[ref]:.2f} |" for name, t in times.items()]
    lines += ["", f"(c)'s final weights {'equal' if same else 'DIFFER FROM'} (a)'s, bit for bit; "
              f"(b)'s {'equal' if hashes['(b) one after the other, 2 threads'] == hashes[ref] else 'differ from'} "
              "them."]
    text = "\n".join(lines)
    print("\n" + text)
    if args.append:
        with RESULTS.open("a") as f:
            f.write("\n" + text + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
