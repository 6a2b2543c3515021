"""Write the README's results section from the committed results files.

Every number in the section between the markers

    <!-- results: begin (written by tools/readme_results.py; do not edit by hand) -->
    <!-- results: end -->

comes from one of these files, read here and nowhere typed:

- ``figures/04_results.json``: chapter 04 (MSBDN with and without DiffLoss, paired seeds, its checks);
- ``results/04_knobs_small_ffdnet.json`` and ``results/rho_small_ffdnet.json``: the knob sweep on
  validation that chose λ and the t range with the FFDNet judge, and the γ rule's ρ* from it;
- ``results/04_small_tiny_judge.json``: chapter 04 as run before FFDNet judged (the tiny prior);
- ``results/04_medium_small/``: the longer run (histories and provenance);
- ``figures/05_results.json``: chapter 05 (the loss comparison);
- ``figures/06_results.json``: chapter 06 (low light and rain).

Verdict words are :func:`diffloss.experiments.verdict`'s, the chapters' own rule.

    python tools/readme_results.py          # rewrite the section in README.md
    python tools/readme_results.py --check  # exit 1 (and show the difference) when README.md disagrees

``tests/test_readme_results.py`` runs the check.
"""

from __future__ import annotations

import difflib
import json
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffloss.diagnostics import paired_differences  # noqa: E402
from diffloss.experiments import MIN_EFFECT, verdict  # noqa: E402
from diffloss.profiles import PROFILES  # noqa: E402

BEGIN = "<!-- results: begin (written by tools/readme_results.py; do not edit by hand) -->"
END = "<!-- results: end -->"
SPLITS = {"in_distribution": "in-distribution", "out_of_distribution": "out of distribution"}


def load(rel: str) -> Any:
    path = ROOT / rel
    if not path.exists():
        raise SystemExit(f"readme_results: {rel} is missing; execute the chapter that writes it "
                         "(or restore it from git) and run this again")
    return json.loads(path.read_text())


def mean(values: list[float]) -> float:
    return statistics.mean(values)


def signed(x: float, unit: str = "", digits: int = 2) -> str:
    return f"{x:+.{digits}f}{unit}"


def pm(d: dict[str, Any], digits: int = 2, unit: str = "") -> str:
    """``mean ± sd`` of a paired difference."""
    sd = f" ± {d['sd']:.{digits}f}" if d.get("sd") is not None else ""
    return f"{d['mean']:+.{digits}f}{sd}{unit}"


def signs(d: dict[str, Any]) -> str:
    return "".join("+" if v > 0 else "−" for v in d["per_seed"])


def say(d: dict[str, Any], metric: str) -> str:
    """The chapters' verdict on a paired difference of PSNR (dB) or SSIM."""
    unit = " dB" if metric == "psnr" else ""
    return verdict(d, unit, True, MIN_EFFECT[metric])


def made_on(r: dict[str, Any]) -> str:
    m = r.get("made_on")
    if not m:
        return "machine not recorded in the file"
    cpu = m["machine"].split(",")[0]
    where = cpu if m.get("device", "cpu") == "cpu" else m["device"]
    return f"{where}, {m['date']}"


def knobs_of(config: dict[str, Any]) -> str:
    t = config.get("t_range")
    trange = f"t ≤ {t[1]}" if t else "every t"
    gamma = config["gamma"]
    if gamma == "auto":
        rho = config.get("rho")
        gamma = "by the rule" + (f" at ρ = {rho:g}" if rho is not None else "")
    else:
        gamma = f"= {gamma:g}"
    return f"γ {gamma}, λ = {config['lambda_sem']:g}, {trange}"


def chapter04() -> list[str]:
    r = load("figures/04_results.json")
    cfg = r["configs"]["L1 + DiffLoss"]
    ind, ood = r["splits"]["in_distribution"], r["splits"]["out_of_distribution"]
    n, n_ood = len(r["seeds"]), len(ood["images"])
    out = [
        f"The figures in `figures/` are written by the notebooks; each is stamped with the profile "
        f"that made it. The committed ones come from the `{r['profile']}` profile "
        f"({made_on(r)}): {cfg['model']}, synthetic haze, {cfg['iterations']} steps of {cfg['batch']} "
        f"crops of {cfg['crop']}², {n} paired seeds; DiffLoss judged by "
        f"{ {'ffdnet': 'FFDNet'}.get(r['judge'], r['judge'])} (trained on other "
        "photos; chapter 02, section 6), and by the tiny prior as a third arm. "
        "`figures/04_results.json` holds every number of the first bullets.",
        "",
    ]
    g_in = mean(ind["l1"]["psnr"]) - ind["hazy"]["psnr"]
    line = (f"- **The L1 baseline** scores {mean(ind['l1']['psnr']):.2f} dB against "
            f"{ind['hazy']['psnr']:.2f} dB for the hazy input on the in-distribution test split "
            f"({signed(g_in, ' dB', 1)}, mean of {n} seeds); on the {n_ood} unseen scenes "
            f"{mean(ood['l1']['psnr']):.2f} dB against {ood['hazy']['psnr']:.2f} dB")
    ssim_l1, ssim_dl, ssim_in = mean(ood["l1"]["ssim"]), mean(ood["l1+diffloss"]["ssim"]), ood["hazy"]["ssim"]
    if ssim_l1 < ssim_in:
        line += (f", but with a lower SSIM than the hazy input ({ssim_l1:.2f} against {ssim_in:.2f}; "
                 f"with DiffLoss {ssim_dl:.2f}, means over seeds)")
    checks = r.get("checks", {})
    below = checks.get("ssim_seeds_below_input")
    if below:
        parts = [f"{SPLITS[s]}: " + ", ".join(f"{label} {k} of {n}" for label, k in by.items())
                 for s, by in below.items()]
        line += "; seeds whose SSIM is below the hazy input's: " + "; ".join(parts)
    worst = checks.get("worst_image")
    if worst:
        verb = "makes worse" if worst["psnr"]["L1"] < worst["input_psnr"] else "helps least"
        line += (f". The image L1 {verb} (seed {worst['seed']}): `{worst['name']}` "
                 f"({SPLITS[worst['split']]}), hazy {worst['input_psnr']:.1f} dB → "
                 + ", ".join(f"{label} {v:.1f} dB" for label, v in worst["psnr"].items()))
    out.append(line + ".")

    def artefact_share(split: dict[str, Any]) -> float:
        return mean(split["l1+diffloss"]["artefacts"]) / mean(split["l1"]["artefacts"])

    def per_scene(key: str) -> str:
        d = [mean([a - b for a, b in zip(x, y)]) for x, y in
             zip(zip(*ood[key]["psnr_per_image"]), zip(*ood["l1"]["psnr_per_image"]))]
        return ", ".join(f"{name} {v:+.2f}" for name, v in zip(ood["images"], d))

    gammas = ", ".join(f"{g:.3g}" for g in r["auto_gamma"]["L1 + DiffLoss"])
    out.append(
        f"- **L1 + DiffLoss (FFDNet) against L1** ({knobs_of(cfg)}: γ = {gammas} by seed; λ and t chosen "
        f"on the validation split), paired differences, mean ± sd over seeds: in-distribution PSNR "
        f"{say(ind['paired_difference']['psnr'], 'psnr')}, SSIM {say(ind['paired_difference']['ssim'], 'ssim')}; "
        f"out of distribution ({n_ood} scenes) PSNR {say(ood['paired_difference']['psnr'], 'psnr')}, SSIM "
        f"{say(ood['paired_difference']['ssim'], 'ssim')}; per scene, mean over seeds: {per_scene('l1+diffloss')} dB. "
        f"The energy of the error above ¼ cycle/pixel "
        f"(checkerboard artefacts, but also detail a blurry output lost) is {artefact_share(ind):.0%} "
        f"of L1's in-distribution and {artefact_share(ood):.0%} out of distribution. FFDNet's "
        "own denoising loss on the restorations, relative to the ground truth's (0 = as natural; below 0: "
        f"smoother to it), is {'lower' if ind['paired_difference']['prior_loss']['mean'] < 0 else 'higher'} "
        f"with DiffLoss ({pm(ind['paired_difference']['prior_loss'], 4)} in-distribution), which is circular: "
        "DiffLoss trains against the same judge"
        + (f"; it gives the hazy input {checks['prior_loss_input']['in_distribution']:+.4f}, "
           f"against {mean(ind['l1']['prior_loss']):+.4f} for L1 and {mean(ind['l1+diffloss']['prior_loss']):+.4f} "
           "with DiffLoss" if checks.get("prior_loss_input") else "")
        + ".")
    if "paired_difference_tiny" in ind:
        tcfg = r["configs"]["L1 + DiffLoss (tiny prior)"]
        val = checks.get("val_psnr_final", {})
        dv = {k: paired_differences(val["L1"], val[k]) for k in ("L1 + DiffLoss", "L1 + DiffLoss (tiny prior)")} \
            if val else {}
        out.append(
            f"- **Judged by the tiny prior instead** (the third arm, {knobs_of(tcfg)}, its knobs chosen earlier "
            "on the validation split it had trained on): in-distribution PSNR "
            f"{say(ind['paired_difference_tiny']['psnr'], 'psnr')}, SSIM "
            f"{say(ind['paired_difference_tiny']['ssim'], 'ssim')}; out of distribution PSNR "
            f"{say(ood['paired_difference_tiny']['psnr'], 'psnr')}, SSIM "
            f"{say(ood['paired_difference_tiny']['ssim'], 'ssim')}; per scene {per_scene('l1+diffloss_tiny')} dB."
            + (f" On validation the gains over L1 are {pm(dv['L1 + DiffLoss'])} dB (FFDNet) and "
               f"{pm(dv['L1 + DiffLoss (tiny prior)'])} dB (tiny prior), against "
               f"{pm(ind['paired_difference']['psnr'])} and {pm(ind['paired_difference_tiny']['psnr'])} dB "
               "on the in-distribution test split." if dv else ""))
    out.append(knob_sweep(r))
    out.append(judge_change(r))
    out.append(longer_run())
    return out


def knob_sweep(r: dict[str, Any]) -> str:
    name = f"results/04_knobs_small_{r['judge']}.json"
    k = load(name)
    grid = k["grid"]
    ranked = sorted(grid, key=lambda g: g["val_psnr"], reverse=True)
    gap = ranked[0]["val_psnr"] - ranked[1]["val_psnr"]
    vals = r.get("checks", {}).get("val_psnr_final", {}).get("L1 + DiffLoss")
    spread = (f"; this chapter's {len(vals)} seeds at the chosen λ and t, γ by the rule, spread by "
              f"{statistics.stdev(vals):.2f} dB (sd) of validation PSNR, a spread that mixes seed and γ") \
        if vals and len(vals) > 1 else ""
    rho = load(f"results/rho_small_{r['judge']}.json")
    prov = k["provenance"]
    return (f"- **The knobs** (`{name}`, one seed, {prov['steps']} steps per setting, "
            f"{prov['machine'].split(',')[0]}, {prov['date'][:10]}): validation PSNR "
            + ", ".join(f"{g['val_psnr']:.2f} dB at {knobs_of(g)}" for g in ranked)
            + f"; L1 {k['l1']['val_psnr']:.2f} dB. The chosen setting beats the next best by {gap:.2f} dB"
            + spread + f". Its γ pulls {rho['mean_pull']:.2g}× L1 at the initial weights (median over "
            f"{len(rho['seeds'][0]['ratios'])} batches, mean of "
            + ", ".join(f"{v['pull_at_chosen_gamma']:.1f}" for v in rho["seeds"])
            + f" by seed, `results/rho_small_{r['judge']}.json`): the γ rule's ρ* = {rho['rho']:g}.")


def judge_change(r: dict[str, Any]) -> str:
    old = load("results/04_small_tiny_judge.json")
    new_in, new_ood = (r["splits"][s]["paired_difference"]["psnr"] for s in SPLITS)
    old_in, old_ood = (old["splits"][s]["paired_difference"]["psnr"] for s in SPLITS)
    old_cfg = old["configs"]["L1 + DiffLoss"]
    old_val = old["checks"]["val_psnr_final"]
    d_old_val = paired_differences(old_val["L1"], old_val["L1 + DiffLoss"])
    return (f"- **What the judge changed** (`results/04_small_tiny_judge.json`: this chapter as run "
            f"before on {old['made_on']['date']}, judged by the tiny prior, {knobs_of(old_cfg)}, "
            "two unseen scenes): DiffLoss's PSNR gain was "
            f"{pm(d_old_val)} dB on validation, {pm(old_in)} dB in-distribution and {pm(old_ood)} dB out of "
            f"distribution; judged by FFDNet, {pm(new_in)} dB in-distribution and {pm(new_ood)} dB out of "
            f"distribution ({len(r['splits']['out_of_distribution']['images'])} scenes).")


def longer_run() -> str:
    base = ROOT / "results" / "04_medium_small"
    prov = load("results/04_medium_small/provenance.json")
    final: dict[str, dict[str, list[float]]] = {}
    lam = None
    for seed in prov["seeds"]:
        for loss in ("l1", "l1+diffloss"):
            h = json.loads((base / f"{loss}_seed{seed}" / "history.json").read_text())
            row = h["rows"][-1]
            for m in ("test_psnr", "ood_psnr", "test_ssim", "ood_ssim"):
                final.setdefault(loss, {}).setdefault(m, []).append(row[m])
            if loss == "l1+diffloss":
                lam = h["config"]["lambda_sem"]
    d = {m: paired_differences(final["l1"][m], final["l1+diffloss"][m])
         for m in ("test_psnr", "ood_psnr", "test_ssim", "ood_ssim")}
    per = {m: ", ".join(f"{v:+.2f}" for v in d[m]["per_seed"]) for m in d}
    return (f"- **In a longer run** ({prov['steps']:,} steps, {len(prov['seeds'])} seeds, committed in "
            f"`results/04_medium_small/` by commit {prov['commit'][:7]} on {prov['date'][:10]}, "
            f"{prov['machine'].split(',')[0]}: made with the earlier tiny prior as the judge, λ = {lam:g} "
            "and the two unseen scenes of its time, not re-run; "
            "plotted in chapter 04 against the fraction of its schedule) SSIM in-distribution: "
            f"{say(d['test_ssim'], 'ssim')}, out of distribution {say(d['ood_ssim'], 'ssim')}; the "
            f"PSNR differences by seed are {per['test_psnr']} dB in-distribution and "
            f"{per['ood_psnr']} dB out of distribution, that is: in-distribution "
            f"{say(d['test_psnr'], 'psnr')}, out of distribution {say(d['ood_psnr'], 'psnr')}.")


def chapter05() -> str:
    r = load("figures/05_results.json")
    ind, ood = r["splits"]["in_distribution"], r["splits"]["out_of_distribution"]
    dl, n = "L1 + DiffLoss", len(r["seeds"])
    per = next(label for label in r["gammas"] if "VGG" in label or "perceptual" in label)
    adv = "L1 + adversarial"
    g = r["gammas"]
    text = (f"- **Against the other losses** (chapter 05, `figures/05_results.json`; {made_on(r)}; "
            f"{r['steps']} steps, {n} paired seeds, every extra term at the weight where it pulls on "
            "the network as hard as DiffLoss at "
            f"γ = {g[dl]['used']:g} at initialisation): L1 + DiffLoss: in-distribution PSNR "
            f"{say(ind['paired_difference'][dl]['psnr'], 'psnr')}, SSIM "
            f"{say(ind['paired_difference'][dl]['ssim'], 'ssim')}; out of distribution "
            f"({len(ood.get('images', [])) or '?'} scenes) PSNR "
            f"{say(ood['paired_difference'][dl]['psnr'], 'psnr')}, SSIM "
            f"{say(ood['paired_difference'][dl]['ssim'], 'ssim')}.")
    for split, s in (("in-distribution", ind), ("out of distribution", ood)):
        below = {label: sum(v < s["input"]["ssim"] for v in vals["ssim"]) for label, vals in s["per_seed"].items()}
        if any(below.values()):
            text += (f" {split.capitalize()}, runs below the hazy input's SSIM ({s['input']['ssim']:.3f}): "
                     + ", ".join(f"{label} {k} of {n}" for label, k in below.items()) + ".")
    if "perceptual_vs_diffloss" in ind:
        text += (f" The perceptual term against DiffLoss, seed by seed: in-distribution PSNR "
                 f"{ind['perceptual_vs_diffloss']['psnr']}, colour error {ind['perceptual_vs_diffloss']['color']}; "
                 f"out of distribution PSNR {ood['perceptual_vs_diffloss']['psnr']}, colour error "
                 f"{ood['perceptual_vs_diffloss']['color']}.")
    if r.get("perceptual_net") == "efficientnet-lite0":
        text += (f" Offline there are no ImageNet VGG16 weights, so the perceptual term is Eq. 5 on "
                 f"**ImageNet EfficientNet-Lite0 features** (a real perceptual loss, not the paper's "
                 f"VGG16; γ = {g[per]['used']:.3g}): in-distribution PSNR "
                 f"{say(ind['paired_difference'][per]['psnr'], 'psnr')}, SSIM "
                 f"{say(ind['paired_difference'][per]['ssim'], 'ssim')}; out of distribution PSNR "
                 f"{say(ood['paired_difference'][per]['psnr'], 'psnr')}, SSIM "
                 f"{say(ood['paired_difference'][per]['ssim'], 'ssim')}.")
    elif not r["vgg16_imagenet_weights"]:
        text += (f" Offline there are no ImageNet VGG16 weights, so the perceptual term is a "
                 f"**random-VGG control** (γ = {g[per]['used']:.3g}): PSNR "
                 f"{say(ind['paired_difference'][per]['psnr'], 'psnr')} and SSIM "
                 f"{say(ind['paired_difference'][per]['ssim'], 'ssim')} in-distribution; this says "
                 "nothing about the perceptual loss itself.")
    else:
        text += (f" The perceptual term (VGG16, ImageNet; γ = {g[per]['used']:.3g}): PSNR "
                 f"{say(ind['paired_difference'][per]['psnr'], 'psnr')}, SSIM "
                 f"{say(ind['paired_difference'][per]['ssim'], 'ssim')} in-distribution.")
    text += (f" The adversarial term at the matched weight (γ = {g[adv]['used']:.3g}, against the "
             f"paper's {g[adv]['paper']:g}): in-distribution PSNR "
             f"{say(ind['paired_difference'][adv]['psnr'], 'psnr')}")
    by_seed = r.get("adversarial_by_seed")
    if by_seed:
        steps = [v["separated_from_step"] for v in by_seed.values()]
        growth = [v["term_last"] / v["term_first"] for v in by_seed.values()]
        sep = ", ".join("never" if s is None else str(s) for s in steps)
        text += (f"; its discriminator separates real from restored (D(x) − D(z) > 0.9) from step "
                 f"{sep} by seed, and −log D(z) grows ×{min(growth):.0f}–×{max(growth):.0f} over the run")
    text += (". Matching pulls at step 1 is a fair rule for fixed terms, not for a loss whose judge "
             "learns.")
    return text


def chapter06() -> str:
    r = load("figures/06_results.json")
    low, rain = r["tasks"]["lowlight"], r["tasks"]["derain"]
    n = len(r["seeds"])

    def pulls(v: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in v)

    text = (f"- **Beyond haze** (chapter 06, `figures/06_results.json`; {made_on(r)}; {r['steps']} "
            f"steps, {n} paired seeds, `{r['profile']}` profile): at the haze γ DiffLoss's pull on "
            f"the network at the start is {pulls(low['pull_at_haze_gamma'])} on IAT by seed, against "
            + (f"{pulls(r['dehaze_pull_at_haze_gamma'])} on haze's MSBDN and "
               if r.get("dehaze_pull_at_haze_gamma") else "")
            + f"{pulls(rain['pull_at_haze_gamma'])} on rain's.")
    for entry, name in ((rain, "synthetic rain"), (low, "synthetic low light")):
        ind = entry["splits"]["in_distribution"]
        ood = entry["splits"]["out_of_distribution"]
        l1_gain = [v - ind["input"]["psnr"] for v in ind["final"]["L1"]["psnr"]]
        text += (f" On **{name}** ({entry['model']}, {entry['metric_space']} PSNR) L1 gains "
                 + ", ".join(f"{g:+.1f}" for g in l1_gain) + " dB over the input by seed (in-distribution).")
        for label in ("DiffLoss, haze γ", "DiffLoss, rule"):
            di = ind["final"]["paired_difference"][label]
            do = ood["final"]["paired_difference"][label]
            collapsed = [c["seed"] for c in entry["collapsed"] if c["loss"] == label]
            text += (f" {label}" + (f" (γ = {', '.join(f'{g:.2g}' for g in entry['rule_gamma'])} by seed)"
                                     if label.endswith("rule") else "")
                     + f": in-distribution PSNR {say(di['psnr'], 'psnr')}, SSIM {say(di['ssim'], 'ssim')}; "
                     f"out of distribution PSNR {say(do['psnr'], 'psnr')}, SSIM {say(do['ssim'], 'ssim')}; "
                     f"flagged as collapsed by the trainer in {len(collapsed)} of {n} seeds"
                     + (f" ({', '.join(map(str, collapsed))})" if collapsed else "") + ".")
        states = entry.get("iat_state")
        if states:
            text += (" Inside IAT (chapter 06, section 7), per run: "
                     + "; ".join(f"{k}: {v.split(':')[0]}" for k, v in states.items()) + ".")
        sw = entry["sweep"]
        vals = {float(g): v for g, v in sw["val_psnr_by_gamma"].items()}
        collapsed_g = sw.get("collapsed_at_step_by_gamma", {})
        text += (f" The validation sweep (seed {sw['seed']}): "
                 + ", ".join(f"γ = {g:g} → {v:.2f}" + (" (collapsed)" if f"{g:g}" in collapsed_g else "")
                             for g, v in vals.items())
                 + f" dB, L1 {sw['l1_val_psnr']:.2f} dB; the rule's γ gives {sw['rule']['val_psnr_by_seed'][0]:.2f} dB")
        rng, spread = sw.get("range"), sw["rule"]["spread"]
        if sw.get("lands") is None and rng is not None and spread is not None:
            text += (f"; the sweep spans {rng:.2f} dB, less than the rule's seeds' spread "
                     f"({spread:.2f} dB), so landing near the best says little")
        elif sw.get("lands") is not None:
            gap = sw["gap_to_best"]
            text += (f", {abs(gap):.2f} dB {'short of' if gap >= 0 else 'above'} the best swept γ's, "
                     f"{'within' if sw['lands'] else 'outside'} the seeds' spread ({spread:.2f} dB)")
        if all(v < sw["l1_val_psnr"] for v in vals.values()):
            lowest = sw["best_gamma"] == min(vals)
            text += (f". Every swept γ ({min(vals):g} to {max(vals):g}) is below L1 on validation; the "
                     f"best, {sw['best_gamma']:g}" + (", the lowest tried," if lowest else "")
                     + f" pulls {sw['pull_of_best_gamma']:.2f} at the start (the rule's ρ* = {r['rho']:g}): "
                     f"at this seed no pull tried lets {entry['model']} match L1"
                     + ("; no γ tried shows what would" if lowest else ""))
        text += "."
    return text


def chapter07() -> str:
    r = load("figures/07_results.json")
    n = len(r["seeds"])
    text = (f"- **Low for high** (chapter 07, `figures/07_results.json`; {made_on(r)}; chapter 06's "
            f"final networks, not retrained, scored by an ImageNet classifier, {r['classifier']}, "
            f"on {r['crops_per_image']} paired crops per test image; {n} seeds; top-1 agreement of "
            "the restoration's class with the clean image's, top-5 overlap, KL(p(clean) ‖ p(restored))):")
    for t, name in (("lowlight", "low light"), ("derain", "rain")):
        for split, s in r["tasks"][t].items():
            inp = s["input"]
            images = f"{s['images']} images, " if "images" in s else ""
            text += (f" {name}, {SPLITS[split]} ({images}the classifier's mean top-1 probability on the "
                     f"clean crops {inp['clean_confidence']:.2f}): top-1 agreement / KL input "
                     f"{inp['top1_agreement']:.3f} / {inp['kl']:.2f}, "
                     + ", ".join(f"{label} {statistics.mean(v['top1_agreement']):.3f} / {statistics.mean(v['kl']):.2f}"
                                 for label, v in s["per_seed"].items()))
            if "against_input" in s:
                minimum = r["minimum_effect"]
                higher = {"top1_agreement": True, "top5_overlap": True, "kl": False}
                recovering = [label for label, by in s["against_input"].items()
                              if all(verdict(by[m], "", higher[m], minimum[m]).startswith("better") for m in by)]
                text += ("; against the input, in every seed and on every measure: "
                         + (", ".join(recovering) if recovering else "no restoration") + " recovers more than "
                         "the input keeps")
            for label, d in s["paired_difference"].items():
                text += (f"; {label} against L1: top-1 "
                         f"{verdict(d['top1_agreement'], '', True, r['minimum_effect']['top1_agreement'])}, KL "
                         f"{verdict(d['kl'], '', False, r['minimum_effect']['kl'])}")
            text += "."
    text += " A general 1,000-class recogniser on crops of a few photographs, not CUB's bird classes"
    r06 = load("figures/06_results.json")
    collapsed = sorted({t for t, e in r06["tasks"].items() if e["collapsed"] or e["diverged"]})
    text += (f"; where chapter 06's DiffLoss runs collapsed ({', '.join(collapsed)}), these scores measure "
             "the collapse." if collapsed else ".")
    return text


def demo_time() -> str:
    """How long each chapter took under the ``small`` profile, as ``make demo`` (tools/run_chapters.py)
    last measured it, against the profile's budget."""
    if not (ROOT / "figures" / "demo_times.json").exists():
        return ""
    times = load("figures/demo_times.json").get("small", {})
    if not times:
        return ""
    names = sorted(times)
    total = sum(t["seconds"] for t in times.values())
    where = sorted({f"{t['machine'].split(',')[0]}, {t['date']}" for t in times.values()})
    budget = PROFILES["small"].budget_minutes
    chapters = sorted(nb.stem for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [c[:2] for c in chapters if c not in times]
    return (f"- **Time of `make demo`** (`small`, each chapter from a fresh kernel, `figures/demo_times.json`; "
            f"{'; '.join(where)}): " + ", ".join(f"{k[:2]} {times[k]['seconds']:.0f} s" for k in names)
            + f"; {total / 60:.0f} min in all" + (f" without chapter(s) {', '.join(missing)}" if missing else "")
            + f", {'within' if total <= budget * 60 else 'over'} the profile's budget of {budget} min.")


def render() -> str:
    """The results section's body (between the markers), from the files."""
    parts = [*chapter04(), chapter05(), chapter06(), chapter07(), *filter(None, [demo_time()]),
             "- These are CPU experiments with small networks and FFDNet as the judge, a denoiser trained on "
             "other photos (chapter 02): they show the protocol and "
             "what happens at this scale, not the paper's result at the paper's scale. The `gpu` "
             "profile runs the same chapters with the full MSBDN, the ADM-256 prior and Dense-Haze."]
    return "\n".join(wrap(p) for p in parts) + "\n"


def wrap(paragraph: str, width: int = 100) -> str:
    """One paragraph or bullet as lines of at most ``width`` characters (bullets indented)."""
    if not paragraph:
        return paragraph
    indent = "  " if paragraph.startswith("- ") else ""
    return textwrap.fill(paragraph, width=width, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def with_section(readme: str, body: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"readme_results: README.md has no '{BEGIN}' ... '{END}' markers; put "
                         "them around the results section")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    new = with_section(readme, render())
    if "--check" in argv:
        if new != readme:
            sys.stdout.writelines(difflib.unified_diff(readme.splitlines(True), new.splitlines(True),
                                                       "README.md", "README.md (from the results files)"))
            print("README.md's results disagree with the results files: run python tools/readme_results.py")
            return 1
        print("README.md's results section agrees with the results files")
        return 0
    readme_path.write_text(new)
    print("README.md: results section written from the results files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
