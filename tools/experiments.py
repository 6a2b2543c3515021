"""Chapter 04's experiments that outgrow a notebook's budget, written to ``results/`` with provenance.

    python tools/experiments.py knobs --profile small     # γ, λ, t_range chosen on validation
    python tools/experiments.py medium --profile small    # the same recipe, more steps, 3 seeds
    python tools/experiments.py cheaper --profile small   # cheaper DiffLoss options, paired seeds
    python tools/experiments.py rho --profile small       # gamma="auto"'s default rho, from knobs
    python tools/experiments.py lowlight --profile small  # why DiffLoss collapses IAT: the ablation

``knobs`` trains L1 + DiffLoss (and L1, for reference) for each setting of a small grid on one
seed and scores the **validation** split only; the setting with the best validation PSNR is
"chosen" (the profile should then carry it: chapter 04 checks). ``medium`` trains L1 and
L1 + DiffLoss with the profile's recipe for ``--steps`` steps on each seed, evaluating both test
splits along the way; chapter 04 plots the histories it commits, labelled as loaded.

``cheaper`` trains L1, full DiffLoss and the cheaper DiffLoss options (a random quarter of the
batch, a random quarter of the steps, prior crops of half the native size) on the same seeds and
reports the final test PSNR/SSIM of each, paired against full DiffLoss and against L1.

``lowlight`` trains IAT on synthetic low light (chapter 06's steps, paired seeds) under each row
of :data:`LOWLIGHT_ROWS`, one factor changed at a time: the recipe (the profile's, or IAT's own),
IAT's clamps in training (hard, straight-through or leaky), the judge, ρ, and a perceptual term at the
same pull; each row's validation PSNR/SSIM and IAT's state (``diffloss.models.iat_state``) go to
``results/06_lowlight_ablation_<profile>.json``, which chapter 06 prints.

Each writes ``results/04_knobs_<profile>.json``, ``results/04_medium_<profile>/`` or
``results/cheaper_diffloss_<profile>.json`` (the runs'
``config.json`` and histories, no weights) and a provenance record: the command, the commit, the
machine, the load average and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffloss import profiles  # noqa: E402
from diffloss.experiments import machine_description, results_name  # noqa: E402
from diffloss.prior import load_profile_judge  # noqa: E402
from diffloss.training import TrainConfig, train  # noqa: E402
from diffloss.training.build import load_prior  # noqa: E402

#: (γ, λ, t_range) settings of the validation sweep, per judge. The tiny prior's (all 1000 steps
#: or t ≤ 200); FFDNet's within its noise levels, t ≤ 167 (σ_t ≤ 75/255), where γ = 1 pulls about
#: 8× L1 at MSBDN-small's initial weights and L_sem is small beside L_nat, hence the larger λ.
KNOB_GRIDS: dict[str, tuple[tuple[float, float, tuple[int, int] | None], ...]] = {
    "tiny": ((0.3, 1e-3, None), (1.0, 1e-3, None), (3.0, 1e-3, None),
             (0.3, 1e-3, (0, 200)), (1.0, 1e-3, (0, 200)), (3.0, 1e-3, (0, 200)),
             (1.0, 1.0, (0, 200)), (3.0, 0.03, (0, 200)), (3.0, 0.1, (0, 200)), (3.0, 0.3, (0, 200))),
    "ffdnet": ((0.3, 0.03, (0, 167)), (1.0, 0.03, (0, 167)), (3.0, 0.03, (0, 167)),
               (0.3, 0.03, (0, 60)), (1.0, 0.03, (0, 60)),
               (1.0, 3.0, (0, 167)), (1.0, 30.0, (0, 167)),
               # λ = 30 won at the grid's edge: then one step further, and γ around it
               (1.0, 300.0, (0, 167)), (0.3, 30.0, (0, 167)), (3.0, 30.0, (0, 167))),
}

#: IAT's own LOL recipe (cuiziteng/Illumination-Adaptive-Transformer, IAT_enhance/train_lol_v1_patch.py):
#: Adam, lr 2e-4, weight decay 4e-4 (Adam's L2), no gradient clipping, CosineAnnealingLR(T_max=200)
#: stepped every iteration, which over this chapter's 200 steps is one half cosine to 0. Its batch
#: of 8 is not copied (the profile's 4, for the budget).
IAT_RECIPE: dict[str, Any] = {"lr": 2e-4, "weight_decay": 4e-4, "schedule": "cosine", "warmup": 0,
                              "min_lr": 0.0, "grad_clip": None}
#: The low-light ablation (``lowlight``): label → (judge, loss, recipe, IAT's train_clamp, ρ). One
#: factor at a time against the first DiffLoss row (the profile's recipe, the authors' hard clamps,
#: the FFDNet judge, ρ*): L1 and DiffLoss under each recipe and clamp (the leaky clamps, added after
#: the straight-through ones diverged, under the profile's recipe only: IAT's own recipe was far
#: below the profile's for L1 in 200 steps), then the judge, ρ and the perceptual term at the same
#: pull, with the hard and with the leaky clamps.
LOWLIGHT_ROWS: dict[str, tuple[str, str, str, str, float | None]] = {
    f"{loss_label}, {recipe} recipe, {clamp} clamp": (
        "ffdnet", loss, recipe, clamp, None if loss == "l1" else 30.0)
    for loss_label, loss in (("L1", "l1"), ("DiffLoss", "l1+diffloss"))
    for recipe, clamps in (("profile", ("hard", "straight-through-output", "straight-through", "leaky-output",
                                        "leaky")),
                           ("iat", ("hard", "straight-through-output", "straight-through")))
    for clamp in clamps
}
for _clamp in ("hard", "leaky"):
    LOWLIGHT_ROWS.update({
        f"DiffLoss (tiny judge), profile recipe, {_clamp} clamp": ("tiny", "l1+diffloss", "profile", _clamp, 30.0),
        f"DiffLoss ρ 3, profile recipe, {_clamp} clamp": ("ffdnet", "l1+diffloss", "profile", _clamp, 3.0),
        f"perceptual ρ 30, profile recipe, {_clamp} clamp": ("ffdnet", "l1+perceptual", "profile", _clamp, 30.0),
    })


def judge_prior(profile: Any, judge: str | None) -> tuple[str, Any]:
    """(name, prior) of the judge: the profile's own (``profile.judge``) or the one named."""
    judge = judge or profile.judge
    return judge, load_profile_judge(profile) if judge == profile.judge else load_prior(judge)


def _git(*args: str) -> str:
    res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return res.stdout.strip()


#: The code the numbers come from, read when the run starts (the tree may change while it runs).
START = {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "diffloss"))}


def provenance(argv: list[str], t0: float, **extra: Any) -> dict[str, Any]:
    """Who made these numbers, how and where."""

    return {"command": "python tools/experiments.py " + shlex.join(argv),
            "commit": START["commit"], "dirty_diffloss_at_start": START["dirty"],
            "machine": machine_description(),
            "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "prior_train_region": _shipped_prior_region(), **extra}


def _shipped_prior_region() -> Any:
    """The shipped tiny prior's training region, from its provenance (None: not recorded)."""
    from importlib.resources import files

    info = json.loads(files("diffloss").joinpath("assets/tiny_prior/provenance.json").read_text())
    return info.get("train_region", {}).get("rule")


def knobs(args: argparse.Namespace, argv: list[str]) -> Path:
    t0 = time.perf_counter()
    profile = profiles.get(args.profile)
    judge, prior = judge_prior(profile, args.judge)
    base = TrainConfig.for_profile(profile, None, "cpu", seed=args.seed, eval_every=0, prior=judge)
    tmp = ROOT / "runs" / f"knobs_{profile.name}_{judge}"

    from diffloss.parallel import train_in_processes
    from diffloss.training import build_datasets, evaluate

    def val_scores(configs: list[TrainConfig]) -> list[dict[str, float]]:
        """Train the configs (``--parallel`` at a time, each in a one-thread process: the same
        bits as one after the other) and score each on the validation split only."""
        runs = (train_in_processes(configs, prior=prior, processes=args.parallel)
                if args.parallel > 1 else ((train(c, overwrite=True, prior=prior, progress=False), 0.0)
                                           for c in configs))
        scores = []
        for config, (h, _) in zip(configs, runs):
            v = evaluate(h.model, build_datasets(config).val)
            scores.append({"val_psnr": v.psnr, "val_ssim": v.ssim})
            print(config.out, scores[-1], flush=True)
        return scores

    out = ROOT / "results" / f"{results_name('04_knobs', profile.name, judge)}.json"
    earlier = json.loads(out.read_text()) if args.extend and out.exists() else None
    grid = list(earlier["grid"]) if earlier is not None else []  # deterministic: keep what is measured
    done = {(r["gamma"], r["lambda_sem"], tuple(r["t_range"]) if r["t_range"] else None)
            for r in grid}
    todo = [k for k in KNOB_GRIDS[judge] if k not in done]
    configs = [base.replace(loss="l1+diffloss", gamma=gamma, lambda_sem=lam, t_range=t_range,
                            out=str(tmp / f"g{gamma}_l{lam}_t{t_range}")) for gamma, lam, t_range in todo]
    if earlier is None:
        configs.insert(0, base.replace(loss="l1", out=str(tmp / "l1")))
    scores = val_scores(configs)
    l1 = earlier["l1"] if earlier is not None else scores.pop(0)
    print(f"L1: {l1}", flush=True)
    for (gamma, lam, t_range), score in zip(todo, scores):
        grid.append({"gamma": gamma, "lambda_sem": lam, "t_range": list(t_range) if t_range else None,
                     **score})
    chosen = max(grid, key=lambda r: r["val_psnr"])
    out.parent.mkdir(exist_ok=True)
    record = {"judge": judge, "l1": l1, "grid": grid, "chosen": chosen, "selection": "max val_psnr",
              "provenance": provenance(argv, t0, seed=args.seed, steps=base.iterations)}
    if earlier is not None:
        record["provenance"]["extends"] = earlier["provenance"]
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out


def medium(args: argparse.Namespace, argv: list[str]) -> Path:
    t0 = time.perf_counter()
    profile = profiles.get(args.profile)
    prior = load_profile_judge(profile)
    out = ROOT / "results" / f"04_medium_{profile.name}"
    runs = ROOT / "runs" / f"medium_{profile.name}"
    base = TrainConfig.for_profile(profile, None, "cpu", iterations=args.steps,
                                   eval_every=args.eval_every)
    for seed in args.seeds:
        for loss in ("l1", "l1+diffloss"):
            folder = runs / f"{loss}_seed{seed}"
            h = train(base.replace(loss=loss, seed=seed, out=str(folder)), overwrite=True,
                      prior=prior, progress=False)
            dest = out / folder.name
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "history.json", "history.csv"):
                shutil.copy2(folder / name, dest / name)
            print(f"seed {seed} {loss}: final test PSNR {h.final['test_psnr']:.2f} dB "
                  f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
    (out / "provenance.json").write_text(json.dumps(provenance(
        argv, t0, seeds=list(args.seeds), steps=args.steps), indent=1) + "\n")
    return out


def cheaper(args: argparse.Namespace, argv: list[str]) -> Path:
    from diffloss.diagnostics import paired_differences

    t0 = time.perf_counter()
    profile = profiles.get(args.profile)
    prior = load_profile_judge(profile)
    base = TrainConfig.for_profile(profile, None, "cpu")
    base = base.replace(eval_every=base.iterations)  # score the test splits at the end only
    options = {"L1": dict(loss="l1"), "full DiffLoss": dict(loss="l1+diffloss"),
               "1/4 of the batch": dict(loss="l1+diffloss", diffloss_fraction=0.25),
               "1/4 of the steps": dict(loss="l1+diffloss", diffloss_every=4),
               f"prior crops {prior.sample_size // 2}²": dict(loss="l1+diffloss",
                                                              prior_size=prior.sample_size // 2)}
    finals: dict[str, dict[str, list[float]]] = {}
    for name, kw in options.items():
        for seed in args.seeds:
            folder = ROOT / "runs" / f"cheaper_{profile.name}" / f"{name.replace('/', '_')}_{seed}"
            t1 = time.perf_counter()
            h = train(base.replace(seed=seed, out=str(folder), **kw), overwrite=True, prior=prior,
                      progress=False)
            f = h.final
            for key in ("test_psnr", "test_ssim", "ood_psnr", "ood_ssim"):
                finals.setdefault(name, {}).setdefault(key, []).append(f[key])
            finals[name].setdefault("seconds", []).append(time.perf_counter() - t1)
            print(f"{name}, seed {seed}: {f['test_psnr']:.2f} dB ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    table = {name: {"final": v,
                    "vs_full": {k: paired_differences(finals["full DiffLoss"][k], v[k])
                                for k in ("test_psnr", "test_ssim", "ood_psnr", "ood_ssim")},
                    "vs_l1": {k: paired_differences(finals["L1"][k], v[k])
                              for k in ("test_psnr", "test_ssim", "ood_psnr", "ood_ssim")}}
             for name, v in finals.items()}
    out = ROOT / "results" / f"cheaper_diffloss_{profile.name}.json"
    out.write_text(json.dumps({"options": {k: {kk: (list(vv) if isinstance(vv, tuple) else vv)
                                                for kk, vv in o.items()} for k, o in options.items()},
                               "table": table,
                               "provenance": provenance(argv, t0, seeds=list(args.seeds),
                                                        steps=base.iterations)}, indent=1) + "\n")
    return out


def rho(args: argparse.Namespace, argv: list[str]) -> Path:
    """The default ρ of ``gamma="auto"``, from haze validation: the pull of the knob sweep's best
    γ (``results/04_knobs_<profile>.json``, chosen on validation only) at the initial weights,
    measured as the trainer's rule measures it (its first batches, the median), on each seed."""
    import statistics

    from diffloss.training.balance import initial_pull

    t0 = time.perf_counter()
    profile = profiles.get(args.profile)
    judge, prior = judge_prior(profile, args.judge)
    knobs = json.loads((ROOT / "results" / f"{results_name('04_knobs', profile.name, judge)}.json")
                       .read_text())["chosen"]
    rows = []
    for seed in args.seeds:
        config = TrainConfig.for_profile(profile, None, "cpu", seed=seed, loss="l1+diffloss", prior=judge,
                                         gamma=knobs["gamma"], lambda_sem=knobs["lambda_sem"],
                                         t_range=knobs["t_range"])
        b = initial_pull(config, prior)  # as the trainer's gamma="auto" measures
        rows.append({"seed": seed, "ratios": b.ratios, "median_ratio": statistics.median(b.ratios),
                     "pull_at_chosen_gamma": b.pull(knobs["gamma"])})
        print(rows[-1], flush=True)
    pull = statistics.mean(r["pull_at_chosen_gamma"] for r in rows)
    out = ROOT / "results" / f"{results_name('rho', profile.name, judge)}.json"
    out.write_text(json.dumps({
        "judge": judge, "chosen_knobs": knobs, "model": config.model, "task": "dehaze (synthetic)", "seeds": rows,
        "mean_pull": pull, "rho": float(f"{pull:.1g}"),
        "rule": "rho = the mean over seeds of gamma_chosen * median(|grad diffloss| / |grad l1|) "
                "on the first AUTO_BATCHES training batches at the initial weights, to 1 significant digit",
        "provenance": provenance(argv, t0, seeds=list(args.seeds))}, indent=1) + "\n")
    return out


def lowlight(args: argparse.Namespace, argv: list[str]) -> Path:
    """The low-light ablation (module docstring): every row of :data:`LOWLIGHT_ROWS` (or those in
    ``--rows``) on each seed, scored on the validation split only."""
    from diffloss.experiments import run_paired
    from diffloss.models.iat_state import iat_state
    from diffloss.tasks import TASKS
    from diffloss.training import build_datasets

    t0 = time.perf_counter()
    profile = profiles.get(args.profile)
    assets = profiles.require_assets(profile, task="lowlight")
    steps = profile.train_iters // 2 if profile.name == "small" else profile.train_iters  # chapter 06's
    base = TrainConfig.for_profile(profile, assets, "cpu", iterations=steps)
    try:  # chapter 05's perceptual network: VGG16 where its weights are cached, else EfficientNet-Lite0
        from diffloss.weights import fetch_vgg16_weights
        fetch_vgg16_weights(progress=False)
        per = {"perceptual_net": "vgg16"}
    except FileNotFoundError:
        per = {"perceptual_net": "efficientnet-lite0", "vgg_weights": None}
    out = ROOT / "results" / f"06_lowlight_ablation_{profile.name}.json"
    earlier = json.loads(out.read_text()) if out.exists() and args.extend else {"rows": {}}
    todo = [r for r in (args.rows or LOWLIGHT_ROWS) if r not in earlier["rows"] or not args.extend]
    unknown = [r for r in todo if r not in LOWLIGHT_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; the rows are: {list(LOWLIGHT_ROWS)}")
    val = build_datasets(base).val
    rows = dict(earlier["rows"])
    for judge in sorted({LOWLIGHT_ROWS[r][0] for r in todo}):
        prior = load_prior(judge)
        losses = {}
        for label in (r for r in todo if LOWLIGHT_ROWS[r][0] == judge):
            _, loss, recipe, clamp, rho_ = LOWLIGHT_ROWS[label]
            changes: dict[str, Any] = {"loss": loss, "prior": judge, "model_kwargs": {"train_clamp": clamp}}
            if recipe == "iat":
                changes.update(IAT_RECIPE)
            if rho_ is not None:
                changes.update(gamma="auto", rho=rho_)
            if judge == "tiny":
                changes.update(lambda_sem=profiles.TINY_KNOBS["lambda_sem"], t_range=profiles.TINY_KNOBS["t_range"])
            if loss == "l1+perceptual":
                changes.update(per)
            losses[label] = changes
        histories = run_paired(base, losses, args.seeds, ROOT / "runs" / f"ablation_lowlight_{profile.name}",
                               prior=prior, parallel=args.parallel)
        for label, changes in losses.items():
            seeds = []
            for s in args.seeds:
                h = histories[label, s]
                state = iat_state(h.model, (val[i][0] for i in range(len(val))))
                final = h.rows[-1] if h.rows else {}
                seeds.append({"seed": s, "best_val_psnr": h.best["val_psnr"] if h.best else None,
                              "best_val_ssim": h.best.get("val_ssim") if h.best else None,
                              "final_val_psnr": final.get("val_psnr"), "final_val_ssim": final.get("val_ssim"),
                              "gamma": (h.config.auto_gamma or {}) or h.config.gamma,
                              "collapse": h.meta.get("collapse"),
                              "diverged": ({"step": h.meta["diverged"]["step"],  # no path of this machine
                                            "message": h.meta["diverged"]["message"].replace(f"{ROOT}/", "")}
                                           if h.meta.get("diverged") else None),
                              "iat_state": state})
                print(f"{label}, seed {s}: best val {seeds[-1]['best_val_psnr']}, {state['label']}", flush=True)
            judge_, loss, recipe, clamp, rho_ = LOWLIGHT_ROWS[label]
            rows[label] = {"judge": judge_, "loss": loss, "recipe": recipe, "train_clamp": clamp, "rho": rho_,
                           "changes": {k: v for k, v in changes.items() if k != "model_kwargs"}, "seeds": seeds}
    record = {"task": "lowlight (synthetic)", "model": base.model, "steps": steps, "seeds": list(args.seeds),
              "metric_space": TASKS["lowlight"].metric_space, "val_images": len(val),
              "iat_recipe": IAT_RECIPE, "iat_recipe_source": "cuiziteng/Illumination-Adaptive-Transformer, "
              "IAT_enhance/train_lol_v1_patch.py (batch 8 not copied: the profile's batch)",
              "rows": rows, "provenance": provenance(argv, t0, seeds=list(args.seeds))}
    if "provenance" in earlier:
        record["provenance"]["extends"] = earlier["provenance"]
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("knobs", help="choose γ, λ, t_range on the validation split")
    k.add_argument("--profile", default="small")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--judge", choices=sorted(KNOB_GRIDS), default=None,
                   help="the prior DiffLoss judges with (default: the profile's judge)")
    k.add_argument("--parallel", type=int, default=2,
                   help="runs at a time, each in a process of its own (1: one after the other)")
    k.add_argument("--extend", action="store_true",
                   help="keep the rows of the committed sweep, run only the new grid rows")
    m = sub.add_parser("medium", help="the profile's recipe, longer, on several seeds")
    m.add_argument("--profile", default="small")
    m.add_argument("--steps", type=int, default=2000)
    m.add_argument("--eval-every", type=int, default=200)
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c = sub.add_parser("cheaper", help="cheaper DiffLoss options against full DiffLoss and L1")
    c.add_argument("--profile", default="small")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r = sub.add_parser("rho", help="the default rho of gamma='auto', from the sweep's best gamma")
    r.add_argument("--profile", default="small")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--judge", choices=sorted(KNOB_GRIDS), default=None,
                   help="the prior DiffLoss judges with (default: the profile's judge)")
    lo = sub.add_parser("lowlight", help="why DiffLoss collapses IAT: one factor at a time, on validation")
    lo.add_argument("--profile", default="small")
    lo.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    lo.add_argument("--rows", nargs="+", default=None, help="only these rows of LOWLIGHT_ROWS")
    lo.add_argument("--parallel", type=int, default=2)
    lo.add_argument("--extend", action="store_true", help="keep the committed rows, run only the missing ones")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"knobs": knobs, "medium": medium, "cheaper": cheaper, "rho": rho,
           "lowlight": lowlight}[args.command](args, argv)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
