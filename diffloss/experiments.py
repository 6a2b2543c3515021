"""Paired-seed comparisons of losses: the protocol the chapters use, in one place.

For every seed, each loss trains from the same initial weights on the same batches (the
trainer's batches are a pure function of the seed and the step), so the difference between two
runs of one seed is the loss alone. Results are reported seed by seed, as paired differences
(:func:`~diffloss.diagnostics.paired_differences`), and put into words by :func:`verdict`, which
only speaks of an effect that has the same sign in every seed, exceeds the seeds' spread and is
at least a stated minimum size (:data:`MIN_EFFECT`).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .diagnostics import paired_differences
from .parallel import timed_train, train_in_processes
from .tasks import TASKS
from .training import History, TrainConfig, evaluate

__all__ = ["MIN_EFFECT", "aligned_curves", "diverged", "input_scores", "paired_scores", "portable_config",
           "results_name", "run_folder_names",
           "made_on", "machine_description", "run_paired", "verdict"]

#: The smallest paired difference worth a word: 0.1 dB of PSNR, 0.005 of SSIM.
MIN_EFFECT: dict[str, float] = {"psnr": 0.1, "ssim": 0.005}


def results_name(stem: str, profile: str, judge: str) -> str:
    """The name of a results file of ``results/`` made with ``judge``: ``<stem>_<profile>`` for
    the tiny prior (the files made before FFDNet judged), else ``<stem>_<profile>_<judge>``
    (``results_name("04_knobs", "small", "ffdnet")`` is ``04_knobs_small_ffdnet``)."""
    return f"{stem}_{profile}" if judge == "tiny" else f"{stem}_{profile}_{judge}"


def run_paired(base: TrainConfig, losses: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
               out_dir: str | Path, prior: Any = None,
               log: Callable[[str], None] | None = print,
               parallel: int = 1) -> dict[tuple[str, int], History]:
    """Train ``base`` once per (loss, seed): ``losses`` maps a label to the config changes of
    that loss (e.g. ``{"loss": "l1+diffloss", "gamma": 3.0}``). Runs go to
    ``out_dir/<loss>_seed<k>`` (started afresh; :func:`run_folder_names` when two labels train
    the same loss). Returns the histories by ``(label, seed)``.

    A run that stops on a non-finite value is a result, not the end of the comparison: its
    history has ``meta["diverged"]`` (the step and the message), its last good scores as its
    rows, and the other runs go on (:func:`diverged` lists them; :func:`paired_scores` and
    :func:`verdict` count them).

    ``parallel`` > 1 trains up to that many runs at once (at most one per CPU core), each in a
    process of its own (:func:`~diffloss.parallel.train_in_processes`) with as many torch
    threads as this one. On a CPU, a narrow network on small crops keeps one core busy, not
    two, so two processes of one thread finish two runs in the time of one; every run gives
    the same bits as in the sequential loop (same code, seeds and thread count). Results are
    logged and returned in the sequential order.
    """
    jobs = []
    folders = run_folder_names(base, losses)
    for seed in seeds:
        for label, changes in losses.items():
            out = str(Path(out_dir) / f"{folders[label]}_seed{seed}")
            jobs.append((label, seed, base.replace(seed=seed, out=out, **changes)))
    configs = [cfg for _, _, cfg in jobs]
    if parallel > 1 and len(jobs) > 1:
        results = train_in_processes(configs, prior=prior, processes=parallel)
    else:  # one after the other, here, each as it ends
        results = (timed_train(cfg, prior) for cfg in configs)
    histories: dict[tuple[str, int], History] = {}
    for (label, seed, _), (h, seconds) in zip(jobs, results):
        histories[label, seed] = h
        if log is not None:
            log(f"seed {seed}, {label:>13}: {seconds:4.0f} s | {_scores_line(h)}")
    return histories


def run_folder_names(base: TrainConfig, losses: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The folder name of each label's runs (``<name>_seed<k>``): the loss's own name
    (``l1+diffloss``) where no other label trains that loss, else the label made a file name
    (``"γ = 3"`` → ``γ_=_3``), so that two labels never share a folder; a ``ValueError`` when
    two labels would still share one (e.g. ``"a b"`` and ``"a_b"``)."""
    loss = {label: str(changes.get("loss", base.loss)) for label, changes in losses.items()}
    shared = {name for name in loss.values() if list(loss.values()).count(name) > 1}
    names = {label: (_file_name(label) if loss[label] in shared else loss[label]) for label in losses}
    seen: dict[str, str] = {}
    for label, name in names.items():
        if name.lower() in seen:
            raise ValueError(f"the labels {seen[name.lower()]!r} and {label!r} would train in the same "
                             f"run folder ({name}_seed<k>): give them labels that differ in more "
                             "than spaces, case or punctuation")
        seen[name.lower()] = label
    return names


def _file_name(label: str) -> str:
    name = re.sub(r"[^\w.+=-]+", "_", label.strip()).strip("_")
    if not name:
        raise ValueError(f"the label {label!r} gives no usable folder name: use letters or digits")
    return name


def _scores_line(h: History) -> str:
    """A run's final scores in one line (or why there are none)."""
    if h.meta.get("diverged"):
        d = h.meta["diverged"]
        last = h.final
        return (f"DIVERGED at step {d['step']}" + (
            f"; last good scores (step {last['step']}): " + _psnrs(last) if last else ""))
    f = h.final
    if f is None:
        return "no evaluation (eval_every=0)"
    return "final PSNR " + _psnrs(f)


def _psnrs(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{s} {row[f'{s}_psnr']:.2f} dB" for s in ("test", "ood", "val")
                     if row.get(f"{s}_psnr") is not None)


def diverged(histories: Mapping[tuple[str, int], History]) -> list[tuple[str, int, int]]:
    """``(label, seed, step)`` of every run that stopped on a non-finite value."""
    return [(label, seed, int(h.meta["diverged"]["step"])) for (label, seed), h in histories.items()
            if h.meta.get("diverged")]


def aligned_curves(runs: Sequence[History], column: str) -> tuple[list[int], Any]:
    """The evaluated ``column`` (e.g. ``"test_psnr"``) of several runs on one step axis: the
    steps of the run evaluated longest, and a runs × steps tensor, NaN where a run has no value
    (it diverged before that step). Average with ``nanmean``: a diverged run leaves the mean
    from its step on instead of breaking it."""
    import torch

    curves = [h.column(column) for h in runs]
    steps = max((c[0] for c in curves), key=len, default=[])
    values = torch.full((len(curves), len(steps)), float("nan"))
    for i, (s, v) in enumerate(curves):
        where = {step: k for k, step in enumerate(steps)}
        for step, value in zip(s, v):
            values[i, where[step]] = value
    return list(steps), values


def paired_scores(histories: Mapping[tuple[str, int], History], losses: Sequence[str],
                  seeds: Sequence[int], split: str, which: str = "final") -> dict[str, Any]:
    """Per loss the seeds' PSNR/SSIM on ``split`` (``which``: the ``"final"`` step's, or the
    ``"best"`` checkpoint's, chosen on validation), and the paired differences of every loss
    against the first one."""
    def value(h: History, metric: str) -> float:
        row = h.final if which == "final" else (h.best or h.final)
        if row is None:
            raise ValueError(f"the run in {h.folder} has no evaluated step (eval_every=0?): paired "
                             "scores need an evaluation; train with eval_every > 0")
        return float(row[f"{split}_{metric}"])

    out: dict[str, Any] = {label: {m: [value(histories[label, s], m) for s in seeds]
                                   for m in ("psnr", "ssim")} for label in losses}
    first = losses[0]
    out["paired_difference"] = {
        label: {m: paired_differences(out[first][m], out[label][m]) for m in ("psnr", "ssim")}
        for label in losses[1:]}
    bad = {label: [s for s in seeds if (getattr(histories[label, s], "meta", None) or {}).get("diverged")]
           for label in losses}
    if any(bad.values()):  # a diverged run counts with its last good scores, and is named
        out["diverged"] = {label: v for label, v in bad.items() if v}
        for label in losses[1:]:
            n = sum(1 for s in seeds if s in bad[first] or s in bad[label])
            for m in ("psnr", "ssim"):
                out["paired_difference"][label][m]["diverged_seeds"] = n
    return out


def input_scores(tests: Mapping[str, Any], task: str) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of the degraded inputs themselves on each test split, by ``task``'s metric
    convention: the baseline every restoration is compared with."""
    y = TASKS[task].y_channel
    return {split: {"psnr": r.psnr, "ssim": r.ssim} for split, r in
            ((s, evaluate(nn.Identity(), ds, device="cpu", y_channel=y)) for s, ds in tests.items())}


def verdict(d: Mapping[str, Any], unit: str = "", higher_is_better: bool = True,
            minimum: float = 0.0, words: tuple[str, str] = ("better", "worse")) -> str:
    """A paired difference (:func:`~diffloss.diagnostics.paired_differences`) in words:

    - "better/worse in every seed" when every seed has the same sign *and* clears ``minimum``,
      and the mean exceeds the seeds' standard deviation;
    - "same sign in every seed, below the minimum effect" when the seeds agree but the mean is
      smaller than ``minimum``, or "same sign in every seed, but k of n seeds below the minimum
      effect" when some seeds do not clear it;
    - otherwise "no consistent difference".

    These words describe the seeds; they are not a significance test (with three seeds, a sign
    test can never go below p = 2·(1/2)³ = 0.25, two-sided). ``words``: what to call the two
    directions (e.g. ``("lower", "higher")`` for a score where lower is not simply better); a
    seed whose difference is exactly 0 shows as "0" among the signs. Where seeds had a diverged run
    (``d["diverged_seeds"]``, set by :func:`paired_scores`), the count is appended.
    """
    per_seed = list(d["per_seed"])
    signs = [v > 0 for v in per_seed]
    same_sign = len(signs) > 1 and (all(v > 0 for v in per_seed) or all(v < 0 for v in per_seed))
    spread = f" ± {d['sd']:.3f}" if d.get("sd") is not None else ""
    numbers = f"{d['mean']:+.3f}{unit}{spread}"
    signs_text = "".join("+" if v > 0 else "−" if v < 0 else "0" for v in per_seed)
    n_div = int(d.get("diverged_seeds") or 0)
    tail = f"; {n_div} of {len(per_seed)} seeds had a run that diverged" if n_div else ""
    if same_sign and d["sd"] is not None and abs(d["mean"]) > d["sd"]:
        small = sum(1 for v in per_seed if abs(v) < minimum)
        if abs(d["mean"]) < minimum:
            return (f"same sign in every seed, below the minimum effect of {minimum:.3g}{unit} "
                    f"({numbers}){tail}")
        if small:
            return (f"same sign in every seed, but {small} of {len(per_seed)} seeds below the minimum "
                    f"effect of {minimum:.3g}{unit} ({numbers}){tail}")
        word = words[0] if (d["mean"] > 0) == higher_is_better else words[1]
        return f"{word} in every seed ({numbers}){tail}"
    return f"no consistent difference ({numbers}, signs {signs_text}){tail}"


def machine_description() -> str:
    """The CPU's model name, core count, torch version and threads, e.g. ``"AMD EPYC, 2 cores,
    torch 2.14.1, 1 thread(s)"``: what a results file records of the machine that made it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def made_on() -> dict[str, str]:
    """Where and when a chapter's results were made: ``{"machine": ..., "device": ..., "date": ...}``
    (UTC date), so that the README written from a results file can say so without typing it."""
    from datetime import datetime, timezone

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"machine": machine_description(), "device": device,
            "date": datetime.now(timezone.utc).date().isoformat()}


def portable_config(config: TrainConfig, root: str | Path | None = None) -> dict[str, Any]:
    """``config.to_dict()`` with its run folder relative to the repository (``root``), so that a
    committed results file names no path of the machine that made it."""
    from .viz import repo_root

    d = config.to_dict()
    if d.get("out"):
        out, base = Path(d["out"]), Path(root) if root is not None else repo_root()
        if out.is_absolute() and out.resolve().is_relative_to(base.resolve()):
            d["out"] = out.resolve().relative_to(base.resolve()).as_posix()
    return d
