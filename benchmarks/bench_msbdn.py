"""Forward and forward+backward time of MSBDN-DFF (small preset and the paper's network).

Usage::

    python benchmarks/bench_msbdn.py                    # CPU (or CUDA when present), 256x256 crop
    python benchmarks/bench_msbdn.py --append           # also append the table to RESULTS.md
    python benchmarks/bench_msbdn.py --full-res-memory  # CUDA: full network, 1600x1200 forward

Times are the median over ``--repeats`` runs after one warm-up run, for a ``1×3×S×S`` input
(``--size``, default 256) and an MSE loss against a random target. On CUDA the script
synchronises around each run and also reports peak allocated memory; ``--full-res-memory``
measures the paper network's inference memory on a full Dense-Haze frame (1600×1200, padded to
1600×1200 — both are multiples of 16), in fp32 and under bf16 autocast.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_name as _cpu_name  # noqa: E402

from diffloss.models import MSBDN  # noqa: E402
from diffloss.models.msbdn import count_parameters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], repeats: int, device: torch.device) -> tuple[list, list]:
    """Wall-clock and process CPU seconds of ``repeats`` calls of ``fn`` after one warm-up.

    CPU time sums over threads; with one thread it approximates the wall time on an idle core
    and is much less sensitive than wall time to other processes sharing the cores.
    """
    fn()  # warm-up
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def bench(name: str, model: MSBDN, size: int, repeats: int, device: torch.device) -> dict[str, str]:
    torch.manual_seed(0)
    model = model.to(device).train()
    x = torch.rand(1, 3, size, size, device=device)
    target = torch.rand_like(x)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_fwd, _ = _time(forward, repeats, device)
    t_fb, c_fb = _time(forward_backward, repeats, device)
    peak = (
        f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
        if device.type == "cuda"
        else "n/a"
    )
    row = {
        "model": name,
        "params": f"{count_parameters(model):,}",
        "input": f"1×3×{size}×{size}",
        "forward (ms)": f"{1000 * statistics.median(t_fwd):.1f}",
        "fwd+bwd (ms)": f"{1000 * statistics.median(t_fb):.1f}",
        "fwd+bwd min–max (ms)": f"{1000 * min(t_fb):.0f}–{1000 * max(t_fb):.0f}",
        "fwd+bwd CPU time (ms)": f"{1000 * statistics.median(c_fb):.0f}",
        "repeats": str(repeats),
        "peak mem": peak,
    }
    print(f"  {name}: fwd {row['forward (ms)']} ms, fwd+bwd {row['fwd+bwd (ms)']} ms", flush=True)
    return row


def full_res_memory(device: torch.device) -> list[dict[str, str]]:
    """Peak CUDA memory of ``MSBDN()`` inference on one 1600×1200 frame."""
    model = MSBDN().to(device).eval()
    x = torch.rand(1, 3, 1200, 1600, device=device)
    rows = []
    for label, autocast in (("fp32", False), ("bf16 autocast", True)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            model(x)
        _sync(device)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - base
        rows.append(
            {
                "model": f"MSBDN() forward, {label}",
                "input": "1×3×1200×1600",
                "peak mem above weights": f"{peak / 2**30:.2f} GiB",
                "time (s, incl. first-call overhead)": f"{dt:.2f}",
            }
        )
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs for MSBDN.small()")
    ap.add_argument("--full-repeats", type=int, default=3, help="timed runs for MSBDN()")
    ap.add_argument("--skip-full", action="store_true", help="only time MSBDN.small()")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--full-res-memory", action="store_true", help="CUDA only")
    ap.add_argument("--append", action="store_true", help=f"append the table to {RESULTS.name}")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{_cpu_name()}, {args.threads} thread(s)"
    header = (
        f"### MSBDN timing — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
        f"device: {device.type} ({hw}); torch {torch.__version__}; "
        f"{os.cpu_count()} CPU cores visible; median of repeats after one warm-up; "
        f"fwd+bwd = MSE loss + backward, train mode; load average at start "
        f"{os.getloadavg()[0]:.2f} (other processes on the cores distort CPU timings)."
    )
    print(header, flush=True)

    rows = [bench("MSBDN.small()", MSBDN.small(), args.size, args.repeats, device)]
    if not args.skip_full:
        rows.append(bench("MSBDN()", MSBDN(), args.size, args.full_repeats, device))
    text = header + "\n\n" + markdown(rows) + "\n"
    if args.full_res_memory:
        if device.type != "cuda":
            print("--full-res-memory needs CUDA; skipped", file=sys.stderr)
        else:
            text += "\n" + markdown(full_res_memory(device)) + "\n"
    print()
    print(text)
    if args.append:
        with RESULTS.open("a", encoding="utf-8") as fh:
            if fh.tell() == 0:
                fh.write("# Benchmark results\n\nAppend-only; newest at the bottom.\n\n")
            fh.write(text + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
