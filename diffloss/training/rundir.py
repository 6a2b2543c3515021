"""The run folder: which runs may start, resume or overwrite, so that no work is lost.

A folder *holds a run* when any of the files the trainer writes exists (``last.pt``,
``best.pt``, ``history.csv``/``.json``, or a ``config.json`` that is a training config). Then a
plain start is refused, ``resume`` needs ``last.pt``, and only ``overwrite`` replaces the old
files: :func:`open_run_folder` only checks, and the trainer calls :func:`clear_old_run` once
the new run is built and has passed one batch, so a bad input leaves the old run intact. A
folder whose ``config.json`` is something else (a diffusers model folder) is never a run
folder, with or without ``overwrite``. ``resume`` on a folder that does not exist is an error,
not a fresh start (a misspelt path must not train from step 0 and exit 0).

The lock (:class:`RunLock`), held on the run folder for the run's whole life: two trainings
writing to one folder would interleave their ``history.csv`` rows and overwrite each other's
checkpoints, and both would exit 0. :class:`RunLock` makes the second one stop at once with a
message naming the first (its process id, host and start time).

The lock is an advisory ``flock`` on ``OUT/.diffloss.lock``, a file that also records who
holds it. The operating system releases a ``flock`` when its process dies, however it dies, so
a crash never leaves the folder locked forever. The file itself stays behind after a crash
(or ``kill -9``); the next run finds it unlocked, reports the stale lock (who held it, since
when) as a warning and in ``history.meta["stale_lock"]``, and takes it over. A normal exit
(including an error or Ctrl-C) removes the file.

Only the main process of a multi-process (``accelerate launch``) run takes the lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..atomic import remove_stale_temporaries
from .checkpoint import BEST, LAST, load_checkpoint
from .config import CONFIG_FILE, RESUMABLE_CHANGES, TrainConfig
from .history import HISTORY_CSV, HISTORY_JSON

__all__ = ["LOCK_FILE", "RUN_FILES", "NotARunFolder", "RunFolderLocked", "RunLock",
           "check_resume_config", "clear_old_run", "lock_run_folder", "open_run_folder"]

LOCK_FILE = ".diffloss.lock"
logger = logging.getLogger("diffloss.train")

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is not taken (see RunLock.acquire)
    fcntl = None  # type: ignore[assignment]


class RunFolderLocked(FileExistsError):
    """Another process is training in this run folder."""


def _holder(info: dict[str, Any]) -> str:
    when = info.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "an unknown time"
    return (f"process {info.get('pid', '?')} on {info.get('host', '?')} "
            f"(`{info.get('command', '?')}`, since {since})")


class RunLock:
    """``with RunLock(out):`` holds the exclusive lock on the run folder ``out``.

    Raises :class:`RunFolderLocked` (a ``FileExistsError``) when another live process holds it.
    ``stale`` is the record of a previous holder that died without releasing (else ``None``).
    ``remove_if_empty``: remove the folder on release when it is empty (it was made for a run
    that failed before writing anything).
    """

    def __init__(self, folder: str | os.PathLike, remove_if_empty: bool = False) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.remove_if_empty = remove_if_empty  # a folder made for a run that wrote nothing
        self.stale: dict[str, Any] | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                info = self._read(fd)
                os.close(fd)
                raise RunFolderLocked(
                    f"{self.path.parent} is in use by another training run: {_holder(info)}. "
                    "Wait for it to finish, or choose another out folder.") from None
            # The holder we waited on may have removed the file between our open and flock:
            # then this lock is on a deleted file; open the path again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._read(fd)
        if previous:
            self.stale = previous
            logger.warning("%s held a stale lock of %s, which ended without releasing it "
                           "(crashed or killed); taking it over", self.path.parent,
                           _holder(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv) or "python"}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            info = json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {"pid": "?", "host": "?"}
        return info if isinstance(info, dict) else {}

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # unlink before unlocking: a waiter then re-opens a new file
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if self.remove_if_empty:
            with contextlib.suppress(OSError):  # not empty: the run wrote its files
                self.path.parent.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


RUN_FILES: tuple[str, ...] = (LAST, BEST, CONFIG_FILE, HISTORY_CSV, HISTORY_JSON)


class NotARunFolder(FileExistsError):
    """``out`` holds files the trainer did not write (e.g. a diffusers model's ``config.json``)."""


def _is_training_config(path: Path) -> bool:
    """Whether ``path`` (a ``config.json``) is one the trainer wrote: a JSON object of
    :class:`TrainConfig` fields, not e.g. a diffusers model config (``_class_name``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or "_class_name" in data or "loss" not in data or "model" not in data:
        return False
    try:
        TrainConfig.from_dict(data)
    except (ValueError, TypeError, KeyError):
        return False
    return True


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
    from, or ``None`` for a fresh run. Nothing is deleted here: with ``overwrite`` the old
    run's files stay until :func:`clear_old_run`, called once the new run is ready.

    Raises ``FileNotFoundError`` (``resume`` without ``last.pt``), ``FileExistsError`` (a
    folder that holds a run, without ``resume`` or ``overwrite``) or :class:`NotARunFolder`
    (a ``config.json`` the trainer did not write), each saying what to do.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out={str(out)!r} is a file, not a folder: choose another out")
    if (out / CONFIG_FILE).exists() and not _is_training_config(out / CONFIG_FILE):
        raise NotARunFolder(f"{out} is not a training run folder: its {CONFIG_FILE} is not a training "
                            "config (a model folder, such as a diffusers prior?), and a run would "
                            "replace it. Nothing was changed. Choose another out folder.")
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
        remove_stale_temporaries(out, RUN_FILES)
    return None


def clear_old_run(out: Path) -> list[str]:
    """Delete the files of the run that ``out`` held (``overwrite``), so that no stale file of it
    survives the new run; call it only once the new run is built. Returns the names deleted."""
    removed = []
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (Path(out) / name).unlink()
            removed.append(name)
    return removed


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
