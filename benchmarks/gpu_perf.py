"""The GPU measurements of the performance issue (16), in one prepared run of a few minutes.

Stages (each one's numbers are written to ``--out/gpu_perf.json`` as soon as it ends, so a run
cut short still returns what it measured):

``sync``    the trainer's step under ``torch.cuda.set_sync_debug_mode``: where a guarded step
            still synchronises (mode "error", with the line), and how many synchronising calls a
            whole ``train()`` makes with ``log_every=1`` (a read per step) and the default (10).
``bench``   ``bench_diffloss.py``'s variants at the issue's shapes (ADM-256 prior with random
            weights, full MSBDN, 4×256², bf16): (a) L1, (b) L1 + DiffLoss, (b′) the same with the
            prior compiled, (b, no channels-last), (c) the naive DiffLoss, (d) the floor and (d′)
            the floor compiled; the first call of (b′) (compilation); the FLOPs of each variant
            (``torch.utils.flop_counter``) and the fraction of the card's dense bf16 peak (MFU).
``train``   the real ``train()`` at the same shapes: L1, L1 + DiffLoss eager with a read every
            step, eager with the default reads, and compiled: s/step, peak memory, first step.
``cheaper`` the cheaper DiffLoss options (¼ of the batch, ¼ of the steps, 128² prior crops).
``profile`` the ``gpu`` profile's own step (2 micro-batches of 2, prior checkpointing), eager
            and compiled, to decide whether compiling pays off there too.

    python benchmarks/gpu_perf.py --out gpu_out                 # on the GPU machine
    python benchmarks/gpu_perf.py --rehearse --out /tmp/perf    # on a CPU: tiny shapes, dynamo's
                                                                # "eager" backend, no sync stage
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_diffloss import (  # noqa: E402
    build_prior,
    build_restorer,
    naive_diffloss,
    prior_floor,
    restorer_step,
    sync,
    time_variants,
)

from diffloss.loss import DiffLoss  # noqa: E402
from diffloss.prior import DiffusionPrior  # noqa: E402
from diffloss.training import TrainConfig, build_model, build_terms, train, train_step  # noqa: E402
from diffloss.training.guards import DeviceGuard  # noqa: E402

#: Dense bf16 tensor-core peak (FLOP/s) by a substring of the device name (vendor datasheets).
BF16_PEAK = {"H200": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 SXM": 989.4e12, "H100 NVL": 835e12,
             "H100 PCIe": 756e12, "H100": 756e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


class Recorder:
    """A run's JSON record (``out/name``), rewritten after every stage; the newest value printed."""

    def __init__(self, out: Path, name: str = "gpu_perf.json") -> None:
        self.path = out / name
        self.data: dict[str, Any] = {}
        out.mkdir(parents=True, exist_ok=True)

    def put(self, stage: str, value: Any) -> None:
        self.data[stage] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))
        shown = value[-1] if isinstance(value, list) and value else value  # the newest run
        print(f"== {stage}: {json.dumps(shown, default=str)[:3000]}", flush=True)


# ----------------------------------------------------------------------------------- train
def run_config(args: argparse.Namespace, out: Path, **kw: Any) -> TrainConfig:
    values = dict(model=args.restorer, data="synthetic", crop=args.size, batch=args.batch,
                  iterations=args.steps, eval_every=0, train_items=64, val=0, lr=1e-4,
                  t_range=(0, 200), out=str(out), cpu=args.device == "cpu")
    values.update(kw)
    return TrainConfig(**values)


def measure_run(cfg: TrainConfig, prior: DiffusionPrior | None) -> dict[str, Any]:
    """s/step from the history's clock between two read steps (their times are after a sync)."""
    t0 = time.perf_counter()
    h = train(cfg, progress=False, overwrite=True, prior=prior)
    wall = time.perf_counter() - t0
    every = cfg.resolved_log_every(torch.device(h.meta["device"]))
    sec = {r["step"]: r["seconds"] for r in h.rows}
    n = cfg.iterations
    k = 10 if n >= 20 else max(1, n // 3)  # a read step in every mode; the first steps excluded
    return {"loss": cfg.loss, "log_every": every, "compiled": bool(cfg.compile_prior),
            "batch": f"{cfg.batch}x{cfg.grad_accum}x{cfg.crop}^2", "steps": n,
            "s_per_step": (sec[n] - sec[k]) / (n - k), "first_step_s": h.meta.get("first_step_seconds"),
            "peak_gib": h.meta.get("peak_memory_gib"), "wall_s": wall,
            "prior_checkpointing": cfg.prior_checkpointing,
            "diffloss_fraction": cfg.diffloss_fraction, "diffloss_every": cfg.diffloss_every,
            "prior_size": cfg.prior_size}


# ------------------------------------------------------------------------------------ stages
def stage_sync(args, prior, rec: Recorder, work: Path) -> None:
    device = torch.device(args.device)
    if device.type != "cuda":
        rec.put("sync", "skipped: needs CUDA")
        return
    cfg = run_config(args, work / "sync", loss="l1+diffloss")
    torch.manual_seed(0)
    net = build_model(cfg.model).to(device)
    terms = {k: t.to(device) for k, t in build_terms(cfg, prior).items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    guard = DeviceGuard(device)
    g = torch.Generator().manual_seed(0)
    hazy = torch.rand(cfg.batch, 3, cfg.crop, cfg.crop, generator=g).pin_memory().to(device, non_blocking=True)
    clear = torch.rand(cfg.batch, 3, cfg.crop, cfg.crop, generator=g).pin_memory().to(device, non_blocking=True)
    result: dict[str, Any] = {}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(2):
            train_step(net, hazy, clear, cfg, terms, opt, generator=g, guard=guard, step=i + 1)
        sync(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(3):
                train_step(net, hazy, clear, cfg, terms, opt, generator=g, guard=guard, step=i + 3)
            result["guarded_step"] = "no synchronising call in 3 guarded steps"
        except RuntimeError as err:
            frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                      for f in traceback.extract_tb(err.__traceback__)][-6:]
            result["guarded_step"] = {"error": str(err).splitlines()[0], "where": frames}
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sync(device)
    # Synchronising calls of a whole train() between its reads at steps 10 and 20 (steps 11-20
    # and the read at 20; set-up, evaluation and checkpoint digests are outside the window).
    for every in (1, None):
        c = run_config(args, work / f"sync_run_{every}", loss="l1+diffloss", iterations=25, log_every=every)

        def window(row, history):
            if row["step"] == 10:
                torch.cuda.set_sync_debug_mode("warn")
            elif row["step"] == 20:
                torch.cuda.set_sync_debug_mode(0)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                train(c, progress=False, overwrite=True, prior=prior, callback=window)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        result[f"syncs_steps_11_20_log_every_{every or 'default'}"] = len(syncs)
    rec.put("sync", result)


def stage_bench(args, prior, rec: Recorder) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    size = min(prior.sample_size, args.size)
    net = build_restorer(args.restorer, device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    compiled = args.compiled_prior  # same U-Net, its own compiled call (shared by every stage)
    if not compiled.compiled:
        compiled.compile_unet(backend=args.backend)
    ours = DiffLoss(prior, prior_size=size, check_values=False)
    ours_c = DiffLoss(compiled, prior_size=size, check_values=False)
    ours_nocl = DiffLoss(prior, prior_size=size, check_values=False, channels_last=False)
    g = torch.Generator().manual_seed(0)
    y = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    xp = (torch.rand(args.batch, 3, size, size, generator=g).to(device) * 2 - 1)
    if cuda:
        xp = xp.contiguous(memory_format=torch.channels_last)  # as DiffLoss hands it to the prior
    tp = torch.randint(0, prior.schedule.T, (args.batch,), generator=g)

    def step(extra=None) -> None:
        restorer_step(net, opt, y, x, extra)

    def floor(p: DiffusionPrior) -> None:
        prior_floor(p, xp, tp, bf16=True, compiled=True)

    def naive() -> None:
        prior.unet.requires_grad_(True)
        try:
            step(lambda out: naive_diffloss(prior, out, x, 1e-3, g, size))
        finally:
            prior.unet.requires_grad_(False)
            prior.unet.zero_grad(set_to_none=True)

    variants = {
        "a": ("(a) L1 only", step),
        "b": ("(b) L1 + DiffLoss (eager)", lambda: step(lambda o: ours(o, x, generator=g).loss)),
        "b_compiled": ("(b′) L1 + DiffLoss, prior compiled",
                       lambda: step(lambda o: ours_c(o, x, generator=g).loss)),
        "b_no_channels_last": ("(b) without channels-last", lambda: step(lambda o: ours_nocl(o, x, generator=g).loss)),
        "c": ("(c) L1 + naive DiffLoss (trainable prior, 2 graphs, fp32)", naive),
        "d": ("(d) floor: prior fwd+bwd to input + prior fwd (eager)", lambda: floor(prior)),
        "d_compiled": ("(d′) floor, prior compiled", lambda: floor(compiled)),
    }
    # first call (compilation for the compiled ones) + warm-up, peak memory, alternating repeats
    times, peak, first = time_variants({k: fn for k, (_, fn) in variants.items()}, device,
                                       args.warmup + 1, args.repeats)
    flops: dict[str, int] = {}
    for k in ("a", "b", "c", "d"):
        with FlopCounterMode(display=False) as fc:
            variants[k][1]()
        flops[k] = fc.get_total_flops()
    med = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak_f = peak_flops(name)
    fl = {"a": flops["a"], "b": flops["b"], "b_compiled": flops["b"], "b_no_channels_last": flops["b"],
          "c": flops["c"], "d": flops["d"], "d_compiled": flops["d"]}
    rows = {k: {"label": lab, "s": med[k], "min": min(times[k]), "max": max(times[k]),
                "first_call_s": first[k], "peak_gib": peak.get(k), "flops": fl[k],
                "mfu": (fl[k] / med[k] / peak_f) if peak_f else None}
            for k, (lab, _) in variants.items()}
    a = med["a"]
    diff_flops = flops["b"] - flops["a"]
    summary = {
        "device": name, "bf16_peak_flops": peak_f, "prior": args.prior, "restorer": args.restorer,
        "shape": f"{args.batch}x3x{args.size}^2", "prior_crop": size, "repeats": args.repeats,
        "prior_flops_in_b": diff_flops, "floor_flops_d": flops["d"],
        "ratios": {
            "(b-a)/d eager": (med["b"] - a) / med["d"],
            "(b-a)/(c-a) eager": (med["b"] - a) / (med["c"] - a),
            "(b'-a)/d eager": (med["b_compiled"] - a) / med["d"],
            "(b'-a)/(c-a)": (med["b_compiled"] - a) / (med["c"] - a),
            "(b'-a)/d'": (med["b_compiled"] - a) / med["d_compiled"],
            "d'/d": med["d_compiled"] / med["d"],
            "b/a eager": med["b"] / a, "b'/a": med["b_compiled"] / a,
        },
        "mfu_diffloss_part": {"eager": diff_flops / (med["b"] - a) / peak_f if peak_f else None,
                              "compiled": diff_flops / (med["b_compiled"] - a) / peak_f if peak_f else None},
        "compile_first_call_s": {"b'": first["b_compiled"], "d'": first["d_compiled"]},
        "variants": rows,
    }
    rec.put("bench", summary)


def stage_train(args, prior, rec: Recorder, work: Path) -> None:
    runs = []
    runs.append(measure_run(run_config(args, work / "l1", loss="l1"), None))
    rec.put("train", runs)
    for name, kw in (("eager_every_step", dict(log_every=1)), ("eager", {}),
                     ("compiled", dict(compile_prior=True))):
        try:
            runs.append({"name": name, **measure_run(run_config(args, work / name, loss="l1+diffloss", **kw),
                                                     prior if name != "compiled" else args.compiled_prior)})
        except Exception as err:  # noqa: BLE001 - keep the other measurements
            runs.append({"name": name, "error": f"{type(err).__name__}: {err}"[:800]})
        rec.put("train", runs)


def stage_cheaper(args, prior, rec: Recorder, work: Path) -> None:
    runs = []
    for name, kw in (("fraction_1/4", dict(diffloss_fraction=0.25)), ("every_4", dict(diffloss_every=4)),
                     ("prior_crops_half", dict(prior_size=args.size // 2))):
        try:
            runs.append({"name": name, **measure_run(run_config(args, work / name.replace("/", "_"),
                                                                 loss="l1+diffloss", **kw), prior)})
        except Exception as err:  # noqa: BLE001
            runs.append({"name": name, "error": f"{type(err).__name__}: {err}"[:800]})
        rec.put("cheaper", runs)


def stage_profile(args, prior, rec: Recorder, work: Path) -> None:
    """The gpu profile's step: micro-batches of 2, accumulation 2, prior checkpointing."""
    runs = []
    common = dict(batch=max(1, args.batch // 2), grad_accum=2, prior_checkpointing=True, loss="l1+diffloss")
    for name, kw, p in (("profile_eager", {}, prior),
                        ("profile_compiled", dict(compile_prior=True), args.compiled_prior)):
        try:
            runs.append({"name": name, **measure_run(run_config(args, work / name, **common, **kw), p)})
        except Exception as err:  # noqa: BLE001
            runs.append({"name": name, "error": f"{type(err).__name__}: {err}"[:800]})
        rec.put("profile", runs)
    if prior.unet.is_gradient_checkpointing:
        prior.unet.disable_gradient_checkpointing()


def report(paths: list[Path]) -> str:
    """Markdown tables from the JSON records of one or more runs (``--report``)."""
    data: dict[str, Any] = {}
    for p in paths:
        for k, v in json.loads(p.read_text()).items():
            if k == "sync" and isinstance(data.get(k), dict) and isinstance(v, dict):
                data[k] = {**data[k], **v}
            else:
                data.setdefault(k, v)
    m = data["machine"]
    lines = [f"### GPU performance (benchmarks/gpu_perf.py) — {m['device']}", "",
             f"torch {m['torch']}; prior: {m['prior']}; restorer {m['restorer']} on "
             f"{m['batch']}×3×{m['size']}²; bf16. Records: {', '.join(f'`{p}`' for p in paths)}.", ""]
    b = data.get("bench")
    if isinstance(b, dict):
        lines += [f"**Step cost** (median of {b['repeats']} alternating repeats; FLOPs counted by "
                  "`torch.utils.flop_counter`: matmuls, convolutions, attention; MFU against the "
                  f"card's dense bf16 peak, {b['bf16_peak_flops'] / 1e12:.0f} TFLOP/s):", "",
                  "| variant | s/step | min–max (s) | first call (s) | peak (GiB) | TFLOP per step | MFU |",
                  "|---|---|---|---|---|---|---|"]
        for v in b["variants"].values():
            mfu = f"{100 * v['mfu']:.1f} %" if v["mfu"] is not None else "—"
            peak = f"{v['peak_gib']:.2f}" if v["peak_gib"] is not None else "—"
            lines.append(f"| {v['label']} | {v['s']:.4f} | {v['min']:.4f}–{v['max']:.4f} | "
                         f"{v['first_call_s']:.1f} | {peak} | {v['flops'] / 1e12:.2f} | {mfu} |")
        r = b["ratios"]
        mfu = b["mfu_diffloss_part"]
        lines += ["", f"Eager: (b−a)/(d) = **{r['(b-a)/d eager']:.2f}**, (b−a)/(c−a) = "
                  f"**{r['(b-a)/(c-a) eager']:.2f}**. Compiled prior: (b′−a)/(c−a) = "
                  f"**{r[chr(40) + 'b' + chr(39) + '-a)/(c-a)']:.2f}** (target ≤ 0.4), (b′−a) = "
                  f"**{r[chr(40) + 'b' + chr(39) + '-a)/d eager']:.2f}** × the eager (d) (target ≤ 0.9), "
                  f"(b′−a)/(d′) = {r[chr(40) + 'b' + chr(39) + '-a)/d' + chr(39)]:.2f}, (d′)/(d) = "
                  f"{r['d' + chr(39) + '/d']:.2f}. DiffLoss's own part, "
                  f"{b['prior_flops_in_b'] / 1e12:.1f} TFLOP per step, runs at "
                  + (f"{100 * mfu['eager']:.1f} % MFU eager and {100 * mfu['compiled']:.1f} % compiled"
                     if mfu["eager"] is not None else "(no peak known for this card)")
                  + f". Compiling cost {b['compile_first_call_s'][chr(98) + chr(39)]:.0f} s at the first call.", ""]
    rows = [*(data.get("train") or []), *(data.get("cheaper") or []), *(data.get("profile") or [])]
    if rows:
        base = next((x["s_per_step"] for x in rows if x.get("loss") == "l1" and "s_per_step" in x), None)
        full = next((x["s_per_step"] for x in rows if x.get("name") == "eager" and "s_per_step" in x), None)
        lines += ["**The real `train()`** (synthetic haze, eval off; s/step between the reads at steps "
                  "10 and 20, after a sync):", "",
                  "| run | batch | reads | s/step | × L1 | extra cost vs full DiffLoss | first step (s) | peak (GiB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in rows:
            if "error" in x:
                lines.append(f"| {x['name']} | — | — | failed: {x['error'][:120]} | | | | |")
                continue
            name = x.get("name", x["loss"])
            extra = ("—" if x["loss"] == "l1" or base is None or full is None or x["batch"] != rows[0]["batch"]
                     else f"{(x['s_per_step'] - base) / (full - base):.2f}")
            times = f"{x['s_per_step'] / base:.2f}" if base and x["batch"] == rows[0]["batch"] else "—"
            lines.append(f"| {name} ({x['loss']}{', compiled' if x['compiled'] else ''}) | {x['batch']} | "
                         f"every {x['log_every']} | {x['s_per_step']:.3f} | {times} | {extra} | "
                         f"{x['first_step_s']} | {x['peak_gib']:.2f} |")
        lines.append("")
    sy = data.get("sync")
    if isinstance(sy, dict):
        lines += ["**Host–device synchronisations** (`torch.cuda.set_sync_debug_mode`): "
                  f"guarded `train_step` in mode \"error\": {sy.get('guarded_step')}; synchronising "
                  "calls of `train()` during steps 11–20 (including the read at step 20): "
                  f"{sy.get('syncs_steps_11_20_log_every_1', '—')} with `log_every=1`, "
                  f"{sy.get('syncs_steps_11_20_log_every_default', '—')} with the default (10).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", nargs="+", type=Path, help="print the tables of these gpu_perf.json records")
    ap.add_argument("--append", action="store_true", help="with --report: append them to RESULTS.md")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--stage", action="append", choices=["sync", "bench", "train", "cheaper", "profile"])
    ap.add_argument("--rehearse", action="store_true",
                    help="CPU rehearsal: tiny random prior, MSBDN.small, 4×64², few steps, 'eager' backend")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    if args.report:
        text = report(args.report)
        print(text)
        if args.append:
            with (ROOT / "benchmarks" / "RESULTS.md").open("a") as fh:
                fh.write("\n" + text + "\n")
        return 0
    args.device = "cuda" if torch.cuda.is_available() and not args.rehearse else "cpu"
    if args.rehearse:
        args.prior, args.restorer, args.batch, args.size, args.backend = "tiny-random", "msbdn-small", 4, 64, "eager"
        args.steps, args.repeats = min(args.steps, 6), min(args.repeats, 2)
        torch.set_num_threads(1)
    else:
        args.prior, args.restorer, args.batch, args.size, args.backend = "adm-random", "msbdn", 4, 256, "inductor"
    stages = args.stage or ["sync", "bench", "train", "cheaper", "profile"]
    out = Path(args.out)
    rec = Recorder(out)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_perf_runs"
    device = torch.device(args.device)
    prior, prior_name = build_prior(args.prior, device)
    # One compiled wrapper sharing the U-Net, for every stage (its compiled graphs are reused).
    args.compiled_prior = DiffusionPrior(prior.unet, prior.schedule)
    if args.backend != "inductor":
        args.compiled_prior.compile_unet(backend=args.backend)
    rec.put("machine", {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "torch": torch.__version__, "prior": prior_name, "restorer": args.restorer,
                        "batch": args.batch, "size": args.size, "steps": args.steps})
    t_all = time.perf_counter()
    for stage in stages:
        t0 = time.perf_counter()
        try:
            if stage == "sync":
                stage_sync(args, prior, rec, work)
            elif stage == "bench":
                stage_bench(args, prior, rec)
            elif stage == "train":
                stage_train(args, prior, rec, work)
            elif stage == "cheaper":
                stage_cheaper(args, prior, rec, work)
            elif stage == "profile":
                stage_profile(args, prior, rec, work)
        except Exception as err:  # noqa: BLE001 - the next stage may still work
            rec.put(f"{stage}_error", traceback.format_exc()[-3000:])
            print(f"stage {stage} failed: {err}", flush=True)
        rec.put(f"{stage}_seconds", round(time.perf_counter() - t0, 1))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rec.put("total_seconds", round(time.perf_counter() - t_all, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
