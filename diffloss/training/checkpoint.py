"""Checkpoints: atomic, verified, checksummed; RNG state; loading a trained network back; and a
run's :class:`Checkpointer` (``last.pt``, ``best.pt``, and the rescue rule on a failure).

A checkpoint is a ``torch.save``'d dict with ``format``/``version`` markers, the ``step``, the
``model`` weights and the ``config``; ``last.pt`` adds everything a bit-identical resume needs
(optimizer, scheduler, EMA, loss-term state, RNG states, history). Every checkpoint carries
``sha256``, a digest of all its tensors and values (:func:`state_digest`): a flipped byte inside
a weight, which ``torch.load`` reads without complaint, is caught on load. Writes go through
:func:`~diffloss.atomic.atomic_write`, and the temporary file is read back and its
digest compared before it replaces the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from ..pt_files import describe_unreadable
from .distributed import barrier
from .guards import NonFiniteLossError

__all__ = ["CheckpointError", "Checkpointer", "LAST", "BEST", "load_checkpoint", "save_checkpoint",
           "state_digest", "nonfinite_count", "rng_state", "set_rng_state", "seed_all",
           "checkpoint_path", "model_from_state", "load_model"]

LAST = "last.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = "diffloss-train-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or a write that failed its verification."""


def state_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes and every other
    value's ``repr``, walked in a fixed order (dict keys sorted; the ``sha256`` entry skipped)."""
    h = hashlib.sha256()

    def walk(obj: Any, key: str) -> None:
        h.update(key.encode())
        if isinstance(obj, Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=repr):
                if k != "sha256":
                    walk(obj[k], f"{key}/{k!r}")
        elif isinstance(obj, (list, tuple)):
            h.update(f"[{len(obj)}]".encode())
            for i, v in enumerate(obj):
                walk(v, f"{key}/{i}")
        else:
            h.update(repr(obj).encode())

    walk(state, "")
    return h.hexdigest()


def nonfinite_count(weights: dict[str, Tensor]) -> int:
    """Number of NaN/inf values in the floating-point tensors of a state dict."""
    return sum(int((~torch.isfinite(v)).sum()) for v in weights.values()
               if isinstance(v, Tensor) and v.is_floating_point())


def _serialize(state: dict[str, Any], f: io.BufferedWriter) -> None:
    """How a checkpoint is encoded (``torch.save``); one function so tests can inject faults."""
    torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read a trainer checkpoint (``weights_only`` unpickling, on the CPU).

    Raises :class:`CheckpointError` naming the file when it is truncated, corrupt (its content
    does not match its ``sha256``) or not a checkpoint of this trainer, and
    ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    advice = (f"Delete it to start over, or restore a copy; {BEST} in the same folder (if any) "
              "holds weights only.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: say what the file is instead
        what = describe_unreadable(path, exc)
        if "pickled Python object" in what or "not a PyTorch file" in what:
            advice = "A training checkpoint is a run's last.pt, written by `diffloss train`."
        raise CheckpointError(f"{path} {what}. {advice}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a diffloss training checkpoint "
                              f"(no format={CHECKPOINT_FORMAT!r} entry)")
    missing = [k for k in ("step", "model", "config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if verify and "sha256" in state and state_digest(state) != state["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match the "
                              f"SHA-256 stored in it (bytes changed on disk). {advice}")
    return state


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, verify: bool = True) -> None:
    """Write ``state`` atomically with its ``sha256``: temp file in the same folder, read back
    and its digest compared, then ``os.replace``. If anything fails, the previous file at
    ``path`` is untouched and the temporary file is removed; a failed verification raises
    :class:`CheckpointError`. Weights with NaN/inf values are refused: a checkpoint is only
    ever written for a good state."""
    path = Path(path)
    bad = nonfinite_count(state["model"])
    if bad:
        raise CheckpointError(f"refusing to write {path}: the model has {bad} non-finite "
                              f"weight(s); the previous {path.name} is kept")
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    state["sha256"] = state_digest(state)

    def check(tmp: Path) -> None:
        if not verify:
            return
        try:
            back = load_checkpoint(tmp)
        except (CheckpointError, FileNotFoundError) as exc:
            raise CheckpointError(f"writing {path} failed: the new file did not read back "
                                  f"({exc}); the previous {path.name} is kept") from exc
        if back.get("sha256") != state["sha256"]:
            raise CheckpointError(f"writing {path} failed: the new file does not match what was "
                                  f"saved; the previous {path.name} is kept")

    try:
        atomic_write(path, lambda f: _serialize(state, f), check)
    except OSError as exc:  # disk full, permission denied, ...
        raise CheckpointError(f"writing {path} failed ({exc.strerror or exc}); the previous "
                              f"{path.name} is kept. Free disk space or choose another out "
                              "folder, then resume.") from exc
    except RuntimeError as exc:  # torch's zip writer on a full disk: "[enforce fail at inline_container…"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"writing {path} failed (torch could not write the file: {first}; the "
                              f"disk is probably full); the previous {path.name} is kept. Free disk "
                              "space or choose another out folder, then resume.") from exc


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (torch CPU/CUDA, numpy, Python), as checkpointable values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def checkpoint_path(path: str | os.PathLike, which: str = "best") -> Path:
    """The checkpoint file of a run folder (``which``: ``"best"`` or ``"last"``; ``"best"``
    falls back to ``"last"`` when the run wrote no ``best.pt``), or ``path`` itself for a file."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    path = Path(path)
    if not path.is_dir():
        return path
    ckpt = path / (BEST if which == "best" else LAST)
    return path / LAST if which == "best" and not ckpt.exists() else ckpt


def model_from_state(state: dict[str, Any], ema: bool | None = None,
                     source: str | os.PathLike = "the checkpoint") -> nn.Module:
    """The network a loaded checkpoint describes, with its weights (EMA ones when ``ema``,
    default: when the run has them), in eval mode on the CPU."""
    from .build import build_model
    from .config import TrainConfig

    config = TrainConfig.from_dict(state["config"])
    name = config.model
    model = build_model(name, config.model_kwargs)  # an own network: its import path and kwargs
    use_ema = state.get("ema") is not None if ema is None else ema
    if use_ema and state.get("ema") is None:
        raise ValueError(f"{source} has no EMA weights (the run had ema=None)")
    weights = state["ema"]["shadow"] if use_ema else state["model"]
    load_weights(model, weights, f"{source}: its weights", f"its config names (model={name!r})", "The config was edited, or the weights come from another run; "
                 "use the checkpoint its run wrote.")
    return model.eval()


def load_weights(model: nn.Module, weights: dict[str, Any], what: str, name: str,
                 advice: str = "Its code or model_kwargs changed since the run was saved: restore "
                               "them, or start a new run in another folder.") -> None:
    """``model.load_state_dict(weights)``, or one :class:`CheckpointError` line saying how they
    differ (``load_state_dict`` would print hundreds of lines)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        first = (missing or unexpected or shapes)[0]
        raise CheckpointError(
            f"{what} do not fit the network {name} as it is now: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(shapes)} mis-shaped tensors (first: {first}). "
            f"{advice}")
    model.load_state_dict(weights)


def load_model(path: str | os.PathLike, which: str = "best", ema: bool | None = None,
               device: torch.device | str = "cpu") -> nn.Module:
    """The trained network from a run folder (``which``: ``"best"`` or ``"last"``) or a ``.pt``.

    ``ema``: use the EMA weights (default: when the run has them). ``"best"`` falls back to
    ``"last"`` when the run wrote no ``best.pt`` (no validation split). Returns it in eval mode.
    """
    path = checkpoint_path(path, which)
    return model_from_state(load_checkpoint(path), ema, path).to(device).eval()


class Checkpointer:
    """A run's checkpoints, and the rule that no finished step is lost.

    - ``save_last(step)``: ``last.pt``, everything a bit-identical resume needs, every
      ``save_every`` steps (:meth:`due`), at the end and on a stop; refused for non-finite weights.
    - ``save_best(step)``: ``best.pt``, the weights of the best validation step
      (:class:`~diffloss.training.validation.RunEvaluation` chooses it).
    - ``rescue(exc, step)``: a failure after a finished step saves that step's ``last.pt`` first
      (one process only) and says so in a note on ``exc``; never weights part-way into a step.

    It keeps the run's progress marks: ``done``, the last finished step (its update applied and,
    when values are read back late, checked); ``saved``, the step in ``last.pt``; ``dirty``, the
    weights are part-way into step ``done + 1``; ``last_good``, the last good ``last.pt``.
    Only the main process writes; every process waits for it.
    """

    def __init__(self, out: Path, config: Any, history: Any, *, model: nn.Module, optimizer: Any,
                 scheduler: Any, ema: Any, terms: dict[str, nn.Module], start: int, iterations: int,
                 last_good: Path | None, main_proc: bool, world: int, accelerator: Any,
                 clock: Callable[[], float]) -> None:
        self.out, self.config, self.history = out, config, history
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.terms = terms  # the loss terms with state of their own (the discriminator)
        self.main_proc, self.world, self.accelerator, self.clock = main_proc, world, accelerator, clock
        self.done = self.saved = start
        self.dirty = False
        self.last_good: Path | None = last_good
        self.save_every = config.save_every or config.eval_every or iterations

    def begun(self) -> None:
        """The weights have moved into a step that is not finished yet."""
        self.dirty = True

    def finished(self, step: int) -> None:
        """Step ``step`` is complete: its update applied and its values checked."""
        self.done, self.dirty = step, False

    def due(self, step: int, end: int) -> bool:
        """Whether ``last.pt`` is written after ``step`` (every ``save_every`` steps, and at ``end``)."""
        return step == end or step % self.save_every == 0

    def save_last(self, step: int) -> None:
        """``last.pt`` of ``step`` (main process), then the history; every process waits."""
        if self.main_proc:
            raw, config, history = self.model, self.config, self.history
            bad = nonfinite_count(raw.state_dict())
            if bad:
                raise NonFiniteLossError(
                    f"the weights became non-finite ({bad} values) by step {step}; last.pt was not "
                    f"overwritten. The last good checkpoint is {self.last_good}. Try a lower lr.",
                    step, {}, self.last_good)
            save_checkpoint({
                "kind": "last", "step": step, "model": raw.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "rng": rng_state(),
                "terms": {name: term.state_dict() for name, term in self.terms.items()},
                "data": {"seed": config.seed, "micro_step": step * config.grad_accum,
                         "world_size": self.world, "batch": config.batch},
                "config": config.to_dict(), "elapsed": self.clock(), "history": history.rows,
                "evals": history.evals, "best": history.best, "meta": history.meta,
            }, self.out / LAST)
            history.write_json()
        self.last_good, self.saved = self.out / LAST, step
        barrier(self.accelerator)

    def save_best(self, step: int) -> None:
        """``best.pt``: the weights (and EMA) of ``step`` with ``history.best`` (main process)."""
        save_checkpoint({"kind": "best", "step": step, "model": self.model.state_dict(),
                         "ema": self.ema.state_dict() if self.ema is not None else None,
                         "config": self.config.to_dict(), "best": self.history.best}, self.out / BEST)

    def rescue(self, exc: BaseException, step: int) -> None:
        """A failure at ``step`` after a finished step: save its ``last.pt`` first, say so in a note."""
        if not self.main_proc or self.world > 1 or self.done <= self.saved:
            return
        last = self.out / LAST
        if self.dirty:  # the weights are part-way into a step: a last.pt of them would lie about its step
            exc.add_note(f"the failure came part-way through step {step}, so no new last.pt was "
                         f"written; the last good checkpoint is {self.last_good or 'none'}.")
            return
        try:
            self.save_last(self.done)
        except Exception as err:  # noqa: BLE001 - the original error is the one to raise
            exc.add_note(f"{last} could not be saved at step {self.done} ({err}); the last good "
                         f"checkpoint is {self.last_good or 'none'}.")
            return
        exc.add_note(f"{last} of step {self.done}, the last finished step, was saved first: fix the "
                     "cause, then resume with resume=True (--resume).")
        if isinstance(exc, NonFiniteLossError):
            exc.checkpoint = last
            if exc.args and isinstance(exc.args[0], str):  # the note names the checkpoint now
                exc.args = (exc.args[0].replace(" No checkpoint had been written yet.", ""), *exc.args[1:])
