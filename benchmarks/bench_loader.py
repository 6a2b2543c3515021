"""How fast a Rain13K-sized dataset streams from disk, against what a GPU step consumes.

Usage::

    python benchmarks/bench_loader.py                     # 13,712 pairs of 481×321 JPEGs (Rain13K)
    python benchmarks/bench_loader.py --pairs 2000 --append

Rain13K (13,712 training pairs) does not fit in memory decoded, so the trainer streams it:
``PairedImageDataset(verify="header")`` reads only the headers at construction, and each item
is decoded (``torchvision.io``), cropped and augmented when it is drawn, in ``DataLoader``
worker processes. This script writes synthetic files of Rain13K's count and a typical size
(481×321, JPEG quality 95; the real set mixes sizes around it) into a scratch folder, then
measures:

- the construction time of the dataset (header checks of every file);
- items per second through ``DataLoader`` with 0, 1, 2, ... workers (``--workers``), crops of
  ``--crop`` (256, the ``gpu`` profile's) and batches of ``--batch``, after one warm-up batch.

It compares them with the demand of a GPU training step: ``--step-seconds`` per batch (default
0.276 s for 4 crops of 256²: the L1 + DiffLoss step of ``train()`` with the compiled ADM prior
on an H100, ``benchmarks/RESULTS.md``). Loading keeps the GPU fed when items/s ≥ batch /
step-seconds; with 0 workers loading also adds its time to every step (no overlap).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name  # noqa: E402

from diffloss.data import PairedImageDataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_pairs(folder: Path, pairs: int, size: tuple[int, int]) -> None:
    """``pairs`` JPEG pairs of ``size`` (W, H) in the ``rain`` layout under ``folder``: smooth
    random images (JPEG-like content, not noise, so the files have realistic sizes)."""
    from PIL import Image

    w, h = size
    inp, tgt = folder / "train/Rain13K/input", folder / "train/Rain13K/target"
    inp.mkdir(parents=True)
    tgt.mkdir(parents=True)
    rng = np.random.default_rng(0)
    bases = [np.asarray(Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), np.uint8))
                        .resize((w, h), Image.BICUBIC)) for _ in range(16)]
    for i in range(pairs):
        clean = bases[i % 16]
        rain = np.clip(clean.astype(np.int16) + rng.integers(0, 60, clean.shape), 0, 255)
        Image.fromarray(clean).save(tgt / f"{i}.jpg", quality=95)
        Image.fromarray(rain.astype(np.uint8)).save(inp / f"{i}.jpg", quality=95)


def items_per_second(ds: PairedImageDataset, workers: int, batch: int, batches: int) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True)
    it = iter(loader)
    next(it)  # warm-up: workers start, first files come into the page cache
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=13_712)
    p.add_argument("--size", type=int, nargs=2, default=(481, 321), metavar=("W", "H"))
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2))
    p.add_argument("--step-seconds", type=float, default=0.276)
    p.add_argument("--folder", type=Path, help="reuse/keep the files here (default: a temp dir)")
    p.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    args = p.parse_args(argv)

    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        if not (folder / "train/Rain13K/input").is_dir():
            t0 = time.perf_counter()
            write_pairs(folder, args.pairs, tuple(args.size))
            print(f"wrote {args.pairs:,} pairs in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        ds = PairedImageDataset(folder, "rain", "train", crop=args.crop, augment=True,
                                verify="header")
        build = time.perf_counter() - t0
        demand = args.batch / args.step_seconds
        rates = {w: items_per_second(ds, w, args.batch, args.batches) for w in args.workers}
        mb = statistics.mean(p.stat().st_size for p in (folder / "train/Rain13K/input").iterdir()) / 1e3
        lines = [
            f"\n### Streaming a Rain13K-sized dataset ({datetime.now(timezone.utc):%Y-%m-%d}, "
            f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__})\n",
            f"{len(ds):,} pairs of {args.size[0]}×{args.size[1]} JPEGs (~{mb:.0f} kB each), "
            f"`PairedImageDataset(verify=\"header\")` built in {build:.1f} s; crops of "
            f"{args.crop}², batches of {args.batch}, random flips/rotations. A GPU step of "
            f"{args.step_seconds} s per batch needs {demand:.1f} items/s.\n",
            "| DataLoader workers | items/s | × the GPU step's demand |",
            "|---|---|---|",
            *(f"| {w} | {r:.0f} | {r / demand:.1f} |" for w, r in rates.items()),
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        if args.append:
            with RESULTS.open("a") as f:
                f.write(text)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
