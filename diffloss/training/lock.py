"""An exclusive lock on a run folder, held for the run's whole life.

Two trainings writing to one folder would interleave their ``history.csv`` rows and overwrite
each other's checkpoints, and both would exit 0. :class:`RunLock` makes the second one stop at
once with a message naming the first (its process id, host and start time).

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

__all__ = ["LOCK_FILE", "RunFolderLocked", "RunLock"]

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
