"""The card measurements of issue 35, and the GPU checks of the other open issues, in one prepared run.

Every stage writes its numbers to ``--out/gpu_card.json`` as soon as it ends (a run cut short
still returns what it measured); a stage that fails records its error and the next one runs.

``precision``  the card's precision decision (``diffloss.precision``: compute capability, the
               half type, the autocast dtype), and DiffLoss of the ADM-256 prior (random weights)
               on one batch in fp16 and bf16 against float32: the relative difference of the loss
               and of its gradient to the restored image, whether the prior's activations stayed
               finite in fp16 (else DiffLoss's one-warning fallback to float32 shows).
``fp16``       the trainer's own ``train()`` with ``mixed_precision="fp16"`` and accelerate's loss
               scaler started at 2**40, so that the first steps overflow: the steps the scaler
               skipped (‖∇θ‖ = inf, read every step), and that the run goes on with finite losses.
``gradcheck``  chapter 04's code cells up to and including its "same loss / same gradient" check
               (by-hand step against ``train_step``), under the ``gpu`` profile on this card.
``mfu``        the L1 + DiffLoss training step at the ``paper`` shape (8×256², ADM-256, full
               MSBDN, the card's autocast dtype), change by change: eager; the prior compiled; the
               restorer compiled; the restorer under CUDA graphs (``mode="reduce-overhead"``); all
               of them. FLOPs from ``torch.utils.flop_counter``; MFU against the card's dense peak
               for the dtype used; the ``paper`` recipe's GPU-hours projected from the best steps.
``t4``         a T4-shaped run: the card reports compute capability (7, 5), so the package's own
               rule picks fp16 with loss scaling, and the memory is capped at 15 GiB
               (``torch.cuda.set_per_process_memory_fraction``); the ``gpu`` profile's step (2
               micro-batches of 2×256², prior checkpointing, full MSBDN, ADM-256) in ``train()``:
               s/step, peak memory, and the time on a real T4 projected from the two cards'
               datasheet ratios (dense fp16 peak and memory bandwidth; the larger ratio is used).
``tasks``      the other tasks and restorers on the card: IAT on synthetic low light and MSBDN on
               synthetic rain, L1 + DiffLoss (ADM-256) at 256² in ``train()``: s/step, peak memory,
               finite losses.

Chapter 04 end to end T4-shaped is ``gpu_e2e.py --t4`` (same capability and memory cap); latent
priors are ``bench_latent.py``; ``benchmarks/gpu_checks.sh`` runs them all in order.

    python benchmarks/gpu_card.py --out gpu_out                  # on the card
    python benchmarks/gpu_card.py --rehearse --out /tmp/card     # on a CPU: tiny shapes, tiny
                                                                 # random prior, dynamo's "eager"
    python benchmarks/gpu_card.py --report gpu_out/gpu_card.json --append   # tables → RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_diffloss import build_prior, build_restorer, sync, time_variants  # noqa: E402
from gpu_e2e import chapter_script  # noqa: E402
from gpu_perf import Recorder  # noqa: E402

from diffloss import profiles  # noqa: E402
from diffloss.loss import DiffLoss  # noqa: E402
from diffloss.precision import autocast_dtype, native_half  # noqa: E402
from diffloss.prior import DiffusionPrior  # noqa: E402
from diffloss.training import TrainConfig, train  # noqa: E402

STAGES = ("precision", "fp16", "gradcheck", "mfu", "t4", "tasks")

#: Dense tensor-core peaks (FLOP/s; fp16 = bf16 on these cards) and memory bandwidth (B/s), by a
#: substring of the device name, from the vendors' datasheets (SXM parts where a name is shared).
CARDS: dict[str, tuple[float, float]] = {
    "H200": (989.4e12, 4.8e12), "H100 NVL": (835e12, 3.9e12), "H100 PCIe": (756e12, 2.0e12),
    "H100": (989.4e12, 3.35e12), "A100": (312e12, 2.0e12), "L4": (121e12, 0.3e12),
    "A10G": (70e12, 0.6e12), "T4": (65e12, 0.32e12),
}
T4 = CARDS["T4"]
T4_MEMORY_GIB = 15.0


def card(name: str) -> tuple[float, float] | None:
    """(dense half-precision peak FLOP/s, memory bandwidth B/s) of a card by its name."""
    return next((v for k, v in CARDS.items() if k in name), None)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _amp(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# ------------------------------------------------------------------------------------ stages
def stage_precision(args: argparse.Namespace, prior: DiffusionPrior) -> dict[str, Any]:
    device = torch.device(args.device)
    info: dict[str, Any] = {"native_half": native_half(device),
                            "autocast_dtype": str(autocast_dtype(device))}
    if device.type == "cuda":
        info["capability"] = torch.cuda.get_device_capability(device)
    g = torch.Generator().manual_seed(0)
    size = prior.sample_size
    x = torch.rand(2, 3, size, size, generator=g).to(device)
    z0 = (x + 0.1 * torch.randn(x.shape, generator=g).to(device)).clamp(0, 1)
    result: dict[str, dict[str, Any]] = {}
    for name, dtype in (("fp32", False), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        z = z0.clone().requires_grad_(True)
        loss_fn = DiffLoss(prior, autocast=dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = loss_fn(z, x, generator=torch.Generator().manual_seed(1))
            out.loss.backward()
        result[name] = {"loss": out.loss.item(), "grad": z.grad.detach().double().cpu(),
                        "finite": bool(torch.isfinite(z.grad).all()) and math.isfinite(out.loss.item()),
                        "fell_back_to_fp32": any("overflow" in str(w.message) for w in caught)}
    ref = result["fp32"]
    for name in ("fp16", "bf16"):
        r = result[name]
        r["loss_rel_diff"] = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
        r["grad_rel_l2"] = float((r["grad"] - ref["grad"]).norm() / ref["grad"].norm())
    for r in result.values():
        del r["grad"]
    return {**info, "prior": args.prior_name, "batch": f"2x3x{size}^2", "diffloss": result}


def stage_fp16(args: argparse.Namespace, prior: DiffusionPrior, work: Path) -> dict[str, Any]:
    """train() in fp16 with the loss scale started so high that the first steps overflow."""
    from accelerate import Accelerator

    import diffloss.training.loop as loop

    made = loop.make_accelerator

    def high_scale(config: TrainConfig, mixed: str) -> Accelerator:
        acc = made(config, mixed)
        if acc.scaler is not None:  # fp16 on CUDA (accelerate makes none on the CPU); before prepare()
            acc.scaler = torch.amp.GradScaler(acc.device.type, init_scale=2.0**40)
        return acc

    cfg = run_config(args, work / "fp16", loss="l1+diffloss", mixed_precision="fp16", iterations=args.steps,
                     log_every=1)
    with mock.patch.object(loop, "make_accelerator", high_scale):
        h = train(cfg, progress=False, overwrite=True, prior=prior)
    rows = [r for r in h.rows if r["step"] > 0]
    skipped = [r["step"] for r in rows if not math.isfinite(float(r.get("grad_norm", 0.0)))]
    losses = [float(r["total"]) for r in rows if "total" in r]
    return {"mixed_precision": h.meta.get("mixed_precision"), "steps": len(rows),
            "skipped_steps": skipped, "losses_finite": all(math.isfinite(v) for v in losses),
            "last_loss": losses[-1] if losses else None,
            "loss_scaler": "GradScaler(init_scale=2**40)" if args.device == "cuda" else
            "none: accelerate has no fp16 loss scaler on the CPU (rehearsal runs the path without it)"}


def stage_gradcheck(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Chapter 04's cells up to its gradient check, in a fresh process, under the gpu profile."""
    script = out / "04_until_gradcheck.py"
    script.write_text(chapter_script("04_train_msbdn_dense_haze.ipynb", until='print("same gradient:"'))
    env = dict(os.environ, DIFFLOSS_PROFILE=args.chapter_profile, MPLBACKEND="Agg",
               DIFFLOSS_FIGURES=str(out / "figures"))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
    (out / "04_until_gradcheck.log").write_text(res.stdout + res.stderr)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("same loss:", "same gradient:"))]
    return {"profile": args.chapter_profile, "ok": res.returncode == 0 and lines == ["same loss: True",
                                                                                    "same gradient: True"],
            "printed": lines, "seconds": round(time.perf_counter() - t0, 1),
            "error": res.stderr[-2000:] if res.returncode else ""}


def stage_mfu(args: argparse.Namespace, prior: DiffusionPrior) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(args.device)
    dtype = autocast_dtype(device)
    net = build_restorer(args.restorer, device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    inductor = args.backend == "inductor"
    net_c = torch.compile(net, backend=args.backend)
    net_g = torch.compile(net, mode="reduce-overhead") if inductor and device.type == "cuda" else None
    compiled = DiffusionPrior(prior.unet, prior.schedule)
    compiled.compile_unet(backend=args.backend)
    eager_dl = DiffLoss(prior, check_values=False, autocast=dtype)
    compiled_dl = DiffLoss(compiled, check_values=False, autocast=dtype)
    g = torch.Generator().manual_seed(0)
    y = torch.rand(args.paper_batch, 3, args.size, args.size, generator=g).to(device)
    x = torch.rand(args.paper_batch, 3, args.size, args.size, generator=g).to(device)

    def step(model: Callable, dl: DiffLoss | None) -> Callable[[], None]:
        def run() -> None:
            with _amp(device, dtype):
                out = model(y).clamp(0, 1)
                loss = F.l1_loss(out, x)
                if dl is not None:
                    loss = loss + 1e-3 * dl(out, x, generator=g).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    variants: dict[str, tuple[str, Callable[[], None]]] = {
        "l1_eager": ("L1, eager", step(net, None)),
        "l1_model_compiled": ("L1, restorer compiled", step(net_c, None)),
        "eager": ("L1 + DiffLoss, eager", step(net, eager_dl)),
        "prior_compiled": ("+ prior compiled", step(net, compiled_dl)),
        "model_compiled": ("+ restorer compiled (prior eager)", step(net_c, eager_dl)),
    }
    if net_g is not None:
        variants["l1_cuda_graphs"] = ("L1, restorer under CUDA graphs", step(net_g, None))
        variants["cuda_graphs"] = ("+ restorer under CUDA graphs (prior eager)", step(net_g, eager_dl))
        variants["all"] = ("all: prior compiled, restorer under CUDA graphs", step(net_g, compiled_dl))
    else:
        variants["all"] = ("all: prior and restorer compiled", step(net_c, compiled_dl))
    flops = {}
    for key, fn in (("l1", step(net, None)), ("diffloss", step(net, eager_dl))):
        with FlopCounterMode(display=False) as fc:
            fn()
        flops[key] = fc.get_total_flops()
    times, peak, first = time_variants({k: fn for k, (_, fn) in variants.items()}, device,
                                       args.warmup + 1, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_flops = card(name)[0] if card(name) and dtype is not None else None
    rows = {}
    for k, (label, _) in variants.items():
        s = statistics.median(times[k])
        f = flops["l1" if k.startswith("l1") else "diffloss"]
        rows[k] = {"label": label, "s": s, "min": min(times[k]), "max": max(times[k]),
                   "first_call_s": first[k], "peak_gib": peak.get(k), "flops": f,
                   "mfu": f / s / peak_flops if peak_flops else None}
    paper = profiles.get("paper")
    best_l1 = min(v["s"] for k, v in rows.items() if k.startswith("l1"))
    best_dl = min(v["s"] for k, v in rows.items() if not k.startswith("l1"))
    runs = paper.train_iters * len(paper.seeds)
    return {"device": name, "dtype": str(dtype), "dense_peak_flops": peak_flops, "prior": args.prior_name,
            "restorer": args.restorer, "shape": f"{args.paper_batch}x3x{args.size}^2",
            "repeats": args.repeats, "variants": rows,
            "paper_recipe_gpu_hours": {
                "eager": runs * (rows["l1_eager"]["s"] + rows["eager"]["s"]) / 3600,
                "best": runs * (best_l1 + best_dl) / 3600,
                "how": f"{paper.train_iters} steps × {len(paper.seeds)} seeds × (one L1 run + one "
                       "L1 + DiffLoss run) × the measured s/step; evaluation and checkpoints not counted"}}


@contextlib.contextmanager
def t4_shaped(device: torch.device) -> Iterator[float]:
    """Capability (7, 5) reported to the package (fp16 with loss scaling by its own rule) and the
    memory capped at a T4's 15 GiB; yields the cap's fraction of this card's memory."""
    if device.type != "cuda":
        with mock.patch.object(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5)):
            yield 1.0
        return
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    fraction = min(1.0, T4_MEMORY_GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    try:
        with mock.patch.object(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5)):
            yield fraction
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def measured_run(cfg: TrainConfig, prior: DiffusionPrior, device: torch.device) -> dict[str, Any]:
    """train() of ``cfg``: median s/step over the steps after the first third, peak memory."""
    _reset_peak(device)
    t0 = time.perf_counter()
    h = train(cfg, progress=False, overwrite=True, prior=prior)
    sec = {r["step"]: r["seconds"] for r in h.rows}
    steps = sorted(s for s in sec if s > max(1, cfg.iterations // 3) and s - 1 in sec)
    losses = [float(r["total"]) for r in h.rows if r["step"] > 0 and "total" in r]
    return {"task": cfg.task, "model": cfg.model, "batch": f"{cfg.batch}x{cfg.grad_accum}x{cfg.crop}^2",
            "mixed_precision": h.meta.get("mixed_precision"), "steps": cfg.iterations,
            "s_per_step": statistics.median(sec[s] - sec[s - 1] for s in steps) if steps else None,
            "first_step_s": h.meta.get("first_step_seconds"), "peak_gib": _peak_gib(device),
            "losses_finite": all(math.isfinite(v) for v in losses), "wall_s": round(time.perf_counter() - t0, 1)}


def stage_t4(args: argparse.Namespace, prior: DiffusionPrior, work: Path) -> dict[str, Any]:
    device = torch.device(args.device)
    gpu = profiles.get("gpu")
    with t4_shaped(device) as fraction:
        cfg = run_config(args, work / "t4", loss="l1+diffloss", batch=gpu.batch_size,
                         grad_accum=gpu.grad_accum, prior_checkpointing=gpu.prior_checkpointing,
                         iterations=args.steps, log_every=1)
        run = measured_run(cfg, prior, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    this = card(name)
    projection = None
    if this and run["s_per_step"]:
        ratio = max(this[0] / T4[0], this[1] / T4[1])
        per_run = run["s_per_step"] * gpu.train_iters * ratio
        projection = {"ratio": ratio, "t4_s_per_step": run["s_per_step"] * ratio,
                      "chapter04_training_hours": per_run * len(gpu.seeds) * 2 / 3600,
                      "how": "this card's s/step × max(dense fp16 peak ratio, memory bandwidth ratio) "
                             f"to a T4 ({T4[0] / 1e12:.0f} TFLOP/s, {T4[1] / 1e9:.0f} GB/s); chapter 04 "
                             f"trains {len(gpu.seeds)} seeds × 2 losses × {gpu.train_iters} steps; "
                             "evaluation not counted; a T4 runs fp16 on 320 GB/s memory, which this "
                             "card does not emulate, so this is an estimate, not a measurement"}
    return {**run, "memory_fraction": fraction, "memory_cap_gib": T4_MEMORY_GIB, "projection": projection}


def stage_tasks(args: argparse.Namespace, prior: DiffusionPrior, work: Path) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    runs = []
    for task, model in (("lowlight", "iat"), ("derain", args.restorer)):
        try:
            cfg = run_config(args, work / task, task=task, model=model, loss="l1+diffloss",
                             iterations=args.steps, log_every=1)
            runs.append(measured_run(cfg, prior, device))
        except Exception as err:  # noqa: BLE001 - the other task may still run
            runs.append({"task": task, "model": model, "error": f"{type(err).__name__}: {err}"[:800]})
    return runs


def run_config(args: argparse.Namespace, out: Path, **kw: Any) -> TrainConfig:
    values = dict(model=args.restorer, data="synthetic", crop=args.size, batch=2, iterations=args.steps,
                  eval_every=0, train_items=32, val=0, lr=1e-4, gamma=1e-3, t_range=(0, 200),
                  out=str(out), cpu=args.device == "cpu")
    values.update(kw)
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------ report
def report(paths: list[Path]) -> str:
    """Markdown for benchmarks/RESULTS.md from one or more gpu_card.json records."""
    data: dict[str, Any] = {}
    for p in paths:
        data.update(json.loads(p.read_text()))
    m = data.get("machine", {})
    lines = [f"### Card checks (benchmarks/gpu_card.py) — {m.get('device')}, {m.get('when')}", "",
             f"torch {m.get('torch')}; records: {', '.join(f'`{p}`' for p in paths)}.", ""]
    p = data.get("precision")
    if isinstance(p, dict):
        d = p["diffloss"]
        lines += [f"**Precision**: capability {p.get('capability')}, half type {p['native_half']}; DiffLoss "
                  f"({p['prior']}, {p['batch']}) against float32: fp16 loss {d['fp16']['loss_rel_diff']:.1e}, "
                  f"gradient {d['fp16']['grad_rel_l2']:.1e} (finite: {d['fp16']['finite']}, fell back to "
                  f"fp32: {d['fp16']['fell_back_to_fp32']}); bf16 loss {d['bf16']['loss_rel_diff']:.1e}, "
                  f"gradient {d['bf16']['grad_rel_l2']:.1e}.", ""]
    f = data.get("fp16")
    if isinstance(f, dict):
        lines += [f"**fp16 with loss scaling** (`train()`, {f['loss_scaler']}): steps skipped by the scaler "
                  f"{f['skipped_steps']} of {f['steps']}; losses finite: {f['losses_finite']}.", ""]
    gc = data.get("gradcheck")
    if isinstance(gc, dict):
        lines += [f"**Chapter 04's gradient check** (profile {gc['profile']}): {'; '.join(gc['printed'])} "
                  f"({gc['seconds']} s).", ""]
    mf = data.get("mfu")
    if isinstance(mf, dict):
        pk = f"{mf['dense_peak_flops'] / 1e12:.0f} TFLOP/s" if mf["dense_peak_flops"] else "no peak known"
        lines += [f"**Step at the paper shape** ({mf['shape']}, {mf['prior']}, {mf['restorer']}, {mf['dtype']}; "
                  f"median of {mf['repeats']}; MFU against {pk}):", "",
                  "| change | s/step | min–max | first call (s) | peak (GiB) | TFLOP/step | MFU |",
                  "|---|---|---|---|---|---|---|"]
        for v in mf["variants"].values():
            mfu = f"{100 * v['mfu']:.1f} %" if v["mfu"] is not None else "—"
            pg = f"{v['peak_gib']:.1f}" if v["peak_gib"] is not None else "—"
            lines.append(f"| {v['label']} | {v['s']:.4f} | {v['min']:.4f}–{v['max']:.4f} | "
                         f"{v['first_call_s']:.1f} | {pg} | {v['flops'] / 1e12:.2f} | {mfu} |")
        ph = mf["paper_recipe_gpu_hours"]
        lines += ["", f"The `paper` recipe: {ph['eager']:.1f} GPU-hours eager, {ph['best']:.1f} with the "
                  f"fastest variants ({ph['how']}).", ""]
    t4 = data.get("t4")
    if isinstance(t4, dict) and "s_per_step" in t4:
        pr = t4.get("projection")
        lines += [f"**T4-shaped run** ({t4['batch']}, {t4['mixed_precision']}, memory capped at "
                  f"{t4['memory_cap_gib']} GiB): {t4['s_per_step']:.3f} s/step, peak "
                  + (f"{t4['peak_gib']:.2f} GiB" if t4["peak_gib"] is not None else "—")
                  + (f"; on a T4 about {pr['t4_s_per_step']:.2f} s/step, chapter 04's training about "
                     f"{pr['chapter04_training_hours']:.1f} h ({pr['how']})" if pr else "") + ".", ""]
    tk = data.get("tasks")
    if isinstance(tk, list):
        lines += ["| task | restorer | batch | precision | s/step | peak (GiB) | finite |", "|---|---|---|---|---|---|---|"]
        for r in tk:
            if "error" in r:
                lines.append(f"| {r['task']} | {r['model']} | failed: {r['error'][:100]} | | | | |")
            else:
                pg = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "—"
                lines.append(f"| {r['task']} | {r['model']} | {r['batch']} | {r['mixed_precision']} | "
                             f"{r['s_per_step']:.3f} | {pg} | {r['losses_finite']} |")
        lines.append("")
    errors = [k for k in data if k.endswith("_error")]
    if errors:
        lines += [f"Stages that failed: {', '.join(e[:-6] for e in errors)} (tracebacks in the record).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--stage", action="append", choices=STAGES, help="only these stages (repeatable)")
    ap.add_argument("--rehearse", action="store_true",
                    help="CPU rehearsal: tiny random prior, MSBDN.small, 32² crops, few steps, 'eager' backend")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--report", nargs="+", type=Path, help="print the tables of these gpu_card.json records")
    ap.add_argument("--append", action="store_true", help="with --report: append them to RESULTS.md")
    args = ap.parse_args(argv)
    if args.report:
        text = report(args.report)
        print(text)
        if args.append:
            with (ROOT / "benchmarks" / "RESULTS.md").open("a") as fh:
                fh.write("\n" + text + "\n")
        return 0
    if args.rehearse:
        args.device, args.prior, args.restorer, args.size, args.paper_batch = "cpu", "tiny-random", "msbdn-small", 32, 2
        args.backend, args.chapter_profile = "eager", "ci"
        args.steps, args.repeats, args.warmup = min(args.steps, 4), min(args.repeats, 2), 0
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on the card, or rehearse on the CPU with --rehearse")
    else:
        args.device, args.prior, args.restorer, args.size, args.paper_batch = "cuda", "adm-random", "msbdn", 256, 8
        args.backend, args.chapter_profile = "inductor", "gpu"
    out = Path(args.out)
    rec = Recorder(out, "gpu_card.json")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_card_runs"
    device = torch.device(args.device)
    prior, args.prior_name = build_prior(args.prior, device)
    rec.put("machine", {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "torch": torch.__version__, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "rehearsal": args.rehearse, "prior": args.prior_name, "restorer": args.restorer})
    t_all = time.perf_counter()
    for stage in args.stage or STAGES:
        t0 = time.perf_counter()
        try:
            if stage == "precision":
                rec.put(stage, stage_precision(args, prior))
            elif stage == "fp16":
                rec.put(stage, stage_fp16(args, prior, work))
            elif stage == "gradcheck":
                rec.put(stage, stage_gradcheck(args, out))
            elif stage == "mfu":
                rec.put(stage, stage_mfu(args, prior))
            elif stage == "t4":
                rec.put(stage, stage_t4(args, prior, work))
            elif stage == "tasks":
                rec.put(stage, stage_tasks(args, prior, work))
        except Exception as err:  # noqa: BLE001 - the next stage may still work
            rec.put(f"{stage}_error", traceback.format_exc()[-3000:])
            print(f"stage {stage} failed: {err}", flush=True)
        rec.put(f"{stage}_seconds", round(time.perf_counter() - t0, 1))
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rec.put("total_seconds", round(time.perf_counter() - t_all, 1))
    failed = [k for k in rec.data if k.endswith("_error")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
