"""End-to-end check of the `gpu` profile on a real GPU, in one short run (issue 13).

What a Colab user does, with stand-ins where the real thing cannot be fetched offline:

1. ``data``: build a Dense-Haze-layout zip (55 pairs ``NN_hazy.png`` / ``NN_GT.png``) from
   synthetic haze on the bundled images, and install it with
   ``data_scripts/download_dense_haze.py --root data --from-zip`` (the real install path).
2. ``prior``: write a *random-weight* checkpoint with the exact key names and shapes of OpenAI's
   ``256x256_diffusion_uncond.pt`` (same cost as the real one) and convert it with
   ``diffloss convert-adm`` into ``checkpoints/adm-256x256-uncond-diffusers``.
3. ``chapters``: run chapters 04 and 05 (their code cells in order, as one script: no Jupyter
   needed on the GPU machine) under ``DIFFLOSS_PROFILE=gpu`` with ``DIFFLOSS_TRAIN_ITERS`` (a
   short run), then read every run's history: peak GPU memory and the median seconds per step.

    python benchmarks/gpu_e2e.py --iters 20 --out results/gpu_e2e      # everything
    python benchmarks/gpu_e2e.py --stage data --stage prior            # only the set-up

It refuses to overwrite a real ``data/dense_haze`` or ``checkpoints/adm-...`` that it did not
make itself (it marks what it makes with ``.gpu_e2e`` files). The chapters' figures, which come
from synthetic data and random prior weights here, go to ``--out/figures`` (``DIFFLOSS_FIGURES``)
and never over the committed ones. Results go to ``--out/gpu_e2e.json`` and, with ``--append``,
to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = ".gpu_e2e"
ADM_DIR = ROOT / "checkpoints" / "adm-256x256-uncond-diffusers"
SHAPES = ROOT / "tests" / "fixtures" / "adm_256x256_uncond_shapes.json"
CHAPTERS = ("04_train_msbdn_dense_haze.ipynb", "05_loss_comparison.ipynb")


def _owned(path: Path) -> bool:
    return not path.exists() or (path / MARK).exists()


def stage_data(work: Path, size: tuple[int, int] = (264, 336)) -> Path:
    """55 synthetic hazy/clear pairs in Dense-Haze's archive layout, installed by the real script."""
    import torch
    from torchvision.io import encode_png

    from diffloss.data import SyntheticHaze

    target = ROOT / "data" / "dense_haze"
    if not _owned(target):
        raise SystemExit(f"{target} holds a real dataset: refusing to replace it")
    shutil.rmtree(target, ignore_errors=True)
    ds = SyntheticHaze("train", crop=size, n=55, seed=123)  # ≥ the gpu profile's 256² crops
    archive = work / "Dense_Haze_NTIRE19.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(55):
            hazy, clear, _ = ds[i]
            for kind, img in (("hazy", hazy), ("GT", clear)):
                png = encode_png((img * 255).round().clamp(0, 255).to(torch.uint8))
                zf.writestr(f"Dense_Haze_NTIRE19/{kind}/{i + 1:02d}_{kind}.png", png.numpy().tobytes())
    subprocess.run([sys.executable, "data_scripts/download_dense_haze.py", "--root", "data",
                    "--from-zip", str(archive)], cwd=ROOT, check=True)
    (target / MARK).write_text("synthetic stand-in made by benchmarks/gpu_e2e.py\n")
    return target


def stage_prior(work: Path) -> Path:
    """A random-weight ADM-256 checkpoint (real key names and shapes), converted by the CLI."""
    import torch

    if not _owned(ADM_DIR):
        raise SystemExit(f"{ADM_DIR} holds a real converted prior: refusing to replace it")
    shapes = json.loads(SHAPES.read_text())["state_dict_shapes"]
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * (0.02 if len(s) > 1 else 0.0)
             + (1.0 if k.endswith(".weight") and len(s) == 1 else 0.0) for k, s in shapes.items()}
    ckpt = work / "random_256x256_diffusion_uncond.pt"
    torch.save(state, ckpt)
    shutil.rmtree(ADM_DIR, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "diffloss", "convert-adm", str(ckpt), str(ADM_DIR)],
                   cwd=ROOT, check=True)
    ckpt.unlink()
    (ADM_DIR / MARK).write_text("random weights made by benchmarks/gpu_e2e.py\n")
    return ADM_DIR


def _history_numbers(folder: Path) -> dict[str, float | str]:
    h = json.loads((folder / "history.json").read_text())
    rows = [r for r in h["rows"] if r["step"] > 0 and r.get("test_psnr") is None]
    prev = {r["step"]: r["seconds"] for r in h["rows"]}
    steps = [r["seconds"] - prev[r["step"] - 1] for r in rows if r["step"] - 1 in prev]
    return {"run": str(folder.relative_to(ROOT)), "loss": h["config"]["loss"],
            "s_per_step": statistics.median(steps) if steps else float("nan"),
            "peak_memory_gib": h["meta"].get("peak_memory_gib", float("nan")),
            "mixed_precision": h["meta"].get("mixed_precision", "?")}


#: Run first by ``--t4``: the card reports a T4's compute capability (7, 5), so the package's own
#: precision rule picks fp16 with loss scaling, and the process may use a T4's 15 GiB only.
T4_PRELUDE = """import torch
torch.cuda.get_device_capability = lambda *args, **kwargs: (7, 5)  # T4-shaped (gpu_e2e.py --t4)
if torch.cuda.is_available():
    _total = torch.cuda.get_device_properties(0).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, 15.0 / _total))
"""


def chapter_script(notebook: str, until: str | None = None, prelude: str = "") -> str:
    """The chapter's code cells in order: what a fresh kernel runs (no Jupyter needed); with
    ``until``, up to and including the first cell that contains that text."""
    cells = [c for c in json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
             if c["cell_type"] == "code"]
    sources = []
    for c in cells:
        sources.append("".join(c["source"]))
        if until is not None and until in sources[-1]:
            break
    else:
        if until is not None:
            raise ValueError(f"no code cell of {notebook} contains {until!r}")
    return "\n\n".join([prelude, *sources] if prelude else sources)


def stage_chapters(out: Path, iters: int, profile: str = "gpu", chapters: tuple[str, ...] = CHAPTERS,
                   t4: bool = False) -> list[dict]:
    """Run the chapters' code under ``profile`` (T4-shaped with ``t4``), keep their figures
    apart, read the runs."""
    env = dict(os.environ, DIFFLOSS_PROFILE=profile, DIFFLOSS_TRAIN_ITERS=str(iters),
               DIFFLOSS_FIGURES=str(out / "figures"), MPLBACKEND="Agg")
    results = []
    for nb in chapters:
        t0 = time.perf_counter()
        script = out / nb.replace(".ipynb", ".py")
        script.write_text(chapter_script(nb, prelude=T4_PRELUDE if t4 else ""))
        res = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        (out / nb.replace(".ipynb", ".log")).write_text(res.stdout + res.stderr)
        results.append({"chapter": nb, "ok": res.returncode == 0,
                        "seconds": round(time.perf_counter() - t0, 1),
                        "error": res.stderr[-3000:] if res.returncode else ""})
        print(f"{nb}: {'ok' if res.returncode == 0 else 'FAILED'} in {results[-1]['seconds']} s",
              flush=True)
    for folder in sorted((ROOT / "runs").glob(f"0[45]_{profile}/**/history.json")):
        results.append(_history_numbers(folder.parent))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", action="append", choices=("data", "prior", "chapters"),
                   help="run only these stages (repeatable; default: all three)")
    p.add_argument("--iters", type=int, default=20, help="training steps per run (DIFFLOSS_TRAIN_ITERS)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_e2e")
    p.add_argument("--append", action="store_true", help="append a summary to benchmarks/RESULTS.md")
    p.add_argument("--profile", default="gpu", help="profile of the chapters (ci: a CPU rehearsal)")
    p.add_argument("--chapter", action="append", choices=CHAPTERS, help="only these chapters (repeatable)")
    p.add_argument("--t4", action="store_true",
                   help="T4-shaped: capability (7, 5) reported (fp16 with loss scaling), memory capped at 15 GiB")
    args = p.parse_args(argv)
    stages = args.stage or ["data", "prior", "chapters"]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    report: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "stages": stages, "iters": args.iters}
    try:
        import torch

        report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # report what we can
        report["device"] = f"unknown ({exc})"
    if "data" in stages:
        report["data"] = str(stage_data(work))
    if "prior" in stages:
        report["prior"] = str(stage_prior(work))
    if "chapters" in stages:
        report["t4_shaped"] = args.t4
        report["results"] = stage_chapters(args.out, args.iters, args.profile,
                                           tuple(args.chapter or CHAPTERS), args.t4)
    shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1)
    (args.out / "gpu_e2e.json").write_text(text + "\n")
    print(text)
    if args.append and "results" in report:
        lines = [f"\n### gpu profile end to end (benchmarks/gpu_e2e.py) — {report['when']}\n",
                 f"device: {report['device']}{' T4-shaped (capability 7.5: fp16; 15 GiB cap)' if args.t4 else ''}; "
                 f"{args.iters} steps per run; synthetic Dense-Haze "
                 "stand-in, random-weight ADM-256 prior (same cost as the real weights).\n",
                 "| run | loss | s/step | peak GPU memory | precision |", "|---|---|---|---|---|"]
        for r in report["results"]:
            if "run" in r:
                lines.append(f"| {r['run']} | {r['loss']} | {r['s_per_step']:.3f} | "
                             f"{r['peak_memory_gib']:.2f} GiB | {r['mixed_precision']} |")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n".join(lines) + "\n")
    ok = all(r.get("ok", True) for r in report.get("results", []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
