"""The run folder: which runs may start, resume or overwrite, so that no work is lost.

A folder *holds a run* when any of its files exists (``last.pt``, ``best.pt``, ``config.json``,
``history.csv``/``.json``). Then a plain start is refused, ``resume`` needs ``last.pt``, and
only ``overwrite`` deletes the old files. ``resume`` on a folder that does not exist is an
error, not a fresh start (a misspelt path must not train from step 0 and exit 0).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .atomic import remove_stale_temporaries
from .checkpoint import BEST, LAST, load_checkpoint
from .config import CONFIG_FILE, RESUMABLE_CHANGES, TrainConfig
from .history import HISTORY_CSV, HISTORY_JSON
from .lock import RunLock

__all__ = ["RUN_FILES", "check_resume_config", "lock_run_folder", "open_run_folder"]

RUN_FILES: tuple[str, ...] = (LAST, BEST, CONFIG_FILE, HISTORY_CSV, HISTORY_JSON)


def lock_run_folder(out: Path, resume: bool,
                    main_process: bool = True) -> RunLock | contextlib.nullcontext:
    """Create ``out`` (unless resuming) and return its exclusive :class:`RunLock`, to hold with
    ``with``; a ``nullcontext`` (yielding ``None``) where there is nothing to lock: another
    process of the run, a folder to resume that does not exist or a file at ``out``
    (:func:`open_run_folder` reports those)."""
    out = Path(out)
    if not main_process or (out.exists() and not out.is_dir()) or (resume and not out.exists()):
        return contextlib.nullcontext()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return RunLock(out, remove_if_empty=created)


def open_run_folder(out: Path, resume: bool, overwrite: bool,
                    main_process: bool = True) -> dict[str, Any] | None:
    """Check ``out`` against ``resume``/``overwrite``; return the ``last.pt`` state to resume
    from, or ``None`` for a fresh run (whose old files, with ``overwrite``, are deleted here).

    Raises ``FileNotFoundError`` (``resume`` without ``last.pt``) or ``FileExistsError`` (a
    folder that holds a run, without ``resume`` or ``overwrite``), each saying what to do.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out={str(out)!r} is a file, not a folder: choose another out")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run in "
                         "out, overwrite deletes it")
    if resume:
        if (out / LAST).exists():
            state = load_checkpoint(out / LAST)
            if main_process:
                remove_stale_temporaries(out, RUN_FILES)
            return state
        if not present:
            raise FileNotFoundError(f"cannot resume: {out} holds no run (no {LAST}). Check the "
                                    "path, or drop --resume to start a new run there.")
        raise FileNotFoundError(
            f"cannot resume: {out} has no {LAST} (it holds {', '.join(present)}: the run stopped "
            f"before its first save, or {LAST} was deleted). Nothing was changed. To start over "
            "in this folder pass overwrite=True (--overwrite), which deletes those files; or "
            "start the new run in another folder to keep them.")
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds a run ({', '.join(present)}); pass resume=True "
                              "(--resume) to continue it or overwrite=True (--overwrite) to start over")
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        for name in present:  # overwrite: no stale file of the earlier run may survive
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        remove_stale_temporaries(out, RUN_FILES)
    return None


def check_resume_config(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A clear error unless ``config`` may resume the run saved with ``saved``."""

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    current = config.to_dict()
    try:  # fields added since the run was saved take their defaults (e.g. task)
        saved = type(config).from_dict(saved).to_dict()
    except (ValueError, TypeError):
        pass
    diffs = [f"{k}: {saved.get(k)!r} → {current[k]!r}" for k in current
             if k not in RESUMABLE_CHANGES and norm(saved.get(k)) != norm(current[k])]
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the config differs from the saved one in "
            f"{'; '.join(diffs)}. Only {', '.join(sorted(RESUMABLE_CHANGES))} may change "
            "(start a new run in another folder to change the rest)."
        )
