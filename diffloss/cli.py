"""The ``diffloss`` command line (also ``python -m diffloss``).

    diffloss train --config run.yaml --loss l1+diffloss --iters 500   train a restorer
    diffloss evaluate runs/x --data dense_haze --root data             score a checkpoint
    diffloss convert-adm 256x256_diffusion_uncond.pt checkpoints/adm    ADM → diffusers
    diffloss train-tiny-prior --out my_prior                            the tiny CPU prior

``diffloss <command> --help`` lists each command's options. Every error a user can cause (a
bad value, a missing or corrupt file, an interrupted run) ends in one line ``error: ...`` on
stderr and a non-zero exit status, never a traceback: 1 for errors, 2 for usage errors,
130/143 for Ctrl-C/SIGTERM (after ``last.pt`` was saved).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

#: Short flags besides the ``--field-name`` ones of ``diffloss train``.
ALIASES: dict[str, str] = {"iters": "iterations", "accum": "grad_accum"}


class CommandError(Exception):
    """An error to print as one line (exit status 1)."""


# ------------------------------------------------------------------------------------ train


def _field_parser(hint: Any) -> tuple[Callable[[str], Any], int | None]:
    """A string → value converter for a config field's type hint, and its ``nargs``."""
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], len(typing.get_args(hint))
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(base) is tuple:
        return typing.get_args(base)[0], len(typing.get_args(base))

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")  # argparse names it in errors
    return convert, None


def _checked_loss(text: str) -> str:
    """A ``--loss`` value, checked when the command line is parsed (usage error otherwise)."""
    from .training.terms import parse_loss

    try:
        fidelity, extra = parse_loss(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return "+".join((fidelity, *extra))


_checked_loss.__name__ = "loss"


def _checked_model(text: str) -> str:
    """A ``--model`` value: a built-in name or ``package.module:ClassName`` (imported at train time)."""
    from .training.build import check_model_name

    try:
        return check_model_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


_checked_model.__name__ = "model"


def _gamma_value(text: str) -> float | str | None:
    """``--gamma``: a number, ``auto`` (the gradient-balance rule) or ``none`` (the term's default)."""
    if text.strip().lower() in ("auto", "none", "null"):
        return None if text.strip().lower() != "auto" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, auto or none, got {text!r}") from None


def _compile_value(text: str) -> bool | str:
    """``--compile-model``: true/false, or a ``torch.compile`` backend (inductor, aot_eager, eager)."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return low in ("1", "true", "yes", "on")
    return low


def _json_object(text: str) -> dict[str, Any] | None:
    """A ``--model-kwargs`` value: a JSON object such as ``'{"width": 32}'`` (``none``: no arguments)."""
    if text.strip().lower() in ("none", "null", ""):
        return None
    def non_finite(name: str) -> Any:
        raise argparse.ArgumentTypeError(f"{text!r} holds {name}, not a finite number: give every "
                                         "number of the JSON object a finite value")

    try:
        value = json.loads(text, parse_constant=non_finite)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 32}}', got {text!r} "
                                         f"({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), got {text!r}")
    return value


_json_object.__name__ = "JSON object"


def _add_train(sub: Any) -> None:
    from .training import TrainConfig

    p = sub.add_parser(
        "train", help="train a restoration network (MSBDN, IAT) with L1/MSE and optionally DiffLoss",
        description="Train a restoration network (MSBDN for haze and rain, IAT for low light; "
                    "--task picks) with L1/MSE and optionally DiffLoss "
                    "(or a perceptual / adversarial term, for comparison). Flags override the "
                    "values of --config (JSON or YAML). Ctrl-C saves last.pt before stopping.")
    p.add_argument("--config", type=Path, help="JSON/YAML file with TrainConfig fields")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (without --config, OUT/config.json gives the values "
                        "the flags do not)")
    p.add_argument("--overwrite", action="store_true", help="start over even if OUT holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    from .training.build import MODELS
    from .training.config import FIELD_CHOICES, FIELD_EXAMPLES, field_docs

    hints = typing.get_type_hints(TrainConfig)
    aliases = {v: k for k, v in ALIASES.items()}
    docs = field_docs()
    for f in dataclasses.fields(TrainConfig):
        convert, nargs = _field_parser(hints[f.name])
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name in aliases:
            flags.append(f"--{aliases[f.name]}")
        text = docs[f.name] + ("" if "default" in docs[f.name].lower() else f" (default {f.default!r})")
        text = text.replace("%", "%%")
        if hints[f.name] is bool:  # --cpu / --no-cpu
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=text)
            continue
        if f.name in FIELD_CHOICES:  # one of a few names: listed in --help, others refused
            p.add_argument(*flags, dest=f.name, type=str.lower, choices=FIELD_CHOICES[f.name],
                           default=None, help=text)
            continue
        if f.name in FIELD_EXAMPLES:
            convert = _checked_loss
            text = text.rstrip(".") + f"; one of {{{','.join(FIELD_EXAMPLES[f.name])}}} or more terms joined by +"
        elif f.name == "model":
            convert = _checked_model
            text = text.rstrip(".") + f"; one of {{{','.join(MODELS)}}} or package.module:ClassName"
        elif f.name in ("model_kwargs", "auto_gamma"):
            convert = _json_object
        elif f.name == "gamma":
            convert = _gamma_value
        elif f.name == "compile_model":
            convert = _compile_value
        metavar = f.name.upper() if nargs is None else ("A", "B")
        p.add_argument(*flags, dest=f.name, type=convert, nargs=nargs, default=None, metavar=metavar,
                       help=text)
    p.set_defaults(run=_run_train, parser=p)


def config_from_args(args: argparse.Namespace) -> Any:
    """``--config`` values, overridden by every flag given."""
    from .training import TrainConfig

    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    from .training.config import CONFIG_FILE

    saved = Path(args.out) / CONFIG_FILE if getattr(args, "out", None) else None
    if not args.config and getattr(args, "resume", False) and saved is not None and saved.is_file():
        base = TrainConfig.load(saved).to_dict()  # --resume --out X: the run's own config, then the flags
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if value is not None:
            base[f.name] = value
    return TrainConfig.from_dict(base)


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .training import train

    try:
        config = config_from_args(args)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from exc
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    synthetic_only = [f"--{n.replace('_', '-')}" for n in ("max_size", "train_items")
                      if getattr(args, n, None) is not None]
    if config.data != "synthetic" and synthetic_only:
        parser.error(f"{' and '.join(synthetic_only)} shape the synthetic data only; --data {config.data} "
                     "trains on crops (--crop) of its own images at their size: leave "
                     f"{'them' if len(synthetic_only) > 1 else 'it'} out (--eval-max-size downscales "
                     "the evaluation)")
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    history = train(config, progress=not args.no_progress, resume=args.resume,
                    overwrite=args.overwrite)
    final = history.final
    if history.folder is not None and int(os.environ.get("RANK", "0")) == 0:
        stopped = history.meta.get("stopped")
        head = f"stopped: {stopped}" if stopped else "done"
        if final is not None and final.get("test_psnr") is not None:
            print(f"{head}: step {final['step']}, test PSNR {final['test_psnr']:.2f} dB, "
                  f"SSIM {final['test_ssim']:.4f}; files in {history.folder}")
        else:  # no evaluation (--eval-every 0): the step and where the files are
            step = history.rows[-1]["step"] if history.rows else 0
            print(f"{head}: step {step}, not evaluated (--eval-every 0); files in {history.folder}")
    return 0


# --------------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="score a trained checkpoint (PSNR/SSIM) on a dataset's test split(s)",
        description="Score a run folder's best.pt (or last.pt, or a .pt file) on the test "
                    "split(s) of the run's own data, or of --data/--root. PSNR/SSIM in [0, 1], "
                    "mean of per-image values, by the task's convention (RGB; the Y channel for "
                    "deraining); the degraded input is scored as the baseline.")
    p.add_argument("checkpoint", type=Path, help="a run folder or a .pt checkpoint")
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="checkpoint of a run folder (best falls back to last without best.pt)")
    p.add_argument("--data", help="dataset layout (default: the run's own), e.g. dense_haze")
    p.add_argument("--root", help="data folder for --data (e.g. data)")
    p.add_argument("--eval-max-size", type=int, help="downscale images to this longer side")
    p.add_argument("--tile", type=int, help="tiled evaluation with this tile size")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap (pixels)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is there")
    p.add_argument("--json", type=Path, help="also write the per-image results to this file")
    p.add_argument("--lpips", choices=("alex", "vgg", "squeeze"), nargs="?", const="alex",
                   help="also report LPIPS with this pretrained backbone (default alex; needs "
                        "torchvision's ImageNet weights, downloaded once; an error offline)")
    p.add_argument("--semantics", action="store_true",
                   help="also report semantic recovery: an ImageNet classifier's (EfficientNet-Lite0) "
                        "top-1 agreement, top-5 overlap and KL between restored and clean crops, "
                        "against the same for the degraded input (needs diffloss[semantics]; offline)")
    p.add_argument("--crops", type=int, default=None,
                   help=f"crops per image for --semantics (default 16, at most {MAX_CROPS})")
    p.set_defaults(run=_run_evaluate, parser=p)


#: The most crops per image ``evaluate --semantics`` takes (each is classified, restored and clean).
MAX_CROPS = 256


def _check_evaluate_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every ``evaluate`` option that can be checked before any work (usage errors, exit 2), and the
    ``--json`` path, which must not be a file of the user's other than an earlier report."""
    if args.eval_max_size is not None and args.eval_max_size < 1:
        parser.error(f"--eval-max-size must be at least 1 (pixels of the longer side), got {args.eval_max_size}")
    if args.tile is not None:
        if args.tile < 1 or args.overlap < 0 or args.tile <= 2 * args.overlap:
            parser.error(f"--tile must be at least 1 and --overlap at least 0 with tile > 2·overlap, got "
                         f"--tile {args.tile} --overlap {args.overlap}")
    elif args.overlap != 32:
        parser.error("--overlap is the overlap of --tile's tiles: give --tile too")
    if args.crops is not None and not args.semantics:
        parser.error("--crops is the number of crops of --semantics: give --semantics too")
    if args.semantics:
        args.crops = 16 if args.crops is None else args.crops
        if not 1 <= args.crops <= MAX_CROPS:
            parser.error(f"--crops must be from 1 to {MAX_CROPS}, got {args.crops}")
    if args.json is not None:
        _check_report_path(args.json)


def _check_report_path(path: Path) -> None:
    """``evaluate --json PATH`` may create a file or replace an earlier report of this command;
    anything else there (a checkpoint, a run's config.json, a folder) is refused before evaluating."""
    if path.is_dir():
        raise CommandError(f"--json {path} is a folder: give the path of a file, e.g. {path / 'report.json'}")
    if not path.parent.is_dir():
        raise CommandError(f"--json {path}: the folder {path.parent} does not exist")
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if not (isinstance(old, dict) and {"checkpoint", "splits", "metric_space"} <= old.keys()):
            raise CommandError(f"--json {path} exists and is not a report of `diffloss evaluate` (a "
                               "checkpoint, a run's config or another file of yours): it is left as it "
                               "is; give a new path")


def _run_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import math

    import torch
    from torch import nn

    from .tasks import TASKS
    from .training import TrainConfig, build_datasets, evaluate, load_checkpoint
    from .training.checkpoint import checkpoint_path, model_from_state

    path = args.checkpoint
    if not path.exists():
        raise CommandError(f"no such run folder or checkpoint: {path}")
    _check_evaluate_args(args, parser)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    lpips = None
    if args.lpips:  # before any work: offline this stops at once, with what to do
        from .lpips import LPIPSUnavailable, load_lpips

        try:
            lpips = load_lpips(args.lpips, device=device)
        except LPIPSUnavailable as exc:
            raise CommandError(str(exc)) from exc
    classifier = None
    if args.semantics:  # before any work, like --lpips
        from .classifier import ClassifierUnavailable, imagenet_classifier

        try:
            classifier = imagenet_classifier(device)
        except ClassifierUnavailable as exc:
            raise CommandError(str(exc)) from exc
    ckpt = checkpoint_path(path, args.which)
    state = load_checkpoint(ckpt)  # read and verified once: the weights and the run's config
    model = model_from_state(state, source=ckpt).to(device)
    config = TrainConfig.from_dict(state["config"])
    changes: dict[str, Any] = {}
    if args.data:
        changes.update(data=args.data, root=args.root)
    if args.eval_max_size is not None:
        changes["eval_max_size"] = args.eval_max_size
    try:
        config = config.replace(**changes, val=0 if args.data else config.val)
    except ValueError as exc:
        parser.error(str(exc))
    task = TASKS[str(config.task)]
    report: dict[str, Any] = {"checkpoint": str(ckpt), "task": task.name, "data": config.data,
                              "metric_space": task.metric_space, "splits": {}}
    print(f"task {task.name}: PSNR/SSIM on {task.metric_space}"
          + (" (the Y channel of YCbCr, as deraining papers report)" if task.y_channel else ""))
    for split, ds in build_datasets(config).tests.items():
        res = evaluate(model, ds, tile=args.tile, overlap=args.overlap, device=device,
                       y_channel=task.y_channel, lpips=lpips)
        degraded = evaluate(nn.Identity(), ds, device="cpu", y_channel=task.y_channel,
                            lpips=lpips)
        report["splits"][split] = {"restored": res.to_dict(), "input": degraded.to_dict()}

        def scores(r: Any) -> str:
            text = f"PSNR {r.psnr:.2f} dB, SSIM {r.ssim:.4f}"
            return text + (f", LPIPS ({args.lpips}) {r.lpips:.4f}" if r.lpips is not None else "")

        print(f"{split}: {len(res.per_image)} images | restored {scores(res)} | "
              f"input {scores(degraded)}")
        if classifier is not None:
            from .semantics import semantic_scores

            clean: dict = {}  # the clean crops' predictions, shared by the two scores
            sem = {"restored": semantic_scores(model, ds, classifier, args.crops, device=device, clean_cache=clean),
                   "input": semantic_scores(nn.Identity(), ds, classifier, args.crops, device=device,
                                            clean_cache=clean)}
            for who, sc in sem.items():
                report["splits"][split][who]["semantics"] = sc.to_dict()
            print(f"{split}: semantics over {sem['restored'].views} crops (the classifier's mean top-1 "
                  f"probability on the clean crops: {sem['input'].clean_confidence:.2f}) | " + " | ".join(
                f"{who} top-1 agreement {sc.top1_agreement:.3f}, top-5 overlap {sc.top5_overlap:.3f}, "
                f"KL {sc.kl:.4f}" for who, sc in sem.items()))
        if not (math.isfinite(res.psnr) and math.isfinite(res.ssim)):
            raise CommandError(f"{ckpt} gives non-finite scores on {split} (PSNR {res.psnr}): the "
                               "network's output in eval() mode is not finite; this checkpoint "
                               "cannot be scored")
    if args.json:
        from .atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------------ convert-adm


def _add_convert_adm(sub: Any) -> None:
    from .adm import _DTYPES

    p = sub.add_parser(
        "convert-adm", help="convert a guided-diffusion (ADM) .pt into a diffusers folder",
        description="Convert an OpenAI guided-diffusion checkpoint (e.g. "
                    "256x256_diffusion_uncond.pt) into a diffusers UNet2DModel folder that "
                    "DiffusionPrior.from_pretrained loads. The conversion is exact.")
    p.add_argument("checkpoint", type=Path, help="guided-diffusion state dict (.pt)")
    p.add_argument("out_dir", type=Path, help="diffusers folder to write")
    p.add_argument("--flags", type=Path, default=None,
                   help="JSON file of guided-diffusion flags (default: the "
                        "256x256_diffusion_uncond.pt flags)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                   help="dtype of the saved weights")
    p.set_defaults(run=_run_convert_adm, parser=p)


def _run_convert_adm(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import math

    from .adm import (
        _DTYPES,
        ADM_256_UNCOND,
        _safetensors_shapes,
        convert_adm_checkpoint,
        read_adm_flags,
    )

    flags = ADM_256_UNCOND if args.flags is None else read_adm_flags(args.flags)
    out = convert_adm_checkpoint(args.checkpoint, args.out_dir, flags, dtype=_DTYPES[args.dtype])
    n = sum(math.prod(s) for s in _safetensors_shapes(out))
    print(f"wrote {out} ({n:,} parameters)")
    return 0


# ------------------------------------------------------------------------- train-tiny-prior


def _add_train_tiny_prior(sub: Any) -> None:
    p = sub.add_parser(
        "train-tiny-prior", help="train the tiny offline diffusion prior (CPU is fine)",
        description="Train the tiny unconditional diffusion prior that ships with the package "
                    "on crops of the restorers' training region of the bundled training photos "
                    "(no test pixel); writes a diffusers folder. The defaults make the shipped prior.")
    p.add_argument("--out", required=True, help="output folder (a diffusers folder)")
    p.add_argument("--steps", type=int, default=1200,
                   help="Adam steps (default 1200, as the shipped prior)")
    p.add_argument("--batch-size", type=int, default=16, help="crops per step (default 16)")
    p.add_argument("--size", type=int, default=32,
                   help="side of the square training crops, the prior's sample_size (default 32)")
    p.add_argument("--width", type=int, default=24,
                   help="channels of the U-Net's first block; deeper blocks use multiples "
                        "(default 24)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0,
                   help="initialisation, crops and noise draws (default 0)")
    p.add_argument("--n-eval", type=int, default=96,
                   help="crops per split for the held-out/training loss (default 96)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train_tiny_prior, parser=p)


def _run_train_tiny_prior(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import math

    from .priors import train_tiny

    for name in ("steps", "batch_size", "size", "width", "n_eval"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.size % 4 or args.size < 8:
        parser.error(f"--size must be a multiple of 4 and at least 8 (the tiny U-Net halves the crops "
                     f"twice), got {args.size}")
    info = train_tiny(args.out, steps=args.steps, batch_size=args.batch_size, size=args.size,
                      width=args.width, lr=args.lr, seed=args.seed, n_eval=args.n_eval,
                      progress=not args.no_progress,
                      command="diffloss " + shlex.join(args.argv))
    print(json.dumps({k: info[k] for k in ("parameters", "wall_time_s", "eval_loss_train_crops",
                                           "eval_loss_heldout_crops", "eval_loss_at_init_heldout")},
                     indent=2))
    return 0


# ------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The ``diffloss`` parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="diffloss", description="DiffLoss: a frozen diffusion model as a training loss for "
                                     "image restoration. Commands:",
        epilog=f"Errors are one line; --debug (anywhere on the line) or {DEBUG_VARIABLE}=1 shows "
               "the traceback instead.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_evaluate, _add_convert_adm, _add_train_tiny_prior):
        add(sub)
    return parser


#: Set to 1 (or pass ``--debug``) to see the traceback of an error instead of its one line.
DEBUG_VARIABLE = "DIFFLOSS_DEBUG"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message (for an error re-raised from a DataLoader worker,
    the original error's last line), then its notes (e.g. which ``last.pt`` was saved)."""
    text = str(exc).strip() or type(exc).__name__
    if "Original Traceback" in text:  # torch's DataLoader wraps a worker's error in its traceback
        text = [line for line in text.splitlines() if line.strip()][-1].strip()
    elif not (isinstance(exc, (CommandError, OSError, ValueError, FloatingPointError))
              or type(exc).__module__.startswith("diffloss")):  # our messages say what happened
        text = f"{type(exc).__name__}: {text}"
    parts = [" ".join(text.split()), *(" ".join(str(n).split()) for n in getattr(exc, "__notes__", []))]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (0 ok, 1 error, 2 usage, 130/143 signal).
    Every error is one line on stderr; ``--debug`` or ``DIFFLOSS_DEBUG=1`` shows the traceback."""
    from .training import TrainingInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_VARIABLE, "").strip().lower() in ("1", "true", "yes")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.run(args, getattr(args, "parser", parser))  # usage errors: the subcommand's
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error a user can cause: one line, not a traceback
        if debug:
            raise
        print(f"error: {one_line(exc)} (for the traceback: --debug or {DEBUG_VARIABLE}=1)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
